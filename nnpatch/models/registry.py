"""Known continuous-thought releases by hub id: `model.checkpoint = "<hub id>"` alone names
the loader, the base model and the settings the authors ran it with (each still overridable
in the recipe). Facts are from the authors' training and test scripts (see docs/models.md's
table of families); releases whose family nnpatch cannot load yet are listed with why, so a
recipe naming one is told so in one line instead of failing on the files.

The module holds data and its listing (`nnpatch models`), no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_1B = "meta-llama/Llama-3.2-1B-Instruct"
GATED = "gated on the hub: accept Meta's licence for the base, then download it"


@dataclass(frozen=True)
class Release:
    hub_id: str
    family: str
    kind: str | None  # the loader (model.kind); None: this nnpatch cannot load it yet
    base: str
    size: str
    num_thoughts: int | None
    datasets: str
    prj_dim: int | None = None
    lora_r: int | None = None
    lora_alpha: float | None = None
    also: str = ""  # what else must be downloaded or known
    not_yet: str = ""  # for kind None: what loading it needs
    eos_before_thought: bool | None = None
    prompt: str | None = None
    projection: bool | None = None
    thought_tokens: str | None = None

    def recipe_fields(self) -> dict:
        """The [model] fields the release sets, for a recipe that names only its id."""
        fields = {
            "kind": self.kind,
            "base": self.base,
            "num_thoughts": self.num_thoughts,
            "prj_dim": self.prj_dim,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "eos_before_thought": self.eos_before_thought,
            "prompt": self.prompt,
            "projection": self.projection,
            "thought_tokens": self.thought_tokens,
        }
        return {k: v for k, v in fields.items() if v is not None}


def _codi(hub_id, family, base, size, prj_dim, also="", datasets="GSM8K-Aug") -> Release:
    return Release(hub_id, family, "codi", base, size, 6, datasets, prj_dim, 128, 32, also)


def _cywinski(hub_id, base, size, prj_dim, also: str) -> Release:
    family = "CODI (Cywiński et al.)" if "qwen3" not in hub_id else "CODI (cds-jb, on Qwen3)"
    datasets = "GSM8K-Aug-NL, CommonsenseQA"
    return Release(
        hub_id,
        family,
        "codi",
        base,
        size,
        6,
        datasets,
        prj_dim,
        128,
        32,
        also,
        eos_before_thought=True,
        prompt="answer-only",
    )


def _dilgren() -> list[Release]:
    """Dilgren & Wiegreffe (2026): GPT-2 and Llama-3.2-1B-Instruct trained with the
    unchanged CODI and Coconut code on three datasets, 6 latents each (their GPT-2 GSM8K
    CODI is zhenyi4's own release, zen-E/CODI-gpt2, listed above), and "multimode" variants
    whose control tokens choose direct, verbalized or latent answering: read in latent mode,
    with <|eot_id|> (Llama's eos) after the question on Llama."""
    bases = {"gpt2": ("gpt2", "124M", 768), "llama32-1b": (LLAMA_1B, "1B", 2048)}
    names = {"gsm8k": "GSM8K-Aug", "prosqa": "ProsQA", "prontoqa": "ProntoQA"}
    releases = []
    for short, (base, size, prj_dim) in bases.items():
        also = GATED if base == LLAMA_1B else ""
        for data, dataset in names.items():
            if (short, data) != ("gpt2", "gsm8k"):
                releases.append(
                    _codi(
                        f"connordilgren/{short}-{data}-codi",
                        "CODI (Dilgren & Wiegreffe)",
                        base,
                        size,
                        prj_dim,
                        also,
                        dataset,
                    )
                )
            releases.append(
                Release(
                    f"connordilgren/{short}-{data}-coconut",
                    "Coconut (Dilgren & Wiegreffe)",
                    "coconut",
                    base,
                    size,
                    6,
                    dataset,
                    also=also,
                )
            )
            multimode = {"thought_tokens": "multimode", "eos_before_thought": base == LLAMA_1B}
            releases.append(
                Release(
                    f"connordilgren/{short}-{data}-multimode-codi",
                    "multimode CODI (Dilgren & Wiegreffe)",
                    "codi",
                    base,
                    size,
                    6,
                    dataset,
                    prj_dim,
                    128,
                    32,
                    also,
                    prompt="codi",
                    **multimode,
                )
            )
            releases.append(
                Release(
                    f"connordilgren/{short}-{data}-multimode-coconut",
                    "multimode Coconut (Dilgren & Wiegreffe)",
                    "coconut",
                    base,
                    size,
                    6,
                    dataset,
                    also=also,
                    **multimode,
                )
            )
    return releases


RELEASES: dict[str, Release] = {
    r.hub_id: r
    for r in (
        _codi("zen-E/CODI-gpt2", "CODI (zhenyi4)", "gpt2", "124M", 768),
        _codi("zen-E/CODI-llama3.2-1b-Instruct", "CODI (zhenyi4)", LLAMA_1B, "1B", 2048, GATED),
        _codi("internlm/SIM_COT-GPT2-CODI", "SIM-CoT (CODI)", "gpt2", "124M", 768),
        _codi("internlm/SIM_COT-LLaMA3-CODI-1B", "SIM-CoT (CODI)", LLAMA_1B, "1B", 2048, GATED),
        _codi(
            "internlm/SIM_COT-LLaMA3-CODI-3B",
            "SIM-CoT (CODI)",
            "meta-llama/Llama-3.2-3B-Instruct",
            "3B",
            3072,
            f"{GATED}; its file names are unverified (one file or shards with an index both load)",
        ),
        _codi(
            "internlm/SIM_COT-LLaMA3-CODI-8B",
            "SIM-CoT (CODI)",
            "meta-llama/Llama-3.1-8B-Instruct",
            "8B",
            4096,
            f"{GATED}; its file names are unverified (one file or shards with an index both load)",
        ),
        Release(
            "internlm/SIM_COT-GPT2-Coconut",
            "SIM-CoT (Coconut)",
            "coconut",
            "gpt2",
            "124M",
            10,
            "GSM8K-Aug",
        ),
        # Cywiński et al.: answer-only, trained with remove_eos False (an eos before the
        # thought token) and its markers named in the tokenizer it ships
        _cywinski("bcywinski/codi_llama1b-answer_only", LLAMA_1B, "1B", 2048, GATED),
        # the earlier re-training: remove_eos True, "The answer is: X", CODI's bare ids
        Release(
            "bcywinski/codi_llama1b_gsm8k-strategyqa-commonsense",
            "CODI (Cywiński et al.)",
            "codi",
            LLAMA_1B,
            "1B",
            6,
            "GSM8K-Aug-NL, CommonsenseQA, StrategyQA",
            2048,
            128,
            32,
            GATED,
            eos_before_thought=False,
            prompt="codi",
        ),
        # no training config in the authors' repository matches this one: its settings are
        # those of their example that loads it (e9d9c54 simple_example.py)
        Release(
            "bcywinski/llama3b_gsm8k-strategyqa-commonsense",
            "CODI (Cywiński et al.)",
            "codi",
            "meta-llama/Llama-3.2-3B-Instruct",
            "3B",
            6,
            "GSM8K-Aug-NL, CommonsenseQA, StrategyQA",
            None,
            128,
            16,
            f"{GATED}; no projection, alpha 16 and an eos before the thought are taken from "
            "the authors' example (no training config matches this release)",
            eos_before_thought=True,
            prompt="codi",
            projection=False,
        ),
        _cywinski(
            "cds-jb/codi_qwen3-8b-answer_only",
            "Qwen/Qwen3-8B",
            "8B",
            4096,
            "its eos before the thought and answer-only prompt are inferred (its card and a "
            "third-party loader); override model.eos_before_thought / model.prompt if needed",
        ),
        Release(
            "whyNLP/pccot-gpt2",
            "PCCoT",
            "pccot",
            "gpt2",
            "124M",
            None,
            "GSM8K-Aug",
            also="slots, iterations and LoRA come from its config.json and pccot_args.json",
        ),
        Release(
            "AlbertTan/CoLaR",
            "CoLaR",
            "colar",
            LLAMA_1B,
            "1B",
            None,
            "GSM8K-Aug",
            also=f"{GATED}; latents per question are the model's own (policy mean, argmax)",
        ),
        *_dilgren(),
    )
}


def listing() -> list[str]:
    """`nnpatch models`: one aligned line per release (what loads it, what else it needs)."""
    header = ("hub id", "family", "base", "size", "K", "datasets", "loads", "also")
    rows = [
        (
            r.hub_id,
            r.family,
            r.base,
            r.size,
            "?" if r.num_thoughts is None else str(r.num_thoughts),
            r.datasets,
            f"yes (kind {r.kind})" if r.kind else f"not yet: needs {r.not_yet}",
            r.also or "-",
        )
        for r in RELEASES.values()
    ]
    # the last two columns are free text of any length: only the others are aligned
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 2)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), *row[-2:]]).rstrip()
        for row in [header, *rows]
    ]
