"""Every command beyond validate has --help and documents its exit codes."""

from __future__ import annotations

import pytest

from provable.cli.main import main

COMMANDS = ("scaffold", "audit", "coverage", "graph", "diff", "equations")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "Exit 0" in " ".join(capsys.readouterr().out.split())


def test_listed_in_pv_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
