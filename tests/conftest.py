import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nnpatch.models.tiny import tiny_random_codi  # noqa: E402


@pytest.fixture(scope="session")
def llama():
    return tiny_random_codi("llama")


@pytest.fixture(scope="session")
def gpt2():
    return tiny_random_codi("gpt2")
