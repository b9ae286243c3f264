"""The bad-input and fault corpus: each case is a command line (and maybe a fault to inject),
the exact one-line message it must print, its exit code, and the state of the run folder it
leaves: none made, or the status its manifest must hold."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helpers import write_pairs, write_recipe

GOOD_PAIR = {
    "id": "a",
    "clean_question": "Tom has 3 coins",
    "clean_answer": "3",
    "corrupted_question": "Tom has 5 coins",
    "corrupted_answer": "5",
}
RUN = {
    "patch": {"mode": "single", "layers": [0], "positions": [0, 1]},
    "run": {"batch_size": 2, "report": "html"},  # the report renders: Ctrl-C can meet it
}


@dataclass
class Case:
    name: str
    args: list[str]
    # the whole line after "Error: "; {tmp} is the corpus folder, {run} the run folder,
    # {gsm8k} the GSM8K file, {pid} a live process; "?": the message is in EXPECTED
    message: str = "?"
    code: int = 2
    folder: Path | None = None  # the run folder the command acts on, or one it makes below
    status: str | None = None  # its status afterwards (None: no run folder may appear)
    fault: Callable | None = None  # fault(monkeypatch): injected before the command runs
    stdin: str | None = None
    mid_run: bool = False  # the sweep had begun: its one header line comes first


def run_folder(folder: Path | None) -> Path | None:
    """The run folder a case acts on: `folder` itself, or the one run folder made below it."""
    if folder is None or (folder / "manifest.json").is_file():
        return folder
    found = sorted(folder.rglob("manifest.json")) if folder.is_dir() else []
    return found[-1].parent if found else None


def file(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def pairs_file(folder: Path, name: str, rows: list[dict]) -> str:
    return str(write_pairs(folder / name, rows))


def quoted(path: str | Path) -> str:
    return json.dumps(str(path))


def copy_run(source: Path, folder: Path, name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of a run folder, damaged or changed by `edit`."""
    target = folder / "copies" / name
    shutil.copytree(source, target)
    edit(target)
    return target


def set_manifest(**fields) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        manifest = json.loads((run / "manifest.json").read_text())
        for key, value in fields.items():
            if value is None:
                manifest.pop(key, None)
            else:
                manifest[key] = value
        (run / "manifest.json").write_text(json.dumps(manifest))

    return edit


def write_manifest_text(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "manifest.json").write_text(text)


def first_shard(run: Path) -> Path:
    return sorted((run / "shards").glob("rows-*.npy"))[0]


def truncate_first_shard(run: Path) -> None:
    shard = first_shard(run)
    shard.write_bytes(shard.read_bytes()[:60])


def move_first_shard(run: Path) -> None:
    shard = first_shard(run)
    shard.rename(shard.with_name("rows-000000001.npy"))


def live_process() -> subprocess.Popen:
    """A process that looks like an nnpatch run to the liveness check."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "nnpatch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def signal_after_first_batch(signum: int):
    """A progress callback that sends this process `signum` once a batch is done."""

    def start(total: int):
        def tick(n: int) -> None:
            os.kill(os.getpid(), signum)

        return tick

    return start


def base_recipes(tmp: Path) -> dict[str, str]:
    return {
        "base": str(write_recipe(tmp, name="base")),
        "sweep": str(write_recipe(tmp, name="sweep", **RUN)),
    }


def signal_fault(signum: int) -> Callable:
    def fault(monkeypatch) -> None:
        import nnpatch.cli as cli

        monkeypatch.setattr(cli, "_progress", signal_after_first_batch(signum))

    return fault


def keyboard_interrupt_in(module: str, name: str) -> Callable:
    def fault(monkeypatch) -> None:
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(f"{module}.{name}", interrupted)

    return fault


def disk_full_in(module: str, name: str, after: int = 0, at: str | None = None) -> Callable:
    """`module.name` raises ENOSPC from its (after+1)-th call on, as a full disk would; with
    `at`, from its first call that writes a file of that name on."""

    def fault(monkeypatch) -> None:
        import builtins
        import errno
        import importlib

        target = importlib.import_module(module)
        real = getattr(target, name, None) or getattr(builtins, name)
        calls = {"n": 0}

        def full(path, *args, **kwargs):
            calls["n"] += 1
            if at is not None and Path(path).name == at:
                calls["full"] = True
            if calls.get("full", at is None) and calls["n"] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(target, name, full, raising=False)

    return fault


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP, "SIGINT": signal.SIGINT}


def remote_code_folder(folder: Path) -> Path:
    """A model folder whose config asks for custom code that would leave a marker if run."""
    from nnpatch.models.tiny import tiny_random_lm

    model = tiny_random_lm("gpt2")
    model.module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = folder / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return marker


def bad_tokenizer_folder(folder: Path) -> None:
    from nnpatch.models.tiny import tiny_random_lm

    model = tiny_random_lm("gpt2")
    model.module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')


def finished_and_interrupted(tmp: Path) -> tuple[Path, Path]:
    """A finished sweep and the same sweep stopped by Ctrl-C after one batch (shards kept)."""
    import pytest

    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare

    (tmp / "runs").mkdir()
    recipe = write_recipe(tmp / "runs", name="sweep", **RUN)
    finished = execute(prepare(recipe)).path

    def stop_after_one(total: int):
        seen = {"n": 0}

        def tick(n: int) -> None:
            seen["n"] += 1
            if seen["n"] > 1:
                raise KeyboardInterrupt

        return tick

    with pytest.raises(KeyboardInterrupt):
        execute(prepare(recipe), progress=stop_after_one)
    interrupted = next(p for p in (tmp / "runs" / "outputs" / "sweep").iterdir() if p != finished)
    return finished, interrupted
