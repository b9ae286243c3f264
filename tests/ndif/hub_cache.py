"""nnpatch's tiny random LMs written into a Hugging Face cache, laid out as a download leaves it.

`models--<org>--<name>/snapshots/<sha>/{config.json, model.safetensors, tokenizer files}` and
`refs/main` naming the snapshot, so `from_pretrained("nnpatch-test/tiny-gpt2")` finds it with
HF_HUB_OFFLINE=1 on the server (nnsight's loader) and on the client (nnpatch's remote recipes)
alike: both read the same weights, those of `tiny_random_lm(family)`.

Runs where nnpatch is importable (the dev venv); the server never imports nnpatch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ORG = "nnpatch-test"
FAMILIES = ("gpt2", "llama")
TASK = "text-generation"
REVISION = "main"  # what nnpatch's load_remote_causal_lm sends when a recipe names none


@dataclass(frozen=True)
class CachedModel:
    hub_id: str  # e.g. nnpatch-test/tiny-gpt2
    snapshot: Path  # the folder holding config, weights and tokenizer
    size_bytes: int  # float32 weights, what the controller places by
    model_key: str  # the key an nnsight client mints for it (revision "main")


def hub_id(family: str) -> str:
    return f"{ORG}/tiny-{family}"


def model_key(repo: str) -> str:
    """nnsight 0.8.1's key for `TransformersModel(repo, task=TASK, revision="main")` (its
    `LanguageModel` alias mints the same one): the class path, then json.dumps of the suffix."""
    suffix = json.dumps({"repo_id": repo, "revision": REVISION, "task": TASK})
    return f"nnsight.modeling.transformers.TransformersModel:{suffix}"


def write_tiny_models(cache: Path, families=FAMILIES) -> list[CachedModel]:
    """Save `tiny_random_lm(family)` and its tokenizer into `cache` (an HF_HUB_CACHE)."""
    from nnpatch.models.tiny import tiny_random_lm

    written = []
    for family in families:
        lm = tiny_random_lm(family)
        repo = hub_id(family)
        root = Path(cache) / f"models--{repo.replace('/', '--')}"
        staging = root / "staging"
        lm.module.save_pretrained(staging, safe_serialization=True)
        lm.tokenizer.save_pretrained(staging)
        sha = _content_sha(staging)  # same weights, same snapshot name, run after run
        snapshot = root / "snapshots" / sha
        if snapshot.exists():
            _remove(staging)
        else:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(snapshot)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / REVISION).write_text(sha)
        size = sum(p.numel() * p.element_size() for p in lm.module.parameters())
        written.append(CachedModel(repo, snapshot, size, model_key(repo)))
    return written


def _content_sha(folder: Path) -> str:
    digest = hashlib.sha1()
    for file in sorted(folder.iterdir()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def _remove(folder: Path) -> None:
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
