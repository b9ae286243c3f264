"""Client-side start-up hook for the loopback NDIF (on PYTHONPATH only for client commands).

nnsight 0.8.1 mints a model's remote key by asking the Hub for the canonical repo id
(`HfApi().model_info(repo).id`, nnsight/modeling/huggingface.py `_remoteable_model_key`),
which fails offline. Its answer is memoised in `_ID_CACHE`; this fills that memo for the
served repos (NNPATCH_NDIF_REPOS, comma-separated) as soon as nnsight's module is imported,
so an unchanged client (nnpatch included) mints the key the server deployed.
"""

import importlib.abc
import os
import sys

REPOS = [r for r in os.environ.get("NNPATCH_NDIF_REPOS", "").split(",") if r]
TARGET = "nnsight.modeling.huggingface"


class _FillIdCache(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real spec, then wrap its loader
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        exec_module = spec.loader.exec_module

        def exec_and_fill(module):
            exec_module(module)
            module._ID_CACHE.update({repo: repo for repo in REPOS})

        spec.loader.exec_module = exec_and_fill
        return spec


if REPOS:
    sys.meta_path.insert(0, _FillIdCache())
