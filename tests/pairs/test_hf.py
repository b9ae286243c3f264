"""Pairs from Hugging Face datasets: a save_to_disk folder reads as its JSONL does, a hub id
is looked up in the local cache only, and each failure is one line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import GSM8K, write_recipe

from nnpatch.cli import main
from nnpatch.errors import PairsError
from nnpatch.pairs import load_pair_set
from nnpatch.run.prepare import prepare

datasets = pytest.importorskip("datasets")


def _cli(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


def test_a_dataset_folder_and_a_jsonl_file_give_identical_pairs(tmp_path):
    _cli("pairs", "gsm8k", "--input", str(GSM8K), "--out", str(tmp_path / "p.jsonl"), "--n", "25")
    out = str(tmp_path / "p-dataset")
    _cli("pairs", "gsm8k", "--input", str(GSM8K), "--out", out, "--format", "dataset", "--n", "25")
    from_jsonl, _ = load_pair_set("p.jsonl", tmp_path)
    from_folder, _ = load_pair_set("p-dataset", tmp_path)
    assert from_folder == from_jsonl and len(from_jsonl) == 25
    assert any(p.clean_steps for p in from_folder)  # the steps survive the arrow round trip


def test_gsm8k_from_a_dataset_folder_makes_the_pairs_its_jsonl_makes(tmp_path):
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:80]]
    splits = {"train": rows[:7], "test": rows}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    ).save_to_disk(str(tmp_path / "gsm8k"))
    recipe = write_recipe(tmp_path, data={"pairs": "gsm8k", "source": "gsm8k", "limit": 6})
    expected, _ = load_pair_set("gsm8k", tmp_path, 6, str(GSM8K))
    assert prepare(recipe).pairs == expected  # the folder's "test" split, read from the recipe


def test_a_folder_with_other_splits_or_fields_is_one_line(tmp_path):
    row = {"question": "q", "answer": "a"}
    dict_ = {"train": [row], "validation": [row]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in dict_.items()}).save_to_disk(
        str(tmp_path / "two")
    )
    with pytest.raises(PairsError, match=r"two: splits train, validation and none is 'test'"):
        load_pair_set("gsm8k", tmp_path, None, "two")
    datasets.Dataset.from_list([{"id": "a", "clean_question": "x"}]).save_to_disk(
        str(tmp_path / "thin")
    )
    with pytest.raises(PairsError, match=r"thin row 1: field 'clean_answer' is missing"):
        load_pair_set("thin", tmp_path)


def test_a_hub_id_missing_from_the_cache_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PairsError) as err:
        load_pair_set("gsm8k", tmp_path, None, "openai/gsm8k:main")
    message = str(err.value)
    assert "openai/gsm8k:main: no such file or folder, and not in the local Hugging Face" in message
    with pytest.raises(PairsError, match=r"is neither a file \(looked at .*test\.json\)"):
        load_pair_set("gsm8k", tmp_path, None, "data/test.json")  # a typo, not a hub id
    assert "datasets.load_dataset('openai/gsm8k', 'main')" in message and "\n" not in message


def _hub_cache(tmp_path, rows: list[dict]):
    """A local Hugging Face cache holding openai/gsm8k's "main" config, laid out as a download
    leaves it (<namespace>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow and its
    dataset_info.json), built here by datasets' own JSON builder and moved into place."""
    source = tmp_path / "gsm8k-test.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    datasets.load_dataset("json", data_files={"test": str(source)}, cache_dir=str(cache))
    (built,) = [p for p in cache.glob("json/*/0.0.0/*") if p.is_dir()]
    target = cache / "openai___gsm8k" / "main" / "0.0.0" / built.name
    target.mkdir(parents=True)
    (built / "json-test.arrow").rename(target / "gsm8k-test.arrow")
    info = json.loads((built / "dataset_info.json").read_text())
    info.update(builder_name="gsm8k", config_name="main", dataset_name="gsm8k")
    (target / "dataset_info.json").write_text(json.dumps(info))
    return cache


def test_a_cached_hub_id_reads_as_its_jsonl(tmp_path, monkeypatch):
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:60]]
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(_hub_cache(tmp_path, rows)))
    expected, _ = load_pair_set("gsm8k", tmp_path, 6, str(GSM8K))
    cached, counts = load_pair_set("gsm8k", tmp_path, 6, "openai/gsm8k:main")
    assert cached == expected and counts["kept"] == 6
