"""docs/methods.md is generated from the registries and must be up to date."""

from __future__ import annotations

from pathlib import Path

from manytask.balancers.registry import BALANCERS
from manytask.cli.doc_tables import COMMAND, main, render
from manytask.merging.methods import METHODS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def test_docs_methods_page_is_up_to_date() -> None:
    assert PAGE.read_text() == render(), f"docs/methods.md is out of date: run `{COMMAND}`"


def test_every_registered_name_has_a_row() -> None:
    text = render()
    for name in [*BALANCERS.names(), *METHODS.names()]:
        assert f"| `{name}` |" in text


def test_check_mode_fails_on_a_stale_page(tmp_path: Path, capsys) -> None:
    page = tmp_path / "methods.md"
    assert main(["--out", str(page), "--check"]) == 1  # missing
    assert main(["--out", str(page)]) == 0
    assert main(["--out", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("`cagrad`", "`cagrad2`"))
    assert main(["--out", str(page), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
