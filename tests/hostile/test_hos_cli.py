"""Class 9: the command line explains itself (issue 16).

Every option of every command has a help text; the registries' names are listed as choices;
``manytask --version`` answers; the options this round added (``--allow-outside-links``,
``--overwrite``) are offered, with their help, by every command that reads run or model
folders or writes over a user's file.
"""

from __future__ import annotations

import argparse

import pytest
from hos_helpers import run_cli

from manytask import __version__
from manytask.cli.main import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_a_help_text(command: str) -> None:
    missing = [a.dest for a in COMMANDS[command]._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("command", ["train", "bench", "predict", "evaluate", "report", "merge"])
def test_links_out_of_folders_can_be_allowed_and_the_help_says_so(command: str) -> None:
    text = COMMANDS[command].format_help()
    assert "--allow-outside-links" in text
    option = next(a for a in COMMANDS[command]._actions
                  if "--allow-outside-links" in a.option_strings)
    assert "outside" in (option.help or "")


@pytest.mark.parametrize("command", ["predict", "evaluate", "report", "merge"])
def test_replacing_a_users_file_needs_overwrite_and_the_help_says_so(command: str) -> None:
    option = next(a for a in COMMANDS[command]._actions if "--overwrite" in a.option_strings)
    assert "replace" in (option.help or "")


@pytest.mark.parametrize("command,registry", [("train", "balancer"), ("train", "arch"),
                                               ("train", "data"), ("bench", "arch")])
def test_registered_names_are_listed(command: str, registry: str) -> None:
    from manytask.cli.flags import registry_choices

    names = registry_choices()[registry].split(", ")
    text = " ".join(COMMANDS[command].format_help().split())
    assert all(name in text for name in names)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"manytask {__version__}"


def test_an_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(["predict", "--allow-outside-link-typo"], capsys)
    assert info.value.code == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "--help" in lines[0]
