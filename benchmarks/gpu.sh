#!/usr/bin/env bash
# The README's GPU figures in one call: sweep.py at tiny shape in float32 (its agreement line
# checks the engine against the per-patch loop on CUDA), then the original experiment's sweep
# (57 pairs x 16 layers x 6 thoughts, llama-1b shape, bfloat16, GSM8K-length questions) at
# several batch sizes (each the median of 3 runs); then attribution's speed-up and the scale
# study (every usable GSM8K pair) at llama-1b shape. Logs go to $OUT or outputs/gpu.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-outputs/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, nnsight; print('torch', torch.__version__,
  'transformers', transformers.__version__, 'nnsight', nnsight.__version__)"
python3 -c "import torch; from nnpatch.models.codi import float32_logits as f
head = torch.nn.Linear(2048, 128256, bias=False, device='cuda', dtype=torch.bfloat16)
x = torch.randn(64, 3, 2048, device='cuda', dtype=torch.bfloat16)
ref = torch.nn.functional.linear(x.double(), head.weight.double())
with torch.no_grad():  # the float32-out matmul has no derivative, so it runs without grad
    got = f(head, x).double()
upcast = torch.nn.functional.linear(x.float(), head.weight.float()).double()
for name, y in (('float32_logits', got), ('float32 upcast', upcast)):
    print(name, 'bfloat16 on CUDA: relative error', ((y - ref).norm() / ref.norm()).item())"
python3 - <<'PY'  # attribution in bfloat16 on CUDA: gradients through the answer logits
import sys, torch
sys.path.insert(0, "benchmarks")
from sweep import build, tiny_arithmetic
from nnpatch.engine.gradients import estimate
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Engine
device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
model = build("tiny", 6, device, torch.bfloat16)
pairs = tiny_arithmetic(count=8)
specs = [PatchSpec(layer, (str(t),)) for layer in range(model.num_layers) for t in range(6)]
engine = Engine(model, "resid", "denoise", ["logit_diff"])
answers = engine.answers(pairs)
base = engine.baselines(pairs, answers, [(s.layer, s.positions[0]) for s in specs], 8)
values = estimate(engine, pairs, answers, base, specs, 8)
print("attribution, bfloat16 on CUDA:", tuple(values.shape), "all finite", bool(values.isfinite().all()))
PY
python3 benchmarks/sweep.py --shape tiny --device cuda --batch-size 64,512 2>&1 |
  grep -v Warning | tee "$out/tiny.txt"
python3 benchmarks/sweep.py --shape llama-1b --device cuda --dtype bfloat16 --pairs 57 \
  --thoughts 6 --question-tokens 64 --batch-size 912,2736,5472 "$@" 2>&1 |
  grep -v Warning | tee "$out/llama-1b.txt"
python3 benchmarks/attribution.py --shape llama-1b --device cuda --dtype bfloat16 --pairs 16 \
  --ig-steps 5 2>&1 | grep -v Warning | head -6 | tee "$out/attribution-llama-1b.txt"
python3 benchmarks/scale.py --shape llama-1b --device cuda --dtype bfloat16 2>&1 |
  grep -v Warning | tee "$out/scale-llama-1b.txt"
