from __future__ import annotations

import pyarrow as pa
import pytest
from declared_tables import make_table


@pytest.fixture
def shop() -> pa.Table:
    return make_table()
