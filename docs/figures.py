"""The figures the docs show, each made by running the recipe its page shows (on the embedded
model): `python docs/figures.py` runs them and copies each chart into docs/img/.
tests/test_docs.py checks that every image a page shows is one of these and exists."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# image under docs/img/ -> (the recipe that makes it, the chart's file stem in charts/)
FIGURES = {
    "position-recovery.png": ("recipes/position.toml", "heatmap_recovery"),
    "lens-step-2.png": ("recipes/lens.toml", "lens_step_2_probability"),
    "accuracy-correct-random.png": (
        "recipes/accuracy.toml",
        "heatmap_correct__thought_noise_random",
    ),
    "attention-answer.png": ("recipes/attention.toml", "attention_answer"),
    "eval-by-thoughts.png": ("recipes/eval.toml", "accuracy_by_thoughts"),
}


def run_folder(recipe: str, out: Path) -> Path:
    """Run one recipe (eval's with `nnpatch eval`), charts as PNG; its folder."""
    overrides = [f'run.output="{out}"', 'run.report="full"']
    if recipe.endswith("eval.toml"):
        from nnpatch.evaluate import evaluate

        return evaluate(ROOT / recipe, overrides).path
    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare

    return execute(prepare(ROOT / recipe, overrides)).path


def main() -> None:
    made: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for image, (recipe, stem) in FIGURES.items():
            if recipe not in made:
                made[recipe] = run_folder(recipe, Path(scratch))
            folder = made[recipe]
            chart = next(iter(folder.glob(f"**/{stem}.png")), None)
            if chart is None:
                have = sorted(p.stem for p in folder.glob("**/*.png"))
                sys.exit(f"{recipe}: no chart {stem}.png (it drew {', '.join(have)})")
            shutil.copyfile(chart, ROOT / "docs" / "img" / image)
            print(f"docs/img/{image} <- {recipe} {stem}")


if __name__ == "__main__":
    main()
