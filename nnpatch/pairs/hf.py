"""Rows from Hugging Face datasets (the optional extra `nnpatch[datasets]`): a folder written
by `save_to_disk`, or a hub id found in the local Hugging Face cache. Nothing is downloaded
here: a hub id missing from the cache is one line saying what to download, and where."""

from __future__ import annotations

import re
from pathlib import Path

from nnpatch.errors import PairsError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")  # owner/name[:config]
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".txt", ".parquet", ".arrow", ".toml")
SPLIT = "test"  # GSM8K's evaluation split; a folder of one split is read whatever its name


def is_dataset_folder(path: Path) -> bool:
    """A `save_to_disk` folder: one split (dataset_info.json) or several (dataset_dict.json)."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json")
    )


def looks_like_hub_id(text: str) -> bool:
    """owner/name[:config], not a mistyped file name such as data/test.json."""
    return HUB_ID.fullmatch(text) is not None and not text.lower().endswith(FILE_SUFFIXES)


def _datasets():
    import os
    import sys

    if "huggingface_hub" not in sys.modules:  # read at import: no network lookups at all
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise PairsError(
            "reading a Hugging Face dataset needs the datasets package: "
            "pip install 'nnpatch[datasets]'"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def folder_rows(path: Path) -> list[dict]:
    """The rows of a `save_to_disk` folder (its "test" split, or its only one)."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds: one line
        raise PairsError(f"{path}: not a readable dataset folder ({_said(err)})") from None
    return _rows(loaded, str(path))


def hub_rows(hub_id: str) -> list[dict]:
    """The rows of a hub dataset already in the local Hugging Face cache ("owner/name" or
    "owner/name:config"; GSM8K's config is "main")."""
    datasets = _datasets()
    import huggingface_hub.constants as hub

    name, _, config = hub_id.partition(":")
    offline = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True  # the cache, never the net
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:  # noqa: BLE001 - not cached, or not a dataset: one line
        hint = f", '{config}'" if config else ""
        raise PairsError(
            f"{hub_id}: no such file or folder, and not in the local Hugging Face cache "
            f"({_said(err)}); download it where "
            f'there is a network with python -c "import datasets; datasets.load_dataset('
            f"'{name}'{hint})\" (HF_HOME sets the cache), or save it with save_to_disk and "
            "give that folder"
        ) from None
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = offline
    return _rows(loaded, hub_id)


def _rows(loaded, where: str) -> list[dict]:
    import datasets

    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        splits = list(loaded.keys())
        if len(splits) == 1:
            loaded = loaded[splits[0]]
        elif SPLIT in splits:
            loaded = loaded[SPLIT]
        else:
            raise PairsError(
                f"{where}: splits {', '.join(splits)} and none is {SPLIT!r}; save the split "
                "you want alone"
            )
    return list(loaded.to_list())


def write_folder(records: list[dict], folder: str | Path) -> None:
    """Pair records as a `save_to_disk` folder (one split)."""
    datasets = _datasets()
    datasets.Dataset.from_list(records).save_to_disk(str(folder))


def _said(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
