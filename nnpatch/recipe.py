"""Recipes: a TOML file → a frozen, validated `Recipe`.

Recipes are data: no field is evaluated or imported. The [patch] table's sections come from
the analysis modes (`nnpatch.engine.modes`); checks that need the model (layer and position
ranges) happen in each mode's plan, before any run folder is made.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from nnpatch.engine.metrics import DECODED, METRICS, decodes, numeric, scored
from nnpatch.engine.modes import MODES, SECTIONS
from nnpatch.errors import RecipeError
from nnpatch.fields import Float, Int, PathText, Section, Seed, Text, distinct
from nnpatch.models.kinds import KINDS, recognise
from nnpatch.models.kinds.files import as_path
from nnpatch.models.presets import PRESETS
from nnpatch.models.registry import RELEASES
from nnpatch.pairs.builtin import BUILTIN as BUILTIN_SETS
from nnpatch.pairs.loaders import GENERATORS
from nnpatch.sizes import parse_size

DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class ModelSection(Section):
    """The model: a preset, or a kind of checkpoint and where its files are."""

    # a built-in model (toy-codi, tiny-random-*), instead of kind and checkpoint
    preset: str | None = Field(default=None, json_schema_extra={"examples": list(PRESETS)})
    # the checkpoint's family; unset for a local folder: the one kind its files fit
    kind: Literal[tuple(KINDS)] | None = None  # type: ignore[valid-type]
    checkpoint: PathText | None = None  # a folder, or a Hugging Face hub id
    # codi, coconut, pccot, colar: the base model's config and tokenizer (a folder or hub id)
    base: PathText | None = None
    revision: Text | None = None  # the hub revision (branch, tag or commit) of a hub id
    # a list (0 allowed) is for `nnpatch eval`: accuracy for each number of thoughts
    num_thoughts: (
        Annotated[Int, Field(ge=1, le=64)]
        | Annotated[
            list[Annotated[Int, Field(ge=0, le=64)]], Field(min_length=1), distinct("a count")
        ]
        | None
    ) = None
    prj_dim: Int | None = Field(default=None, ge=1)  # codi: inferred from prj.1.weight when unset
    # codi: whether the checkpoint has CODI's projection (use_prj); false feeds each final
    # hidden state back as it is. Stated, never guessed: a file lacking prj.* is an error
    projection: bool | None = None
    # codi, coconut: "multimode" for Dilgren & Wiegreffe's multimode checkpoints, whose
    # thought markers are <bocot>/<eocot> (CODI: bare ids V, V + 1 and pad = eos; Coconut:
    # <|bocot|>, <|eocot|>, <|latent|> in the tokenizer), read in their latent mode
    thought_tokens: Literal["codi", "multimode"] | None = None
    # codi, coconut: checkpoints trained in several modes (Cywiński et al., multimode) read
    # in another: "direct" answers without thinking (positions bot, the question's last
    # token, and eot); "verbalized" writes its chain of thought after bot until eot, and
    # thought t is the t-th token it wrote
    thinking: Literal["latent", "direct", "verbalized"] | None = None
    lora_r: Int | None = Field(default=None, ge=1)  # codi: checked against the LoRA tensors
    lora_alpha: Float = Field(default=32, gt=0)  # codi: the LoRA merge scale is lora_alpha / r
    answer_prefix: str | None = None  # causal_lm: text before the answer (default "The answer is:")
    # codi: how the checkpoint was trained to read a question (Cywiński et al.'s
    # remove_eos and answer_only): an eos between the question and the thought token, and
    # "answer-only": the question asks for the bare answer, which follows eot directly
    eos_before_thought: bool | None = None
    # codi: "answer-only" for Cywiński et al.'s answer-only checkpoints (see above)
    prompt: Literal["codi", "answer-only"] | None = None
    # the weights' dtype; float64 also merges LoRA in float64 (exact comparisons)
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    device: str = "cpu"  # cpu, cuda or cuda:N

    @field_validator("device")
    @classmethod
    def _runnable_device(cls, device: str) -> str:
        if not DEVICE.fullmatch(device):
            raise ValueError(
                f"{device!r} is not a device nnpatch runs on; use 'cpu', 'cuda' or 'cuda:N'"
            )
        return device

    @model_validator(mode="before")
    @classmethod
    def _known_release(cls, data: object) -> object:
        """A checkpoint that is a known release's hub id brings its kind, base and settings
        (the recipe's own fields win); a release nnpatch cannot load yet is said so."""
        if not isinstance(data, dict) or data.get("preset") is not None:
            return data
        checkpoint = data.get("checkpoint")
        release = RELEASES.get(checkpoint) if isinstance(checkpoint, str) else None
        if release is None:
            return _recognised_kind(data)
        if release.kind is None:
            raise ValueError(
                f"{checkpoint} is a {release.family} release, which this nnpatch cannot load "
                f"yet (it needs {release.not_yet}); `nnpatch models` lists what loads"
            )
        if data.get("kind", release.kind) != release.kind:
            raise ValueError(
                f"{checkpoint} is a {release.kind!r} release, not {data['kind']!r}; remove "
                "model.kind (the release sets it)"
            )
        return {**release.recipe_fields(), **data}

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if self.preset is not None and self.kind is not None:
            raise ValueError("set either preset or kind (with checkpoint and base), not both")
        if self.preset is None and self.kind is None:
            raise ValueError(
                f"names no model; set model.preset (one of {', '.join(PRESETS)}), "
                "model.kind with its checkpoint, or a checkpoint `nnpatch models` lists"
            )
        return self


def _recognised_kind(data: dict) -> dict:
    """A local checkpoint folder named without a kind: the kind its files show, when only
    one kind's release layout fits them."""
    folder = as_path(data.get("checkpoint")) if "kind" not in data else None
    if folder is None:
        return data
    kinds = recognise(folder)
    if len(kinds) == 1:
        return {**data, "kind": kinds[0]}
    which = f"its files fit {' and '.join(kinds)}" if kinds else "no known layout fits its files"
    raise ValueError(
        f"{folder}: {which}; set model.kind (one of {', '.join(KINDS)}) and model.base"
    )


PRESET_FIELDS = ("num_thoughts", "answer_prefix")  # what a preset's builder takes
# model fields that mean something only for some kinds (each kind lists its own); elsewhere
# they would be ignored
KIND_FIELDS = {
    name: tuple(k for k, kind in KINDS.items() if name in kind.fields)
    + (("preset",) if name in PRESET_FIELDS else ())
    for name in sorted({f for kind in KINDS.values() for f in kind.fields})
}


class DataSection(Section):
    """The clean/corrupted pairs."""

    # a JSONL file, a built-in set, or a generator ("gsm8k")
    pairs: PathText = Field(json_schema_extra={"examples": [*BUILTIN_SETS, *GENERATORS]})
    source: PathText | None = None  # the generator's input file (gsm8k: a GSM8K JSONL file)
    seed: Seed = 0  # the generator's seed
    span_markers: tuple[Text, Text] = ("[[", "]]")  # causal_lm: the patched span in each prompt
    limit: Int | None = Field(default=None, ge=1)  # the first N pairs (kept ones, with a filter)

    @field_validator("span_markers")
    @classmethod
    def _distinct_markers(cls, markers: tuple[str, str]) -> tuple[str, str]:
        opening, closing = markers
        if opening in closing or closing in opening:
            raise ValueError(
                f"the opening and closing markers {opening!r} and {closing!r} overlap, so a "
                "span's end cannot be told from its start; use two different markers such as "
                '["[[", "]]"]'
            )
        return markers

    # both-correct: keep pairs the model answers right on both sides (greedy, real loop)
    filter: Literal["none", "both-correct"] = "none"


# the [patch] table: one section per mode, each declared by its mode's module
Patch = Annotated[Union[SECTIONS], Field(discriminator="mode")]  # noqa: UP007


KNOWN_METRICS = (*METRICS, *DECODED)


class MetricsSection(Section):
    """What each patched row measures."""

    # logit metrics (teacher-forced at the answer position), and the decoded answer's:
    # `answer` (the text written greedily after the patched thoughts), `correct` (it gives
    # the clean answer), `gives_corrupted` (it gives the corrupted one)
    names: list[Annotated[str, Field(json_schema_extra={"examples": list(KNOWN_METRICS)})]] = Field(
        default_factory=lambda: list(METRICS), min_length=1
    )
    # the most tokens a decoded answer may have (eos included); a longer one is cut there
    answer_tokens: Annotated[Int, Field(ge=1, le=512)] = 24

    @field_validator("names")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in KNOWN_METRICS:
                close = difflib.get_close_matches(name, list(KNOWN_METRICS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown metric {name!r}{hint}; known: {', '.join(KNOWN_METRICS)}"
                )
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(f"metric {twice!r} is listed twice; list each once")
        if not numeric(names):
            raise ValueError("`answer` alone is text; add `correct` to have a number per row")
        return names

    @property
    def numeric(self) -> list[str]:
        """The metrics with a number per row: the results' metric columns."""
        return numeric(self.names)

    @property
    def decode_tokens(self) -> int:
        """Answer tokens each row decodes (0: no metric reads a decoded answer)."""
        return self.answer_tokens if decodes(self.names) else 0

    @property
    def shard_width(self) -> int:
        """Values per row as a trace returns them: logit metrics, then answer token ids."""
        return len(scored(self.names)) + self.decode_tokens


class WandbSection(Section):
    """One Weights & Biases run per nnpatch run."""

    project: Text  # the W&B project
    entity: Text | None = None  # the W&B entity (team or user); unset: your default
    # offline: files in the run folder's wandb/, `wandb sync` uploads them later
    mode: Literal["online", "offline"] = "online"


class RunSection(Section):
    """How the run runs: batches, memory, outputs, remote execution."""

    # patched rows per traced forward; "auto": sized from a measured peak per row
    batch_size: Annotated[Int, Field(ge=1, le=65536)] | Literal["auto"] = "auto"
    # the memory budget "auto" fills, e.g. "40GiB" (default: 90% of the free GPU memory,
    # half the machine's available memory on the CPU)
    max_memory: int | str | None = None
    output: PathText = "outputs"  # where run folders go: <output>/<name>/<time>_<id>/
    seed: Seed = 0  # seeds the controls' derangement, random sources and bootstraps
    # full: report.html and every chart as HTML and PNG; html: no PNGs; none: tables only
    # (`nnpatch report RUN_DIR` draws the report later)
    report: Literal["full", "html", "none"] = "full"
    # the largest export a run may write (mode record), e.g. "2GiB"; checked before it runs
    max_export: int | str = "2GiB"
    # the most patched rows a run may plan (all pairs, combinations and controls); a plan
    # over it is refused before anything runs, with its count
    max_rows: Int = Field(default=1_000_000, ge=1)
    # one Weights & Biases run per nnpatch run (pip install 'nnpatch[wandb]')
    wandb: WandbSection | None = None
    # true: every traced forward runs on NDIF; "local": serialised as for NDIF, run here
    remote: bool | Literal["local"] = False
    # remote = true: the longest wait for one request's answer, in seconds (queue included)
    remote_timeout: Float = Field(default=900.0, gt=0)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _rows_or_auto(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value  # the range is checked by the field's own bounds
        raise ValueError('write a number of rows (1 to 65536) or "auto"')

    @field_validator("max_export", "max_memory")
    @classmethod
    def _a_size(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("remote", mode="before")
    @classmethod
    def _remote_choice(cls, value: object) -> object:
        if value is not True and value is not False and value != "local":
            raise ValueError("use true, false or 'local'")
        return value


class StatsSection(Section):
    """The statistics stage."""

    # the false discovery rate `differs_from_control_fdr` controls (Benjamini-Hochberg,
    # over a run's cells of one metric)
    fdr: Float = Field(default=0.05, gt=0, lt=1)


class Recipe(Section):
    """A recipe file's top level: its name and tables."""

    # the run's name: run folders go to <run.output>/<name>/
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    model: ModelSection  # [model]: see below
    data: DataSection  # [data]
    patch: Patch  # [patch]: its fields depend on patch.mode (below)
    metrics: MetricsSection = MetricsSection()  # [metrics]
    run: RunSection = RunSection()  # [run]
    stats: StatsSection = StatsSection()  # [stats]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem is a one-line `RecipeError`."""
    return read_recipe(path, overrides)[0]


def read_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, bytes]:
    """The validated recipe and the file's bytes as read (a run folder keeps them verbatim)."""
    path = Path(path)
    data = _read_bytes(path)
    raw = _parse(data, path)
    for item in overrides:
        apply_override(raw, item, path)
    return validate_recipe(raw, path), data


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise RecipeError(path, "(file)", "is a folder, not a recipe file", "give a .toml file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(path, "(file)", "no such recipe file", "check the path") from None
    except OSError as err:
        raise RecipeError(path, "(file)", f"cannot read it ({err.strerror})") from None


def _parse(data: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(path, "(file)", "not UTF-8 text", "save the recipe as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(path, "(toml)", f"malformed TOML: {err}", "fix the syntax") from None


def _read_raw(path: Path) -> dict[str, Any]:
    return _parse(_read_bytes(path), path)


RECORDED = ("site", "layers", "positions")  # what `nnpatch record` keeps of a [patch] table


def record_override(path: str | Path) -> str:
    """The `--set` that turns a recipe into a record run of its own cells: its [patch] table
    replaced by mode "record" with the same site, layers and positions (kept in the
    manifest's overrides, so --resume rebuilds the same run)."""
    raw = _read_raw(Path(path))
    patch = raw.get("patch") if isinstance(raw.get("patch"), dict) else {}
    kept = {"mode": "record", **{k: patch[k] for k in RECORDED if k in patch}}
    return "patch={" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in kept.items()) + "}"


def validate_recipe(raw: dict[str, Any], path: str | Path = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        first = _most_specific(err.errors())
        field = _dotted(first["loc"]) or "(top)"
        problem = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
            fix = (
                "remove it or check its spelling against the recipe reference "
                "(docs/reference/recipe.md)"
            )
        elif first["type"] in ("missing", "union_tag_not_found"):
            field = f"{field}.mode" if first["type"] == "union_tag_not_found" else field
            problem, fix = "Field required", "add it"
        elif first["type"] == "union_tag_invalid":
            field = f"{field}.mode"
            problem = f"unknown mode {first['ctx']['tag']!r}"
            fix = f"use one of {first['ctx']['expected_tags']}"
        else:
            fix = f"got {first.get('input')!r}"
        raise RecipeError(path, field, problem, fix) from None
    _check_applicable(recipe, path)
    MODES[recipe.patch.mode].check_fields(recipe.patch, path)
    return recipe


def _most_specific(errors: list[dict]) -> dict:
    """The error to report for the first field that failed. A union such as `"all" | [0, 1]`
    fails in each branch; the deepest branch (inside the list) says what is wrong, and
    among those, the branch of the input's own kind (a string: the named positions)."""
    field = _dotted(errors[0]["loc"])
    same = [e for e in errors if _dotted(e["loc"]) == field]

    def fit(error: dict) -> tuple[int, bool]:
        textual = isinstance(error.get("input"), str)
        return len(error["loc"]), textual == (error["type"] == "literal_error")

    return max(same, key=fit)


def _check_applicable(recipe: Recipe, path: str | Path) -> None:
    """A field that would be ignored (for this model kind, or this batch size) is an error,
    not silence."""
    if recipe.run.max_memory is not None and recipe.run.batch_size != "auto":
        raise RecipeError(
            path,
            "run.max_memory",
            f'applies only to batch_size = "auto" (batch_size is {recipe.run.batch_size})',
            'remove it, or set run.batch_size = "auto"',
        )
    section = recipe.model
    kind = section.kind or ("preset" if section.preset is not None else None)
    for name in sorted(section.model_fields_set & set(KIND_FIELDS)):
        if kind is not None and kind not in KIND_FIELDS[name]:
            where = f"preset {section.preset!r}" if kind == "preset" else f"kind {kind!r}"
            kinds = ", ".join(repr(k) for k in KIND_FIELDS[name] if k != "preset")
            extra = " and presets" if "preset" in KIND_FIELDS[name] else ""
            raise RecipeError(
                path,
                f"model.{name}",
                f"does not apply to {where} (only to kind {kinds}{extra})",
                "remove it",
            )


def _dotted(loc: tuple) -> str:
    """A pydantic error location as a recipe field, without union branch tags.

    Pydantic puts the chosen branch into locations: the patch mode after `patch`
    (`patch.sets.positions`) and type names for plain unions (`list[int]`, `int`).
    """
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "patch" and parts[1] in MODES:
        del parts[1]
    tags = ("int", "str", "bool", "float", "constrained-int")
    return ".".join(p for p in parts if "[" not in p and p not in tags and not p.isdigit())


def apply_override(raw: dict[str, Any], item: str, path: str | Path) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as TOML, else taken as text."""
    if "=" not in item:
        raise RecipeError(path, "--set", f"{item!r} has no '='", "write --set dotted.key=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(path, "--set", f"bad key {key!r}", "write --set dotted.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(path, key, f"{part!r} is not a table", "override a leaf key")
        node = child
    node[parts[-1]] = value
