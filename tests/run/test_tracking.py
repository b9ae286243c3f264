"""`run.wandb`: one W&B run per nnpatch run, offline here, holding only what the run folder
holds; a resumed run continues the same W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_recipe

from nnpatch.errors import RecipeError
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare
from nnpatch.run.tracking import ARTIFACT_FILES

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

SECRET = "sk-never-in-wandb-4242"


def records(path: Path):
    """The records of a .wandb file (LevelDB's log format: 32 KiB blocks of chunks with a
    7-byte header each, after W&B's 7-byte file header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, partial = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        kind = data[pos + 6] if left >= 7 else 0
        if kind == 0:  # the block's padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        partial += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = pb.Record()
            record.ParseFromString(partial)
            yield record
            partial = b""


def _by_kind(run_dir: Path) -> dict[str, list]:
    (log,) = run_dir.glob("wandb/offline-run-*/*.wandb")
    kinds: dict[str, list] = {}
    for record in records(log):
        kinds.setdefault(record.WhichOneof("record_type"), []).append(record)
    return kinds


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("NNPATCH_TEST_SECRET", SECRET)


def _recipe(tmp_path, **run):
    wandb = {"project": "nnpatch-test", "mode": "offline"}
    return write_recipe(
        tmp_path, data={"limit": 3}, run={"report": "full", "batch_size": 16, "wandb": wandb, **run}
    )


def test_the_wandb_run_holds_the_recipe_the_numbers_and_the_files(tmp_path, offline):
    finished = execute(prepare(_recipe(tmp_path)))
    manifest = json.loads((finished.path / "manifest.json").read_text())
    kinds = _by_kind(finished.path)
    (run,) = kinds["run"]
    assert run.run.run_id == manifest["wandb"]["id"] and run.run.project == "nnpatch-test"

    config = {u.key: json.loads(u.value_json) for u in run.run.config.update}
    resolved = json.loads((finished.path / "resolved.json").read_text())
    assert {k: config[k] for k in resolved} == resolved

    summary = {u.key: json.loads(u.value_json) for r in kinds["summary"] for u in r.summary.update}
    assert summary["rows"] == manifest["rows"]
    for key in ("baselines/clean_logit_diff", "top/1/cell", "top/1/mean", "top/1/ci95_low"):
        assert key in summary
    images = {u.nested_key[0] for r in kinds["summary"] for u in r.summary.update if u.nested_key}
    assert {f"charts/{p.stem}" for p in (finished.path / "charts").glob("heatmap_*.png")} <= images

    (artifact,) = kinds["artifact"]
    assert sorted(c.path for c in artifact.artifact.manifest.contents) == sorted(ARTIFACT_FILES)
    for file in finished.path.rglob("*"):  # nor anything W&B wrote into the folder
        assert not file.is_file() or SECRET.encode() not in file.read_bytes(), file


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, offline):
    def stop_after_a_batch(total):
        return lambda n: (_ for _ in ()).throw(KeyboardInterrupt)

    recipe = _recipe(tmp_path, batch_size=4)
    with pytest.raises(KeyboardInterrupt) as stopped:
        execute(prepare(recipe), progress=stop_after_a_batch)
    run_dir = stopped.value.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    first = manifest["wandb"]["id"]
    resumed = execute(prepare(recipe), resume=(run_dir, manifest))
    final = json.loads((resumed.path / "manifest.json").read_text())
    assert final["wandb"]["id"] == first and final["status"] == "finished"
    ids = set()
    for log in run_dir.glob("wandb/offline-run-*/*.wandb"):
        ids |= {r.run.run_id for r in records(log) if r.WhichOneof("record_type") == "run"}
    assert ids == {first}


def test_wandb_not_installed_is_refused_before_a_folder_is_made(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(RecipeError, match=r"run\.wandb: wandb is not installed; pip install"):
        prepare(_recipe(tmp_path))
    assert not (tmp_path / "outputs").exists()


def test_online_without_a_login_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """No key, no netrc entry: one line naming the recipe and run.wandb.mode, no folder."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    recipe = write_recipe(
        tmp_path, data={"limit": 2}, run={"wandb": {"project": "p", "mode": "online"}}
    )
    with pytest.raises(RecipeError, match=r"test\.toml: run\.wandb\.mode: W&B is online but"):
        prepare(recipe)
    assert not (tmp_path / "outputs").exists()


def test_a_login_in_netrc_or_the_environment_lets_an_online_run_start(tmp_path, monkeypatch):
    """The key in the environment, or the netrc entry `wandb login` writes, counts as a
    login; offline, or WANDB_MODE=offline, needs none."""
    from nnpatch.recipe import WandbSection
    from nnpatch.run.tracking import online_without_login

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    online = WandbSection(project="p", mode="online")
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert online_without_login(online)
    assert not online_without_login(WandbSection(project="p", mode="offline"))
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert not online_without_login(online)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert online_without_login(online)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not online_without_login(online)
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not online_without_login(online)


def test_a_wandb_failure_after_the_tables_is_recorded_not_raised(tmp_path, offline, monkeypatch):
    from nnpatch.run import tracking

    def broken(self, manifest, failed=False):
        self.run.finish()  # no W&B run left open for the next test
        raise ConnectionError("the upload broke")

    monkeypatch.setattr(tracking.Tracker, "finish", broken)
    finished = execute(prepare(_recipe(tmp_path, report="none")))
    manifest = json.loads((finished.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and "the upload broke" in manifest["wandb"]["error"]
    assert finished.warnings and "the run folder holds them" in finished.warnings[0]


def test_the_wandb_id_keeps_the_folders_name_whole_and_the_environment_never_uploads(
    tmp_path, offline, monkeypatch
):
    from nnpatch.run.tracking import wandb_id

    folder = tmp_path / ("n" * 100) / "20261202T140438Z_38b9cd"
    assert wandb_id(folder).startswith("20261202T140438Z_38b9cd-") and len(wandb_id(folder)) == 64
    monkeypatch.setenv("WANDB_MODE", "online")  # the recipe says offline: it stays offline
    finished = execute(prepare(_recipe(tmp_path, report="none")))
    assert json.loads((finished.path / "manifest.json").read_text())["wandb"]["mode"] == "offline"
