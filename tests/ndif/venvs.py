"""The two Python environments the loopback NDIF fixture runs, built once and cached.

- server: Python 3.12 (ndif needs >= 3.12) with `ndif[api,ray]`, nnsight, torch, transformers
  and `moto[server]` (the S3 store). It never contains nnpatch: the point is a server that
  has only what NDIF has.
- client: Python 3.11 (the project's Python) with torch, nnsight and transformers, and no
  nnpatch either; tests pip-install throwaway wheels into it (the dev venv stays untouched).

Each lives under `~/.cache/nnpatch-ndif/<name>-<hash of its pins>/` (`NNPATCH_NDIF_CACHE`
moves it) and is rebuilt only when a pin changes or a build did not finish. Every failure
is `Unavailable` with one line saying what is missing.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

NDIF = "0.1.2"
NNSIGHT = "0.8.1"
TORCH = "2.13.0"
TRANSFORMERS = "5.25.0"  # the project's pin: client and server must build the same modules

# torch==2.13.0 for Python 3.11 is a CPU build on this machine's disk (/opt/wheels); for 3.12
# only PyPI's CUDA build exists (~3 GB of nvidia-* wheels), which runs on the CPU all the same.
SERVER_PINS = [
    f"ndif[api,ray]=={NDIF}",
    f"nnsight=={NNSIGHT}",
    f"torch=={TORCH}",
    f"transformers=={TRANSFORMERS}",
    "moto[server]",
]
CLIENT_PINS = [f"nnsight=={NNSIGHT}", f"torch=={TORCH}", f"transformers=={TRANSFORMERS}"]

DONE = ".nnpatch-complete"  # written last: a venv without it is a build that died midway


class Unavailable(RuntimeError):
    """The loopback NDIF cannot run here; the message is one line naming what is missing."""


def cache_root() -> Path:
    return Path(os.environ.get("NNPATCH_NDIF_CACHE", "~/.cache/nnpatch-ndif")).expanduser()


def find_python(minor: str) -> str:
    """A working `python3.<minor>` (pyenv's shim for a version that is not selected fails)."""
    override = os.environ.get(f"NNPATCH_NDIF_PYTHON{minor.replace('.', '')}")
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [override] if override else []
    candidates += sorted(glob.glob(f"{pyenv}/versions/{minor}.*/bin/python{minor}"), reverse=True)
    candidates += [shutil.which(f"python{minor}"), f"/usr/bin/python{minor}"]
    for exe in filter(None, candidates):
        probe = subprocess.run(
            [exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == minor:
            return exe
    raise Unavailable(f"no working python{minor} (set NNPATCH_NDIF_PYTHON{minor.replace('.', '')})")


def build_venv(name: str, minor: str, pins: list[str]) -> Path:
    """`<cache>/<name>-<hash>/bin/python`, creating the venv and installing `pins` once."""
    key = hashlib.sha256(f"{minor} {' '.join(pins)}".encode()).hexdigest()[:12]
    root = cache_root() / f"{name}-{key}"
    python = root / "bin" / "python"
    if (root / DONE).exists():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits for the first build
        if (root / DONE).exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        _run([find_python(minor), "-m", "venv", str(root)], f"venv for {name}")
        _run([str(python), "-m", "pip", "install", "-q", *pins], f"pip install {' '.join(pins)}")
        (root / DONE).write_text("\n".join(pins) + "\n")
    return python


def server_python() -> Path:
    return build_venv("server", "3.12", SERVER_PINS)


def client_python() -> Path:
    return build_venv("client", "3.11", CLIENT_PINS)


def user_python(wheel: Path) -> Path:
    """nnpatch as users install it: the built wheel, non-editable, into a venv of its own
    (the README's torch pin, everything else as pip resolves it); one venv per wheel."""
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()[:12]
    return build_venv(f"user-{digest}", "3.11", [f"torch=={TORCH}", str(wheel)])


def build_wheel(checkout: Path, out: Path) -> Path:
    """The checkout built as a wheel (what `pip install nnpatch` would fetch)."""
    out.mkdir(parents=True, exist_ok=True)
    _run(
        [
            str(client_python()),
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(out),
            str(checkout),
        ],
        "pip wheel nnpatch",
    )
    (wheel,) = sorted(out.glob("nnpatch-*.whl"))
    return wheel


def redis_server() -> str:
    """Debian's redis-server, installed with apt-get when missing."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise Unavailable("redis-server is not installed (apt-get install redis-server)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        _run(step, "apt-get install redis-server", env=env)
    # Debian's package starts a system-wide redis on 6379; the fixture runs its own.
    subprocess.run(["service", "redis-server", "stop"], capture_output=True)
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{what} failed: {tail[0][:200]}")


if __name__ == "__main__":  # build both ahead of time: python tests/ndif/venvs.py
    print(server_python())
    print(client_python())
    print(redis_server())
