"""Hypothesis strategies drawn from the recipe's own JSON schema (`Recipe.model_json_schema`):
for any field, values it accepts (boundaries included) and values of every wrong kind (other
types, non-finite numbers, out-of-range numbers, empty, over-long, unordered and duplicate
lists, unknown keys). Nothing here names a field: a field added to the schema is drawn
without editing this file."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

OMIT = object()  # a key left out of its table (TOML has no null)
TOML_INT = (-(2**63), 2**63 - 1)
# text that stays readable in a one-line error: printable, no surrogates
TEXT_CHARS = st.characters(blacklist_categories=("Cs", "Cc"))
TEXT = st.text(TEXT_CHARS, max_size=12)
# paths stay below the example's folder: relative names, a file where a folder is wanted
# and a folder where a file is, "" and names of things that are not there
PATHS = st.sampled_from(["out", "sub/out", "a-file", "a-folder", "missing/x.jsonl", ".", "x.jsonl"])


class Schema:
    """The recipe's JSON schema with references resolved."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.defs = schema.get("$defs", {})

    def node(self, node: dict) -> dict:
        while "$ref" in node:
            node = self.defs[node["$ref"].rsplit("/", 1)[1]]
        return node

    def properties(self, node: dict) -> dict[str, dict]:
        return {k: self.node(v) for k, v in self.node(node).get("properties", {}).items()}

    def tables(self, node: dict) -> dict[str, dict]:
        """The object-valued properties of `node` (a section may also be null: optional)."""
        found = {}
        for key, child in self.properties(node).items():
            objects = [b for b in self.branches(child) if self.node(b).get("type") == "object"]
            if objects or "oneOf" in child:
                found[key] = child
        return found

    def branches(self, node: dict) -> list[dict]:
        """A union's branches (a field's `examples` and `format` carried into each)."""
        node = self.node(node)
        shared = {k: node[k] for k in ("examples", "format") if k in node}
        found = [self.node(b) for b in node.get("anyOf", node.get("oneOf", []))]
        return [{**shared, **b} if b.get("type") == "string" else b for b in found] or [node]

    def variants(self, node: dict) -> dict[str, dict]:
        """A discriminated union's branches by tag (the [patch] table's modes)."""
        node = self.node(node)
        mapping = node.get("discriminator", {}).get("mapping", {})
        return {tag: self.node({"$ref": ref}) for tag, ref in mapping.items()}

    # ---- values the schema accepts -------------------------------------------------------

    def valid(self, node: dict) -> st.SearchStrategy:
        node = self.node(node)
        if "anyOf" in node or "oneOf" in node:
            return st.one_of([self.valid(b) for b in self.branches(node)])
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kind = node.get("type")
        if kind == "null":
            return st.just(OMIT)
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low, high = _int_bounds(node)
            start = low if low > TOML_INT[0] else -1  # unbounded below: around zero
            small = st.integers(start, min(high, start + 6))
            return st.one_of(small, st.sampled_from(sorted({low, high})))
        if kind == "number":
            low, high, open_low, open_high = _float_bounds(node)
            return st.floats(
                low, high, exclude_min=open_low, exclude_max=open_high, allow_nan=False
            ).filter(math.isfinite)
        if kind == "string":
            return self._text(node)
        if kind == "array":
            return self._array(node, self.valid)
        if kind == "object":
            return self.table(node, lambda child: self.valid(child))
        return st.nothing()

    def _text(self, node: dict) -> st.SearchStrategy:
        options = []
        if node.get("examples"):
            options.append(st.sampled_from(node["examples"]))
        if node.get("format") == "path":  # only names below the example's folder
            return st.one_of([*options, PATHS])
        if node.get("pattern") is not None:
            options.append(st.from_regex(node["pattern"], fullmatch=True).filter(_printable))
        else:
            options.append(TEXT)
        low, high = node.get("minLength", 0), node.get("maxLength", 40)
        if node.get("pattern") is None:  # plain text of the lengths the field takes
            options[-1] = st.text(TEXT_CHARS, min_size=low, max_size=max(low, min(high, 12)))
        return st.one_of(options).filter(lambda s: low <= len(s) <= high)

    def _array(self, node: dict, values) -> st.SearchStrategy:
        if "prefixItems" in node:
            return st.tuples(*[values(self.node(item)) for item in node["prefixItems"]]).map(list)
        low = node.get("minItems", 0)
        high = min(node.get("maxItems", low + 3), low + 3)
        return st.lists(values(self.node(node.get("items", {}))), min_size=low, max_size=high)

    def table(self, node: dict, value) -> st.SearchStrategy:
        """A table of `node`'s required keys and any of its others, each drawn by `value`."""
        node = self.node(node)
        required = set(node.get("required", []))
        keys = list(node.get("properties", {}))

        @st.composite
        def draw(draw):
            out = {}
            for key in keys:
                if key in required or draw(st.booleans()):
                    item = draw(value(node["properties"][key]))
                    if item is not OMIT:
                        out[key] = item
            return out

        return draw()

    # ---- values of every wrong kind ------------------------------------------------------

    def invalid(self, node: dict) -> st.SearchStrategy:
        """A value that is wrong for `node` for at least one of its branches: a union is
        given what no branch should take alone (the schema's own checks decide)."""
        node = self.node(node)
        wrong = [WRONG_TYPES]
        for branch in self.branches(node):
            wrong += self._wrong(branch)
        return st.one_of(wrong)

    def _wrong(self, node: dict) -> list[st.SearchStrategy]:
        kind = node.get("type")
        if "enum" in node or "const" in node:
            return [TEXT.filter(lambda s, n=node: s not in n.get("enum", [n.get("const")]))]
        if kind == "integer":
            low, high = _int_bounds(node)
            # strict integers: 2.0 is refused as 2.5 is
            out = [st.just(math.nan), st.floats(allow_nan=False, allow_infinity=False)]
            if low > TOML_INT[0]:
                out.append(st.integers(TOML_INT[0], low - 1))
            if high < TOML_INT[1]:
                out.append(st.integers(high + 1, TOML_INT[1]))
            return out
        if kind == "number":
            low, high, open_low, open_high = _float_bounds(node)
            out = [st.sampled_from([math.nan, math.inf, -math.inf])]
            if low > -math.inf:
                out.append(st.floats(max_value=low, exclude_max=not open_low, allow_nan=False))
            if high < math.inf:
                out.append(st.floats(min_value=high, exclude_min=not open_high, allow_nan=False))
            return out
        if kind == "string":
            out = []
            if node.get("minLength", 0) > 0:
                out.append(st.just(""))
            if "maxLength" in node:
                out.append(st.text(min_size=node["maxLength"] + 1, max_size=node["maxLength"] + 3))
            return out
        if kind == "array":
            out = [self._array(node, self.invalid)]
            if node.get("minItems", 0) > 0:
                out.append(st.just([]))
            if "maxItems" in node:
                size = node["maxItems"] + 1
                out.append(st.lists(TEXT, min_size=size, max_size=size))
            if "items" in node:  # duplicates and orders: repeated and reversed values
                items = self.valid(self.node(node["items"]))
                out.append(items.map(lambda v: [v, v]))
                out.append(st.lists(items, min_size=2, max_size=4).map(lambda v: v[::-1]))
            return out
        if kind == "object":
            return [st.just({"not_a_field": 1}), self.table(node, self.invalid)]
        return []


WRONG_TYPES = st.one_of(
    st.booleans(),
    st.integers(TOML_INT[0], TOML_INT[1]),
    st.floats(),
    TEXT,
    st.lists(st.integers(-3, 3), max_size=3),
    st.just({"x": 1}),
)


def _printable(text: str) -> bool:
    return text.isprintable()


def _int_bounds(node: dict) -> tuple[int, int]:
    low = node.get("minimum", node.get("exclusiveMinimum", TOML_INT[0] - 1) + 1)
    high = node.get("maximum", node.get("exclusiveMaximum", TOML_INT[1] + 1) - 1)
    return max(low, TOML_INT[0]), min(high, TOML_INT[1])


def _float_bounds(node: dict) -> tuple[float, float, bool, bool]:
    if "exclusiveMinimum" in node:
        low, open_low = node["exclusiveMinimum"], True
    else:
        low, open_low = node.get("minimum", -math.inf), False
    if "exclusiveMaximum" in node:
        high, open_high = node["exclusiveMaximum"], True
    else:
        high, open_high = node.get("maximum", math.inf), False
    return low, high, open_low, open_high


def toml_value(value: Any) -> str:
    """A TOML value's text: inline tables and arrays, nan and inf as TOML writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def _toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def _key(key: str) -> str:
    return (
        key
        if key.replace("_", "").replace("-", "").isalnum() and key.isascii()
        else (_toml_string(key))
    )
