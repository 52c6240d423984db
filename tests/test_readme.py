"""The README's and docs' Python examples run as written and print what the page shows; the
README's two commands match the Makefile and CI."""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A python block, optionally followed by a text block: the output the page promises.
EXAMPLE = re.compile(r"```python\n(.*?)```\s*?\n(?:\s*\n)?(?:```text\n(.*?)```)?", re.S)
# Peers a recipe is written for (docs/recipes.md): its block is skipped where they are missing.
OPTIONAL = ("pytorch_lightning", "transformers")


def examples() -> list[tuple[str, int, str, str | None]]:
    found = []
    for page in PAGES:
        for i, match in enumerate(EXAMPLE.finditer(page.read_text())):
            found.append((page.relative_to(ROOT).as_posix(), i, match[1], match[2]))
    return found


EXAMPLES = examples()


def test_readme_has_examples_with_outputs() -> None:
    readme = [e for e in EXAMPLES if e[0] == "README.md"]
    assert len(readme) >= 3
    assert sum(e[3] is not None for e in readme) >= 2


@pytest.mark.parametrize(("page", "index", "code", "expected"), EXAMPLES,
                         ids=[f"{e[0]}:{e[1]}" for e in EXAMPLES])
def test_example_runs_and_prints_what_the_page_shows(
    page: str, index: int, code: str, expected: str | None, tmp_path: Path, monkeypatch
) -> None:
    for name in re.findall(r"^(?:import|from) (\w+)", code, flags=re.M):
        if name in OPTIONAL and importlib.util.find_spec(name) is None:
            pytest.skip(f"{page} block {index} needs {name}, which is not installed")
    monkeypatch.chdir(tmp_path)  # examples may write run directories
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{page} python block {index}", "exec"), {"__name__": "example"})
    if expected is not None:
        checker = doctest.OutputChecker()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        assert checker.check_output(expected, out.getvalue(), flags), (
            f"{page} block {index} printed:\n{out.getvalue()}\nthe page shows:\n{expected}"
        )


def test_two_commands_and_ci_agree() -> None:
    assert "make train" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_readme_is_a_short_guide_whose_links_exist() -> None:
    assert len(README.splitlines()) <= 420
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+?)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_no_placeholder_left() -> None:
    for page in PAGES:
        text = page.read_text()
        for marker in ("TODO", "TBD", "XXX"):
            assert marker not in text, (page.name, marker)
        # a line that is one upper-case word (e.g. BENCHMARKS) is a section still to be written
        lone = re.findall(r"^[A-Z][A-Z_]{3,}$", text, flags=re.M)
        assert not lone, (page.name, lone)
