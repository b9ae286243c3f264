"""nnpatch: declarative activation patching for continuous-thought language models.

The public API, imported lazily so `nnpatch --help` stays fast: `run` (a whole run in one
call, returning its `Run`), `load_recipe`, `Recipe`, `build_model`, `ThoughtModel`,
`prepare`, `execute`,
`Pair`, `load_pairs`, `load_run` and `Run` (a finished run's tables), `load_activations`
(a record run's tensor and index), `charts`, and the error types.
"""

from importlib import import_module

import nnpatch.run  # noqa: F401 - the package is callable: nnpatch.run(recipe, ...)
from nnpatch.errors import ModelError, NnpatchError, PairsError, RecipeError

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "nnpatch.recipe",
    "Recipe": "nnpatch.recipe",
    "build_model": "nnpatch.models",
    "ThoughtModel": "nnpatch.models",
    "prepare": "nnpatch.run.prepare",
    "execute": "nnpatch.run.execute",
    "Pair": "nnpatch.pairs",
    "load_pairs": "nnpatch.pairs",
    "load_run": "nnpatch.report.load",
    "Run": "nnpatch.report.load",
    "load_activations": "nnpatch.report.load",
}
_MODULES = {"charts": "nnpatch.report.charts"}  # chart functions for notebooks

__all__ = [
    "ModelError",
    "NnpatchError",
    "PairsError",
    "RecipeError",
    "__version__",
    "run",
    *_LAZY,
    *_MODULES,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _MODULES:
        return import_module(_MODULES[name])
    raise AttributeError(f"module 'nnpatch' has no attribute {name!r}")
