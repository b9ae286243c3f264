"""The package as a whole: recipes are data, model folders never run code, and the runner
and report know no analysis mode by name."""

from __future__ import annotations

import re

from helpers import PACKAGE


def test_recipes_are_data_the_package_never_evaluates_or_imports_by_name():
    """No eval/exec/pickle anywhere in nnpatch, and the only dynamic imports read the
    package's own lazy-attribute tables: a recipe value cannot become code."""
    forbidden = re.compile(r"(?<![.\w])(eval|exec|__import__)\s*\(|pickle\.loads?\(")
    dynamic = re.compile(r"import_module\((?!_LAZY\[name\]|_MODULES\[name\])")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line) or dynamic.search(line)
    ]
    assert not offenders


def test_every_transformers_load_refuses_remote_code():
    """Each from_pretrained / from_config / TransformersModel call in nnpatch passes
    trust_remote_code=False (the folder check refuses auto_map before any of them)."""
    calls = re.compile(r"(from_pretrained|from_config|TransformersModel)\(")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in calls.finditer(text):
            if match.group(1) == "TransformersModel" and "self.module" in text[match.end() :][:20]:
                continue  # wraps a module already built here: nothing is loaded
            call = text[match.end() : text.index(")\n", match.end())]
            if "trust_remote_code=False" not in call:
                line = text[: match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert not offenders


def test_the_stages_and_the_report_never_switch_on_a_mode():
    """`nnpatch.run` and `nnpatch.report` run and report every mode through the Mode
    protocol: the recipe's mode is looked up (`mode_for`) or shown, never compared, and no
    mode-only name ("attribution", "chained") appears in their code."""
    mode = r"""(\.patch\.mode|\["patch"\]\["mode"\])"""
    looked_up = re.compile(rf"{mode}\s*(==|!=|in\b)|(==|!=)\s*\S*{mode}")
    named = re.compile(r"""["'](attribution|chained)["']""")
    offenders = []
    for folder in ("run", "report"):
        for path in (PACKAGE / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if looked_up.search(code) or named.search(code):
                    offenders.append(f"{folder}/{path.name}:{number}: {line.strip()}")
    assert not offenders
