#!/usr/bin/env bash
# GPU readiness: the paper's encoder (DeepLabv3-ResNet101 body, output stride 8, 256 x 256 slices)
# trains for a few hundred episodes with bfloat16 autocast; prints iterations per second and peak
# GPU memory as one JSON line. Needs a CUDA machine; runs in well under 5 minutes on a modern GPU.
#   bash benchmarks/gpu.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS="${1:-300}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" - "$ITERATIONS" <<'PY'
import json
import sys
import time

import torch

from japc.networks.factory import build_segmenter
from japc.pipeline.config import ModelConfig
from japc.pipeline.devices import autocast

if not torch.cuda.is_available():
    print(json.dumps({"benchmark": "gpu", "error": "CUDA is not available on this machine"}))
    sys.exit(1)
iterations = int(sys.argv[1])
device = torch.device("cuda")
torch.manual_seed(0)
model = build_segmenter(ModelConfig(encoder="deeplabv3_resnet101", calibration="attention")).to(device).train()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
size, raters = 256, 3
support = torch.rand(1, 1, size, size, device=device)
query = torch.rand(1, 1, size, size, device=device)
masks = torch.zeros(1, raters, size, size, device=device)
for r in range(raters):
    masks[:, r, 64 - 2 * r : 160 + 2 * r, 80 - 2 * r : 176 + 2 * r] = 1.0
weights = torch.tensor([0.05, 1.0], device=device)


def step() -> float:
    with autocast(device, True):
        output = model.run_episode(support, masks, query)
        logits = output.logits.float()
        loss = sum(torch.nn.functional.cross_entropy(logits[:, r], masks[:, r].long(), weight=weights) for r in range(raters)) / raters
        loss = loss + model.alignment_loss(output, masks) + output.calibration_loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss)


for _ in range(10):
    step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
for _ in range(iterations):
    last = step()
torch.cuda.synchronize()
seconds = time.perf_counter() - started
print(json.dumps({
    "benchmark": "gpu",
    "device": torch.cuda.get_device_name(0),
    "encoder": "deeplabv3_resnet101",
    "size": size,
    "raters": raters,
    "amp": "bfloat16",
    "iterations": iterations,
    "iterations_per_second": round(iterations / seconds, 2),
    "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    "last_loss": round(last, 4),
    "torch": torch.__version__,
}))
PY
