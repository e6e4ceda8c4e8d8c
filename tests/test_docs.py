"""The documentation cannot rot: every command in docs/guide.md runs, and ``--help`` tells
the defaults.

- ``--help`` of every command shows each option's default ("(default: ...)") wherever the option
  has one, and the top-level help speaks to users (each command and an example).
- docs/guide.md: each fenced ``bash`` block runs in one shared temporary folder, in order, with
  this checkout's ``sam-unet`` first on PATH; each ``python`` block runs there with ``exec``. A
  failing block fails the test with the block's text and its output.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from sam_unet import cli

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guide.md"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _shows_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth showing (not None, not a flag's own value)."""
    if not action.option_strings or action.default in (None, [], argparse.SUPPRESS):
        return False
    return not (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))


def test_every_option_with_a_default_shows_it():
    missing = []
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not _shows_default(action):
                continue
            text = formatter._expand_help(action)
            if "(default: " not in text:
                missing.append(f"sam-unet {name} {action.option_strings[-1]}: {text!r}")
            assert "(default: None)" not in text, (name, action.option_strings)
    assert not missing, "\n".join(missing)


def test_help_shows_defaults_in_the_rendered_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS passes over the training set (default: 15)" in text
    assert "examples:" in text and "sam-unet train --data" in text
    assert "--no-jitter no box jitter in training --augment" in text  # flags: no "(default"


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        if name in _subparsers():
            assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), name
    assert "examples:" in text and "sam-unet demo" in text
    assert "sam-unet COMMAND --help" in text
