"""The common registry: declared parameters, validation, hints, generated text."""

import pytest

from manytask.registry import REQUIRED, Param, Registry, RegistryError, check_declared, short


def make_registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("scaled", params={
        "scale": Param("float", 1.0, "a factor", low=0.0, low_open=True),
        "mode": Param("choice", "sum", choices=("sum", "mean")),
        "sizes": Param("ints", (4,), low=1),
        "tag": Param("str", REQUIRED),
    })
    def scaled(x: float, *, scale: float = 1.0, mode: str = "sum", sizes=(4,), tag: str) -> tuple:
        return (x * scale, mode, tuple(sizes), tag)

    return reg


def test_build_passes_only_given_parameters_validated() -> None:
    reg = make_registry()
    assert reg.build("scaled", 2.0, scale=3, tag="t") == (6.0, "sum", (4,), "t")
    assert reg.validate("scaled", {"tag": "t"}) == {
        "scale": 1.0, "mode": "sum", "sizes": (4,), "tag": "t"}


@pytest.mark.parametrize(("params", "needle"), [
    ({"scale": 0, "tag": "t"}, "scale must be > 0"),
    ({"scale": float("nan"), "tag": "t"}, "must be finite"),
    ({"scale": True, "tag": "t"}, "must be a number"),
    ({"mode": "sun", "tag": "t"}, "did you mean 'sum'"),
    ({"sizes": [1, 0], "tag": "t"}, "sizes[1] must be >= 1"),
    ({"sizes": "12", "tag": "t"}, "must be a list"),
    ({"scal": 2, "tag": "t"}, "did you mean 'scale'"),
    ({}, "parameter 'tag' is required"),
])
def test_bad_parameters_are_one_line_errors(params: dict, needle: str) -> None:
    with pytest.raises(RegistryError) as err:
        make_registry().validate("scaled", params)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
    assert message.startswith("widget 'scaled'")


def test_unknown_name_hints_and_lists() -> None:
    with pytest.raises(RegistryError, match=r"unknown widget 'scald' \(did you mean 'scaled'\?\);"
                                            r" available: scaled"):
        make_registry().entry("scald")


def test_huge_values_are_cut_in_messages() -> None:
    with pytest.raises(RegistryError) as err:
        make_registry().validate("scaled", {"tag": "x" * 10_000, "scale": "y" * 10_000})
    assert len(str(err.value)) < 300
    assert "characters)" in str(err.value)
    assert short("a" * 10).startswith("'a")


def test_declared_defaults_agree_with_signature() -> None:
    reg = make_registry()
    assert check_declared(reg.entry("scaled")) == []
    reg.add("bad", lambda *, k=2: k, {"k": Param("int", 3)})
    assert check_declared(reg.entry("bad")) == ["bad: k declared default 3, signature default 2"]


def test_twice_registered_and_aliases() -> None:
    reg = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("scaled", object())
    reg.add("other", print, aliases=("alt",))
    assert reg.get("alt") is print
    assert "alt" in reg and reg.names() == ["other", "scaled"]


def test_generated_help_and_table() -> None:
    reg = make_registry()
    assert reg.choices() == "scaled"
    text = reg.describe("scaled")
    assert "scale (float in (0, inf), default 1.0)  a factor" in text
    table = reg.markdown_table()
    assert table.splitlines()[2].startswith("| `scaled` |")


def test_lazy_loader_runs_once_before_lookup() -> None:
    calls = []
    reg: Registry = Registry("thing", loader=lambda: (calls.append(1), reg.add("x", 1))[0])
    assert calls == []
    assert reg.names() == ["x"] and reg.names() == ["x"]
    assert calls == [1]


def test_remove_forgets_an_entry_and_its_aliases() -> None:
    reg: Registry = Registry("widget")
    reg.add("a", len, aliases=("alias",))
    reg.remove("alias")
    assert "a" not in reg and "alias" not in reg and reg.names() == []
    with pytest.raises(RegistryError, match="unknown widget 'a'"):
        reg.remove("a")
