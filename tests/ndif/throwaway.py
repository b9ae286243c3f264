"""A one-function package built as a wheel and pip-installed (non-editable) into a client
venv, for checking what nnsight ships with a remote request: `nnp_throwaway.double(x)`."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
[project]
name = "nnp-throwaway"
version = "0.0.1"
"""


def build_wheel(python: Path, where: Path) -> Path:
    """The wheel, built offline with the client venv's own setuptools."""
    package = where / "src"
    (package / "nnp_throwaway").mkdir(parents=True)
    (package / "nnp_throwaway" / "__init__.py").write_text("def double(x):\n    return x * 2\n")
    (package / "pyproject.toml").write_text(PYPROJECT)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(where / "dist"),
            str(package),
        ],
        check=True,
    )
    return next((where / "dist").glob("nnp_throwaway-*.whl"))


@contextlib.contextmanager
def installed_throwaway(python: Path, where: Path):
    """`nnp_throwaway` in `python`'s site-packages for the block, uninstalled after (the
    client venv is cached and shared)."""
    wheel = build_wheel(python, where)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    try:
        yield wheel
    finally:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "nnp-throwaway"])
