"""What the golden scripts share: tiny bases, the questions, capture and the golden files.

Runs in the authors' environments (transformers 4.46 / 4.52), never in nnpatch's, and
imports nothing from nnpatch: the tiny tokenizer is built here with the `tokenizers` library.

Nothing in this file computes a golden value. The values come from the authors' own
classes and loops, imported from their checkouts; this file only builds the inputs those
loops read (a base model folder, questions) and writes down what they produced.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from pathlib import Path

import torch

# Q1 and Q2 have the same token count (so CODI's test.py, which cannot run one question
# alone, runs them as an unpadded batch); Q3 is shorter once CODI strips its stray spaces
# (left-padded beside Q1); Q4 is shorter as Coconut reads it (the raw text, spaces kept).
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
    "Ann had 9 pens and gave 5 away. How many pens does Ann have left?",
    "  Sam has 8 coins.  He loses 2. How many are left? ",
    "Mia has 5 eggs. How many eggs are left?",
]
ANSWERS = ["7", "4", "6", "5"]

SPECIALS = ["<unk>", "<bos>", "<eos>", "\n"]
DIGITS = list("0123456789")
PUNCTUATION = list(".,?:!;$'-+*/=()<>#")
WORDS = """
Tom has apples and buys more How many does have now Ann had pens gave away left Sam coins
He loses are Output only the answer nothing else The is << a of to Mia eggs
""".split()

# Tiny configs: d = 32, 2 layers, 4 heads; init 0.1 so that answers differ clearly.
HIDDEN = 32
LAYERS = 2
HEADS = 4
INIT = 0.1


def build_tokenizer(family: str):
    """GPT-2: a byte-level BPE trained on the questions, saved as GPT-2's own files
    (vocab.json, merges.txt; class GPT2Tokenizer, whose slow version CODI's test.py loads),
    eos = bos = <|endoftext|>, no BOS added. Llama: a word-level tokenizer (spaces split,
    newline kept as a token, punctuation and single digits split) that prepends <bos>, its
    class PreTrainedTokenizerFast as Llama-3's. Neither has a pad: the authors add [PAD]."""
    if family == "gpt2":
        return _byte_level_bpe()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in SPECIALS + DIGITS + PUNCTUATION + WORDS:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _byte_level_bpe():
    import tempfile

    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    corpus = [*QUESTIONS, *ANSWERS, "The answer is: 12", "### 7\n", *WORDS]
    corpus += [f" {w}" for w in WORDS] + [f"{a} {b}" for a in DIGITS for b in DIGITS]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        2 * corpus,
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        end = "<|endoftext|>"
        return GPT2TokenizerFast(
            vocab_file=f"{tmp}/vocab.json",
            merges_file=f"{tmp}/merges.txt",
            bos_token=end,
            eos_token=end,
            unk_token=end,
        )


def save_tokenizer(tokenizer, folder: Path, family: str) -> None:
    """Save as the real base ships it: Llama-3's tokenizer_config names
    PreTrainedTokenizerFast (transformers writes the slow name, which has no vocabulary)."""
    tokenizer.save_pretrained(folder)
    if family != "gpt2":
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def base_config(family: str, tokenizer):
    """A tiny GPT-2 or Llama config over the tokenizer's vocabulary, embeddings tied (as
    GPT-2 and Llama-3.2-1B tie them)."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=512,  # their decode loop runs up to 256 tokens
            initializer_range=INIT,
            tie_word_embeddings=True,
            **ids,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=INIT,
        tie_word_embeddings=True,
        **ids,
    )


def write_base(folder: Path, family: str, seed: int, weights: bool) -> None:
    """A base model folder: config.json and tokenizer files, plus random weights (seeded)
    when `weights` (the authors' code loads its base with from_pretrained; nnpatch reads
    only the config and tokenizer)."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(family)
    config = base_config(family, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, folder, family)
    if weights:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
    else:
        config.save_pretrained(folder)


def gentle_lora(module: torch.nn.Module, seed: int, scale: float = 0.05) -> int:
    """LoRA B matrices (zero after init) set to `scale` x standard normal, so the adapters
    change the model (as after training) without making the tiny model chaotic."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_((scale * noise).to(param.dtype))
                count += 1
    if count == 0:
        raise RuntimeError("no LoRA B matrices found")
    return count


def versions() -> dict[str, str]:
    import tokenizers
    import transformers

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    for name in ("peft", "accelerate", "datasets", "safetensors"):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    return found


def checkout_commit(checkout: Path, given: str | None) -> str:
    """The checkout's commit: `git rev-parse HEAD` when it is a clone, else `given`."""
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        head = out.stdout.strip()
        if given and given != head:
            raise SystemExit(f"{checkout} is at {head}, not the --commit {given}")
        return head
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not given:
            raise SystemExit(f"{checkout} is not a git clone: pass --commit") from None
        return given


def write_golden(folder: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """golden.json (what was run, ids, tokens) and golden.safetensors (float64 values)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to(torch.float64).contiguous() for k, v in tensors.items()},
        str(folder / "golden.safetensors"),
    )
    (folder / "golden.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


CUDA = ("cuda",)


def _cpu(value):
    if isinstance(value, str) and value.startswith(CUDA):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    return value


@contextlib.contextmanager
def cuda_on_cpu_float64(wrapper_names: tuple[str, ...]):
    """Run code written for a GPU on this CPU, in float64. Documented monkeypatches:

    - every device "cuda" given to torch.tensor, torch.zeros, Tensor.to and Module.to
      becomes "cpu" (the authors' loops hard-code "cuda");
    - Module.to(torch.bfloat16 / torch.float16) called on the authors' wrapper classes
      (`wrapper_names`) becomes Module.to(torch.float64): their test loop casts the loaded
      model to bf16 right before the loop; the golden values are float64.
    """
    originals = {
        "tensor": torch.tensor,
        "zeros": torch.zeros,
        "tensor_to": torch.Tensor.to,
        "module_to": torch.nn.Module.to,
    }

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["tensor"](*args, **kwargs)

    def zeros(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["zeros"](*args, **kwargs)

    def tensor_to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["tensor_to"](self, *args, **kwargs)

    def module_to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        if type(self).__name__ in wrapper_names:
            half = (torch.bfloat16, torch.float16)
            args = tuple(torch.float64 if a in half else a for a in args)
            if kwargs.get("dtype") in half:
                kwargs["dtype"] = torch.float64
        return originals["module_to"](self, *args, **kwargs)

    torch.tensor, torch.zeros = tensor, zeros
    torch.Tensor.to, torch.nn.Module.to = tensor_to, module_to
    try:
        yield
    finally:
        torch.tensor, torch.zeros = originals["tensor"], originals["zeros"]
        torch.Tensor.to = originals["tensor_to"]
        torch.nn.Module.to = originals["module_to"]


class CallRecorder:
    """Forward hooks that note, for each call of a causal LM, what went in and the logits at
    the last position (observation only: the hooks return nothing)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.handles: list = []

    def attach(self, lm: torch.nn.Module) -> None:
        self.handles.append(lm.register_forward_hook(self._hook, with_kwargs=True))

    def _hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        self.calls.append(
            {
                "input_ids": None if ids is None else ids.detach().clone(),
                "inputs_embeds": None if embeds is None else embeds.detach().clone(),
                "attention_mask": None if mask is None else mask.detach().clone(),
                "logits": output.logits[:, -1].detach().clone(),
            }
        )

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def unpadded(ids: torch.Tensor, mask: torch.Tensor | None) -> list[int]:
    """One row's real tokens (mask 1), as a list."""
    if mask is None:
        return [int(t) for t in ids]
    return [int(t) for t, m in zip(ids, mask, strict=True) if int(m) == 1]
