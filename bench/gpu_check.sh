#!/usr/bin/env bash
# On a machine with a GPU: the demo study on it and a training/inference speed table, in one command
# (under 10 minutes on one recent GPU); exits non-zero when any step fails. Runs on the CPU too, saying
# "no GPU" and giving the CPU's figures. Run from the project root after `make install`:
#   bench/gpu_check.sh [OUT]        (default OUT: runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu-check}"
PY=.venv/bin/python
CX=.venv/bin/cxrlab
mkdir -p "$OUT"

echo "== machine"
$PY - <<'PY'
from cxrlab.core.device import Capabilities, resolve_policy
caps = Capabilities.detect()
print(f"CUDA devices: {caps.cuda_devices} {caps.cuda_name or '(no GPU)'}; GPU bf16: {caps.cuda_bf16}; "
      f"CPU native bf16: {caps.cpu_bf16}")
for workload in ("train", "infer"):
    p = resolve_policy("auto", "auto", workload=workload, backbone="efficientnet_lite0", capabilities=caps)
    print(f"auto policy for {workload}: {p.device} {p.precision} ({p.reason})")
if not caps.cuda_devices:
    print("no GPU: the figures below are this CPU's")
PY

echo "== the demo study (its runs take the GPU when there is one: device auto)"
$CX demo --out "$OUT/demo"

echo "== training and inference speed"
$PY - "$OUT" <<'PY'
import json, sys, time
import torch
from cxrlab.core.device import resolve_policy, use_policy
from cxrlab.models import InferenceModel, create_classifier

out = sys.argv[1]
rows = []
for precision in ("32", "auto"):
    policy = resolve_policy("auto", precision, workload="train", backbone="efficientnet_lite0")
    model = create_classifier("efficientnet_lite0", 3).to(policy.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    spec = model.spec  # inputs normalised as the model expects
    mean, std = (torch.tensor(v, device=policy.device).view(1, -1, 1, 1) for v in (spec.mean, spec.std))
    x = ((torch.rand(32, 3, 224, 224, device=policy.device) - mean) / std).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (32,), device=policy.device)
    dtype = policy.autocast_dtype
    def step():
        with torch.autocast(policy.device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    for _ in range(3):
        step()
    if policy.device_type == "cuda":
        torch.cuda.synchronize()
    start, steps = time.perf_counter(), 10
    for _ in range(steps):
        step()
    if policy.device_type == "cuda":
        torch.cuda.synchronize()
    train = steps * 32 / (time.perf_counter() - start)
    inference = resolve_policy("auto", precision)
    with use_policy(inference):
        runner = InferenceModel(create_classifier("efficientnet_lite0", 3))
        for _ in range(2):
            runner.logits(x.cpu())
        start = time.perf_counter()
        for _ in range(5):
            runner.logits(x.cpu())
        infer = 5 * 32 / (time.perf_counter() - start)
    rows.append({"asked": precision, "device": policy.device, "train_precision": policy.precision,
                 "train_img_s": round(train, 1), "infer_precision": inference.precision, "infer_img_s": round(infer, 1)})
print("| --precision | device | training (batch 32, 224 px, every block) | img/s | inference (batch 32) | img/s |")
print("|---|---|---|---:|---|---:|")
for r in rows:
    print(f"| {r['asked']} | {r['device']} | {r['train_precision']} | {r['train_img_s']} | {r['infer_precision']} | "
          f"{r['infer_img_s']} |")
json.dump(rows, open(f"{out}/speed.json", "w"), indent=1)
PY
echo "gpu check passed: $OUT"
