"""One loopback NDIF for the whole tests/ndif session (bringing it up costs about a minute),
and the environments its clients run in. Opt-in: NNPATCH_NDIF=1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from server import ndif_server  # noqa: E402
from venvs import Unavailable, build_wheel, client_python, user_python  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NNPATCH_NDIF") == "1":
        return
    skip = pytest.mark.skip(reason="set NNPATCH_NDIF=1 to run NDIF's own server on loopback")
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ndif():
    try:
        with ndif_server(("gpt2", "llama")) as server:
            yield server
    except Unavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def client():
    """A client with nnsight but no nnpatch (throwaway wheels go in here)."""
    try:
        return client_python()
    except Unavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def user(tmp_path_factory):
    """nnpatch built as a wheel and installed non-editable in its own venv: the client as
    users have it (nnsight registers nothing from site-packages by itself)."""
    try:
        return user_python(build_wheel(HERE.parent.parent, tmp_path_factory.mktemp("wheel")))
    except Unavailable as err:
        pytest.skip(str(err))
