"""Every command that reads run folders, on every mode's finished folder and on damaged copies
of them: it works, or says in one `Error:` line which folder (or which file of it) is wrong,
with exit 2 and no traceback.

The modes come from the registry and the files from the folders themselves, so a new mode
or a new file of a run is covered without editing this file."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_recipe

from nnpatch.cli import main
from nnpatch.engine.modes import MODES, mode_for
from nnpatch.recipe import Recipe
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

# values for [patch] keys a mode requires that have no default
REQUIRED = {"sets": [[0], [0, 1]]}
DAMAGES = ("removed", "truncated")


def _patch(mode: str) -> dict:
    section = next(s for s in Recipe.model_json_schema()["$defs"].values() if _tag(s) == mode)
    table = {"mode": mode}
    for key in ("layers", "positions"):
        if key in section["properties"]:
            table[key] = [0] if key == "layers" else [0, 1]
    missing = set(section.get("required", [])) - {"mode"} - set(REQUIRED)
    assert not missing, f"add a value for {missing} of mode {mode!r} to REQUIRED"
    table |= {k: v for k, v in REQUIRED.items() if k in section["properties"]}
    return table


def _tag(section: dict) -> str | None:
    return section.get("properties", {}).get("mode", {}).get("const")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One finished run folder per mode (3 pairs of tiny-random-codi, two cells; tables
    only, as `report = "none"` leaves them)."""
    tmp = tmp_path_factory.mktemp("modes")
    made = {}
    for mode in MODES:
        recipe = write_recipe(tmp, f"m-{mode}", patch=_patch(mode))
        made[mode] = execute(prepare(recipe, [])).path
    return made


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error(result) -> str:
    """The one Error line of a refused command (exit 2, nothing else, no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.fixture
def no_png(monkeypatch):
    """Charts drawn as specs and pages, not rasterised: what these tests check is how the
    folder is read, and a PNG costs a third of a second."""
    import vl_convert

    monkeypatch.setattr(vl_convert, "vegalite_to_png", lambda *args, **kwargs: b"")


@pytest.mark.parametrize("mode", list(MODES))
def test_report_and_resume_read_every_mode(folders, mode, tmp_path):
    """`report` draws every mode's folder (PNGs too); `run --resume` says it is finished."""
    copy = tmp_path / folders[mode].name
    shutil.copytree(folders[mode], copy)  # the fixture's folders stay as their run left them
    report = _invoke("report", str(copy))
    assert report.exit_code == 0, report.output
    assert (copy / "report.html").is_file()
    line = _one_error(_invoke("run", "--resume", str(folders[mode])))
    assert line == f"Error: {folders[mode]}: this run already finished; there is nothing to resume"


def test_compare_every_pair_of_modes(folders, tmp_path, no_png):
    """`compare` differences any two runs of modes that patch; a run of another kind is named
    in one line."""
    for (mode_a, a), (mode_b, b) in itertools.product(folders.items(), repeat=2):
        result = _invoke("compare", str(a), str(b), "--out", str(tmp_path / f"{mode_a}-{mode_b}"))
        wrong = [(m, f) for m, f in ((mode_a, a), (mode_b, b)) if mode_for(m).compare_refusal]
        if not wrong:  # compared, or the two runs' cells are said to have nothing in common
            if result.exit_code != 0:
                line = _one_error(result)
                assert line == f"Error: {a} and {b} share no (cell, metric) to compare", line
            continue
        line = _one_error(result)
        mode, folder = wrong[0]
        assert line.startswith(f"Error: {folder}: a {mode} run cannot be compared ("), line


def _damage(file: Path, how: str) -> None:
    if how == "removed":
        file.unlink()
    else:
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("mode", list(MODES))
def test_damaged_folders_are_named(folders, mode, tmp_path, no_png):
    """Each file of a finished folder removed, then truncated, in turn: `report`, `compare`
    and `run --resume` each work, or name the damaged file in one Error line."""
    source = folders[mode]
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert files, source
    partner = folders["single"]
    for relative, how in itertools.product(files, DAMAGES):
        copy = tmp_path / f"{how}-{'-'.join(relative.parts)}" / source.name
        shutil.copytree(source, copy)
        _damage(copy / relative, how)
        commands = {
            "report": ["report", str(copy)],
            "resume": ["run", "--resume", str(copy)],
        }
        if not mode_for(mode).compare_refusal:
            commands["compare"] = ["compare", str(copy), str(partner), "--out", str(copy) + "-c"]
        if (copy / "activations.safetensors").exists() or relative.suffix == ".safetensors":
            _load_activations_names(copy, relative)
        for name, args in commands.items():
            result = _invoke(*args)
            if result.exit_code == 0:
                continue
            line = _one_error(result)
            expected = relative.name if name != "resume" else "finished"
            assert relative.name in line or expected in line, (name, how, str(relative), line)


def _load_activations_names(folder: Path, damaged: Path) -> None:
    """`nnpatch.load_activations` on a damaged record folder: the tensors, or one line."""
    import nnpatch
    from nnpatch.errors import NnpatchError

    try:
        nnpatch.load_activations(folder)
    except NnpatchError as err:
        assert "\n" not in str(err) and damaged.name in str(err), (str(damaged), str(err))
