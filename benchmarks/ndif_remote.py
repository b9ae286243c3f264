"""Remote sweeps against NDIF's own server on loopback, against the same sweeps run locally:
requests per sweep, bytes up and down per row, and seconds.

    python benchmarks/ndif_remote.py [--batches 4,32] [--families gpt2]

nnpatch is built as a wheel and installed non-editable in its own venv (as users have it);
the server (tests/ndif) has no nnpatch. Each sweep is `recipes/remote.toml` with its model set
to the served tiny model, run once with `run.remote = true` and once locally, from the same
venv, inside the server's network namespace; a small driver counts every request's payload
(nnsight's serialised request: bytes up) and result (bytes down). Where the server cannot
start here, one line says why and the script exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "ndif"))

from hub_cache import hub_id  # noqa: E402
from server import ndif_server  # noqa: E402
from venvs import Unavailable, build_wheel, user_python  # noqa: E402

# Runs in the user venv inside the namespace: one sweep, every request counted.
DRIVER = """
import json, sys, time
from nnsight.intervention.backends import remote as backend
sizes = {"up": [], "down": []}
serialize, finalize = backend.RemoteBackend._serialize, backend.RemoteBackend.finalize
def counted_serialize(self, tracer):
    blob = serialize(self, tracer); sizes["up"].append(len(blob)); return blob
def counted_finalize(self, content):
    sizes["down"].append(len(content)); return finalize(self, content)
backend.RemoteBackend._serialize = counted_serialize
backend.RemoteBackend.finalize = counted_finalize
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare
clock = time.perf_counter()
finished = execute(prepare(sys.argv[1], sys.argv[2:]))
print(json.dumps({"rows": finished.results.height, "seconds": time.perf_counter() - clock,
                  "sweep_s": finished.timings["patch_s"], **sizes}))
"""


def sweep(ndif, python, overrides: list[str]) -> dict:
    recipe = ROOT / "recipes" / "remote.toml"
    done = ndif.run([python, "-c", DRIVER, str(recipe), *overrides], timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="4,32")
    parser.add_argument("--families", default="gpt2")
    args = parser.parse_args()
    families = args.families.split(",")
    try:
        python = user_python(build_wheel(ROOT, Path("/tmp/nnpatch-bench-wheel")))
        server = ndif_server(tuple(families))
        ndif = server.__enter__()
    except Unavailable as err:
        print(f"ndif benchmark: not run: {err}")
        return
    try:
        print(
            f"NDIF on loopback: up in {ndif.timings['start_s']:.0f} s, "
            f"deployed in {ndif.timings['deploy_s']:.0f} s"
        )
        header = "model | batch | rows | requests | up/row | down/row | remote s | local s | ratio"
        print(header)
        print("|".join("---" for _ in header.split("|")))
        for family in families:
            for batch in map(int, args.batches.split(",")):
                common = [
                    f'model.checkpoint="{hub_id(family)}"',
                    f"run.batch_size={batch}",
                    'run.report="none"',
                    f'run.output="{ndif.work / "bench"}"',
                ]
                remote = sweep(ndif, python, [*common, "run.remote=true"])
                local = sweep(ndif, python, [*common, "run.remote=false"])
                requests, rows = len(remote["up"]), remote["rows"]
                print(
                    f"{hub_id(family)} | {batch} | {rows} | {requests} | "
                    f"{sum(remote['up']) / rows / 1024:.1f} KiB | "
                    f"{sum(remote['down']) / rows / 1024:.2f} KiB | {remote['seconds']:.1f} | "
                    f"{local['seconds']:.1f} | {remote['seconds'] / local['seconds']:.1f}x"
                )
    finally:
        server.__exit__(None, None, None)


if __name__ == "__main__":
    main()
