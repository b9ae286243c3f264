"""A run, from recipe to folder: the prepare stage (`prepare`), the stages that follow
(`execute`), the run folder and its manifest (`folder`, `manifest`), row shards (`shards`),
`--resume` (`resume`, `fingerprint`), NDIF's preconditions (`remote`) and the tables
(`tables`).

The package itself is callable: `nnpatch.run(recipe, **overrides)` is `nnpatch.api.run`.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, recipe, overrides=None, **options):
        """Run a recipe (a path, a TOML text or a `Recipe`) and return its finished `Run`;
        overrides as `patch__site="attn"` or {"patch.site": "attn"} (see `nnpatch.api.run`)."""
        from nnpatch.api import run

        return run(recipe, overrides, **options)


sys.modules[__name__].__class__ = _CallablePackage
