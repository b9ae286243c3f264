"""NDIF's own server (PyPI `ndif` 0.1.2) on this CPU-only machine, inside a network namespace.

    with ndif_server(families=("gpt2",)) as ndif:
        done = ndif.run_python("import nnsight; ...")   # a client, inside the namespace
        ndif.host                                        # http://127.0.0.1:8001 (in there)

The namespace has only loopback: every server process and every client command runs in it,
so nothing listens on, or reaches, any other address. The server venv holds no nnpatch; the
tiny models come from a Hugging Face cache written from nnpatch's own `tiny_random_lm`.
Anything that stops it starting is `Unavailable` (one line), for `pytest.skip`.
Why each CPU-only step is needed: WORKAROUNDS.md beside this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from hub_cache import FAMILIES, CachedModel, write_tiny_models
from venvs import Unavailable, cache_root, redis_server, server_python

HERE = Path(__file__).resolve().parent
ACTOR = "nnpatch_cpu_actor.CpuModelActor"  # tests/ndif/actor/, on Ray's PYTHONPATH (W2)

# Every port sits outside 10002-19999, the range Ray keeps for its workers (W1). The
# namespace is new, so nothing else holds them.
PORTS = {"redis": 6390, "s3": 5055, "ray": 6385, "ray_client": 10001, "api": 8001}
START_TIMEOUT = float(os.environ.get("NNPATCH_NDIF_START_TIMEOUT", "240"))
DEPLOY_TIMEOUT = float(os.environ.get("NNPATCH_NDIF_DEPLOY_TIMEOUT", "240"))


class Namespace:
    """A network namespace with only `lo` up, held open by a sleeping process."""

    def __init__(self) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} not found (util-linux / iproute2)")
        if os.geteuid() != 0:
            raise Unavailable("creating a network namespace needs root")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sleep", "infinity"],
            start_new_session=True,
            stderr=subprocess.PIPE,
        )
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.inode = self._wait_for_own_namespace()
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def _wait_for_own_namespace(self) -> int:
        ours = os.stat("/proc/self/ns/net").st_ino
        for _ in range(100):  # unshare has not switched until its inode differs from ours
            if self.holder.poll() is not None:
                err = self.holder.stderr.read().decode().strip().splitlines()[-1:] or ["?"]
                raise Unavailable(f"unshare --net failed: {err[0]}")
            with contextlib.suppress(FileNotFoundError):
                inode = os.stat(self.path).st_ino
                if inode != ours:
                    return inode
            time.sleep(0.05)
        raise Unavailable("unshare --net did not create a namespace within 5 s")

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv, check=False, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), check=check, **kwargs)

    def spawn(self, argv, env: dict, log: Path, cwd: Path) -> subprocess.Popen:
        """A long-running process in the namespace, in its own process group."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.argv(argv),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        """Every process in this namespace but the holder: exactly the ones we started,
        and what they started (Ray daemonises its raylet, GCS and workers)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.holder.pid:
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == self.inode:
                    found.append(int(entry))
        return found

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM each process left in the namespace, SIGKILL what outlives `grace`,
        then end the holder (the namespace goes with its last process)."""
        _signal_all(self.pids(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_all(self.pids(), signal.SIGKILL)
        self.holder.kill()
        self.holder.wait()


class LoopbackNdif:
    """A running stack: Redis, moto's S3, Ray head + ndif controller, ndif's API."""

    def __init__(self, families=FAMILIES, workdir: Path | None = None) -> None:
        self.timings: dict[str, float] = {}
        self.python = server_python()  # first call builds the venv (minutes, once)
        self.redis = redis_server()
        self.site = Path(
            subprocess.run(
                [self.python, "-c", "import ndif, os; print(os.path.dirname(ndif.__file__))"],
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        # Ray's unix sockets must stay under 107 characters: a short temp folder.
        self.work = Path(workdir or tempfile.mkdtemp(prefix="nnpndif-", dir="/tmp"))
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.hf_cache = cache_root() / "hf-hub"
        self.models: list[CachedModel] = write_tiny_models(self.hf_cache, families)
        self.host = f"http://127.0.0.1:{PORTS['api']}"
        self.ns: Namespace | None = None
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- bring up / tear down ---------------------------------------------------------------
    def start(self) -> LoopbackNdif:
        began = time.monotonic()
        self.ns = Namespace()
        env = self.server_env()
        bind = ["--bind", "127.0.0.1", "--port", str(PORTS["redis"])]  # W8
        self._spawn("redis", [self.redis, *bind, "--save", "", "--dir", str(self.work)], env)
        moto = str(self.python.parent / "moto_server")  # W9
        self._spawn("s3", [moto, "-H", "127.0.0.1", "-p", str(PORTS["s3"])], env)
        self._spawn("ray", ["bash", str(self.site / "services/ray/start.sh")], env)
        self._spawn("api", ["bash", str(self.site / "services/api/start.sh")], env)
        self._wait_connected(began + START_TIMEOUT)
        self.timings["start_s"] = time.monotonic() - began
        began = time.monotonic()
        self.deploy()
        self.timings["deploy_s"] = time.monotonic() - began
        return self

    def stop(self, keep_files: bool = False) -> None:
        """Each service by its process group (SIGTERM, then SIGKILL), then whatever is left
        in the namespace (Ray's daemons) by PID, then the namespace. Not `ray stop`: it
        kills Ray processes by name on the whole machine, not only ours."""
        if self.ns is None:
            return
        began = time.monotonic()
        for name in ("api", "ray", "s3", "redis"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _end_group(proc, grace=10.0)
        self.ns.close()
        self.ns = None
        if not keep_files:
            shutil.rmtree(self.work, ignore_errors=True)
        self.timings["stop_s"] = time.monotonic() - began

    def deploy(self) -> None:
        """Pre-deploy each model from a deploy file that names its key and size (W4)."""
        spec = {"models": [self._deploy_entry(m) for m in self.models]}
        file = self.work / "deploy.yaml"
        file.write_text(json.dumps(spec, indent=2))  # JSON is YAML
        try:
            done = self.ns.run(
                [str(self.python.parent / "ndif"), "deploy", "-f", str(file)],
                env=self.server_env(),
                timeout=DEPLOY_TIMEOUT,
                cwd=self.work,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"ndif deploy unfinished after {DEPLOY_TIMEOUT:.0f} s (logs: {self.logs})"
            ) from None
        (self.logs / "deploy.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise Unavailable(f"ndif deploy failed (see {self.logs / 'deploy.log'})")

    @staticmethod
    def _deploy_entry(model: CachedModel) -> dict:
        return {
            "checkpoint": model.hub_id,
            "model_key": model.model_key,
            "revision": "main",
            "task": "text-generation",
            "size_bytes": model.size_bytes,
            "dtype": "float32",
            "actor_class": ACTOR,
            "pinned": True,
        }

    # ---- environments ------------------------------------------------------------------------
    def server_env(self) -> dict:
        mib = 1024 * 1024
        resources = {  # W3: a declared GPU, or the controller places nothing
            "GPU": 1,
            "CPU": 4,
            "head": 10,
            "cuda_memory_bytes": 4000 * mib,
            "cpu_memory_bytes": 4000 * mib,
        }
        return {
            **_base_env(),
            "PATH": f"{self.python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONPATH": str(HERE / "actor"),
            "NDIF_HOME": str(self.work / "home"),
            "NDIF_REDIS_URL": f"redis://127.0.0.1:{PORTS['redis']}",
            "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{PORTS['s3']}",
            "NDIF_OBJECT_STORE_ACCESS_KEY": "testing",
            "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
            "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{PORTS['ray_client']}",
            "NDIF_RAY_HEAD_PORT": str(PORTS["ray"]),
            "NDIF_RAY_TEMP_DIR": str(self.work / "ray"),
            "NDIF_API_PORT": str(PORTS["api"]),
            "NDIF_API_URL": self.host,
            "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{PORTS['api']}",  # over gunicorn_conf's 0.0.0.0
            "NDIF_MODEL_IMPORT_PATH": ACTOR,
            "NDIF_DEFAULT_DTYPE": "float32",
            "RAY_OVERRIDE_RESOURCES": json.dumps(resources),
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_CACHE": str(self.hf_cache),
        }

    def client_env(self, **extra: str) -> dict:
        """What a client needs: the host, a key (auth is off, any value passes; nnpatch
        refuses to send without one), the same offline HF cache, and the key-minting hook."""
        path = os.pathsep.join(
            filter(None, [str(HERE / "client_site"), extra.pop("PYTHONPATH", "")])
        )
        return {
            **_base_env(),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NDIF_HOST": self.host,
            "NDIF_API_KEY": str(uuid.UUID(int=0)),
            "HF_HUB_CACHE": str(self.hf_cache),
            "NNPATCH_NDIF_REPOS": ",".join(m.hub_id for m in self.models),
            "PYTHONPATH": path,
            **extra,
        }

    # ---- clients -----------------------------------------------------------------------------
    def run(
        self, argv: list, timeout: float = 600, cwd=None, **env: str
    ) -> subprocess.CompletedProcess:
        """Run a client command inside the namespace (output captured, never raises on rc).
        `cwd` defaults to the stack's scratch folder, so the checkout is not on the
        client's sys.path by accident (nnsight ships modules found there by value)."""
        return self.ns.run(
            [str(a) for a in argv],
            env=self.client_env(**env),
            timeout=timeout,
            cwd=cwd or self.work,
        )

    def run_python(
        self, code: str, *args: str, python=sys.executable, **kw
    ) -> subprocess.CompletedProcess:
        """Run Python code as a client inside the namespace; `python` picks the interpreter
        (default: this one, i.e. the dev venv with nnpatch)."""
        return self.run([python, "-c", code, *args], **kw)

    def memory_bytes(self) -> int:
        """Proportional set size of every process in the namespace (shared pages split)."""
        total = 0
        for pid in self.ns.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        return total

    # ---- internals ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        # cwd matters: Ray puts its drivers' working directory on every worker's sys.path,
        # so a server started from the checkout could import nnpatch (W12).
        self.procs[name] = self.ns.spawn(argv, env, self.logs / f"{name}.log", cwd=self.work)

    def _wait_connected(self, deadline: float) -> None:
        """Poll the API's /connected (200 once its dispatcher holds a Ray connection)."""
        probe = (
            "import sys, urllib.request\n"
            "try: print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
            "except Exception as e: print(getattr(e, 'code', 0))"
        )
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    last = _last_line(self.logs / f"{name}.log")
                    raise Unavailable(f"{name} exited with {proc.returncode} ({last})")
            with contextlib.suppress(subprocess.TimeoutExpired):
                done = self.ns.run(
                    [sys.executable, "-c", probe, f"{self.host}/connected"], timeout=30
                )
                if done.stdout.strip() == "200":
                    return
            time.sleep(2)
        raise Unavailable(
            f"NDIF's /connected not 200 within {START_TIMEOUT:.0f} s (logs: {self.logs})"
        )


@contextlib.contextmanager
def ndif_server(families=FAMILIES, workdir: Path | None = None):
    """A started `LoopbackNdif` serving `families`, always torn down on the way out."""
    server = LoopbackNdif(families, workdir)
    failed = True
    try:
        yield server.start()
        failed = False
    finally:  # a failed start keeps its logs for the message that names them
        server.stop(keep_files=failed or bool(os.environ.get("NNPATCH_NDIF_KEEP")))


def _base_env() -> dict:
    return {
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # 2 cores for ~30 processes
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _end_group(proc: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1][:160]
    return "no output"
