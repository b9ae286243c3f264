"""Clean/corrupted pairs: schema, built-in sets, JSONL loading."""

from nnpatch.pairs.loaders import load_pair_set, load_pairs, read_jsonl
from nnpatch.pairs.schema import Pair

__all__ = ["Pair", "load_pair_set", "load_pairs", "read_jsonl"]
