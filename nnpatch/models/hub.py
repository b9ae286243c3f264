"""Find a model folder: a local path, or a Hugging Face hub id through the normal HF cache.

Offline, or when the hub cannot be reached, a hub id that is not cached is one line saying
what to download and where it goes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nnpatch.errors import ModelError

# the files a saved tokenizer consists of, for downloads that need only it
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model"]


def resolve_folder(ref: str, field: str, patterns: list[str], revision: str | None = None) -> Path:
    """The local folder for `ref` (a directory, or a hub id fetched into the HF cache)."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            return path.parent
        return path
    if ref.count("/") > 1 or ref.startswith((".", "/", "~")):
        raise ModelError(f"{field}: {ref!r} is not a folder here and not a hub id (owner/name)")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(
            snapshot_download(
                ref, revision=revision, allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    try:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ConnectionError("HF_HUB_OFFLINE is set")
        return Path(snapshot_download(ref, revision=revision, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - any hub failure becomes the same one line
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ModelError(
            f"{field}: {ref!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"the hub could not be reached ({reason}); on a machine with network run "
            f"`hf download {ref}` and copy the cache here, or set {field} to a local folder"
        ) from None


def weights_file(folder: Path, ref: str, field: str, names: list[str]) -> Path:
    """The first of `names` present in `folder` (a file path given directly is used as is)."""
    direct = Path(ref).expanduser()
    if direct.is_file():
        return direct
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{field}: {folder} holds none of {', '.join(names)}")


CODE_FILES = ("config.json", "tokenizer_config.json")


def refuse_custom_code(folder: Path, field: str) -> None:
    """A model folder whose config asks for its own Python code (`auto_map`) is refused:
    nnpatch never runs code from a model folder, whatever the user would answer."""
    for name in CODE_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"{field}: {file}: unreadable ({type(err).__name__})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise ModelError(
                f"{field}: {file} asks for custom code (auto_map); nnpatch never runs code "
                "from a model folder: use a model of a standard transformers architecture"
            )


def load_tokenizer(folder: Path, field: str):
    """The tokenizer saved in `folder`, never running its code; a broken one is one line
    naming the recipe field and the folder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - a broken tokenizer file: one line
        raise ModelError(
            f"{field}: {folder}: cannot load its tokenizer ({first_line(err)})"
        ) from None


def first_line(err: BaseException) -> str:
    """An exception as one short line: its first line, or its type when it says nothing."""
    text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
    return text or type(err).__name__
