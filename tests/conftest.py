import os

import pytest
import torch

# Two pytest workers share two cores: one thread each avoids oversubscription.
torch.set_num_threads(1)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
