"""`nnpatch.run(recipe, **overrides)`: the whole of `nnpatch run` as one call, for notebooks.

The recipe is a file's path, a TOML text or a `Recipe`. A text or a `Recipe` is kept as
`.nnpatch-recipe-<digest>.toml` in the working directory: the run folder's manifest names
its recipe file (so `nnpatch run --resume` works), and relative paths in it resolve against
the working directory, as a notebook's user expects. Errors are the CLI's, raised.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

from nnpatch.errors import NnpatchError
from nnpatch.recipe import Recipe

RECIPE_FILE = ".nnpatch-recipe-{digest}.toml"


def run(
    recipe: str | Path | Recipe,
    overrides: Mapping[str, object] | None = None,
    *,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **fields: object,
):
    """Run a recipe and return its finished `Run` (tables, charts, a Jupyter view).

    Overrides are dotted keys in `overrides` ({"patch.site": "attn"}) or keywords with
    double underscores (`patch__site="attn"`); values are Python values (lists, numbers,
    text). `limit` and `out` are the CLI's --limit and --out.
    """
    from nnpatch.report.load import load_run
    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare
    from nnpatch.run.progress import progress_bar

    dotted = {**(overrides or {}), **{key.replace("__", "."): v for key, v in fields.items()}}
    items = [f"{key}={toml_literal(value)}" for key, value in dotted.items()]
    prep = prepare(recipe_path(recipe), items, limit, out)
    finished = execute(prep, progress=progress_bar if progress else None)
    for warning in finished.warnings:
        warnings.warn(warning, stacklevel=2)
    return load_run(finished.path)


def recipe_path(recipe: str | Path | Recipe) -> Path:
    """The recipe's file: the path given, or a kept file holding the text or `Recipe`."""
    if isinstance(recipe, Recipe):
        text = toml_text(recipe.model_dump(mode="json", exclude_unset=True, exclude_none=True))
    elif isinstance(recipe, str) and _is_text(recipe):
        text = recipe
    else:
        return Path(recipe)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(RECIPE_FILE.format(digest=digest))
    try:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            from nnpatch.run.folder import write_text

            write_text(path, text)
    except OSError as err:
        raise NnpatchError(
            f"{path.resolve()}: cannot keep the recipe text there ({err.strerror or err}); "
            "run from a writable folder or pass a recipe file"
        ) from None
    return path


def _is_text(recipe: str) -> bool:
    """A TOML text rather than a path: it has a newline, or an "=" and names no file."""
    if "\n" in recipe:
        return True
    try:
        return "=" in recipe and not Path(recipe).is_file()
    except (OSError, ValueError):  # a name no file system takes
        return "=" in recipe


def toml_literal(value: object) -> str:
    """A Python value as a TOML value (what `--set key=VALUE` parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (str, Path)):
        # JSON's escapes are TOML's basic-string escapes; TOML also forbids a raw DEL
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a recipe value")


def toml_text(data: Mapping[str, object]) -> str:
    """A recipe dict as a TOML document: scalars first, then one [table] per section."""
    lines = [f"{_key(k)} = {toml_literal(v)}" for k, v in data.items() if not _table(v)]
    for name, table in data.items():
        if _table(table):
            lines += ["", f"[{_key(name)}]"]
            lines += [f"{_key(k)} = {toml_literal(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _table(value: object) -> bool:
    return isinstance(value, Mapping)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else toml_literal(key)
