"""Other libraries' warnings while a command runs: none on the screen of a refused command,
each once after a finished one, and the libraries' own logging as it was afterwards."""

from __future__ import annotations

import logging
import warnings

import pytest
from click.testing import CliRunner
from helpers import write_recipe

from nnpatch.cli import main
from nnpatch.errors import RecipeError


def _noisy(refuse: bool):
    def check(path, overrides=()):
        for _ in range(2):  # said twice, shown once
            logging.getLogger("transformers.configuration_utils").warning("a config  warning")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        if refuse:
            raise RecipeError(path, "patch.layers", "refused on purpose")
        raise SystemExit(0)  # the command's own output is not what is tested here

    return check


@pytest.mark.parametrize("refuse", [True, False])
def test_warnings_are_dropped_when_refused_and_shown_once_when_finished(
    tmp_path, monkeypatch, refuse
):
    """Refused: the Error line alone. Finished: one `warning: transformers: ...` line per
    distinct message, after the command; the transformers logger's handlers are restored."""
    import transformers.utils.logging  # noqa: F401 - its handler exists before the command

    from nnpatch.run import prepare

    before = list(logging.getLogger("transformers").handlers)
    monkeypatch.setattr(prepare, "check", _noisy(refuse))
    recipe = write_recipe(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if refuse:
        assert result.exit_code == 2
        assert lines == [f"Error: {recipe}: patch.layers: refused on purpose"]
    else:
        assert result.exit_code == 0
        assert lines.count("warning: transformers: a config warning") == 1
        assert any(line.endswith("UserWarning: a library's warning") for line in lines), lines
    assert logging.getLogger("transformers").handlers == before


def test_help_and_version_hold_nothing(monkeypatch):
    """--help and --version never start holding (which imports transformers' logging)."""
    import nnpatch.held_back

    def refuse():
        raise AssertionError("held_back started for --help or --version")

    monkeypatch.setattr(nnpatch.held_back, "held_back", refuse)
    for args in (["--version"], ["--help"], ["run", "--help"]):
        assert CliRunner().invoke(main, args).exit_code == 0, args
