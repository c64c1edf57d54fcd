"""An option that several commands have is declared once: same default, range and error."""

from __future__ import annotations

import pytest
import typer

from resnext_compiler.cli import app
from resnext_compiler.commands.options import DECLARED


def _commands_with(flag: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if flag in param.opts:
                found[name] = param
    return found


@pytest.mark.parametrize("declared", DECLARED, ids=lambda d: d.flag)
def test_same_option_has_the_same_default_and_range_in_every_command(declared, run_cli):
    commands = _commands_with(declared.flag)
    assert len(commands) >= 2, commands
    over = str(int(declared.maximum) + 1)
    for name, param in commands.items():
        assert param.default == declared.default, name
        result = run_cli(name, declared.flag, over)
        assert result.code == 2, (name, result)
        assert (
            f"must be >= {declared.minimum} and <= {declared.maximum}, got {over}" in result.err
        ), (name, result.err)
