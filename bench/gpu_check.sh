#!/usr/bin/env bash
# Proves the GPU path with the real commands, in under 10 minutes on one recent GPU:
#   cxrlab train (every block, and k = 2 through the frozen-prefix cache) at --precision auto, through
#   Lightning, data-parallel over every GPU when there are several, streaming shards with workers;
#   cxrlab evaluate, explain and predict; a small study (cxrlab demo).
# Reads each run's per-stage record (summary.json "stages"), the study's shortcut audit and its exported
# model's screening reference ("ran_on"), and exits 1 if any ran on the CPU, or in fp32 when the auto
# policy chose bf16; prints a speed table of the commands (speed.json).
# On a machine without a CUDA GPU it says so and exits 3, claiming nothing.
# Run from the project root after `make install`:   bench/gpu_check.sh [OUT]   (default OUT: runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu-check}"
PY=.venv/bin/python
CX=.venv/bin/cxrlab

GPUS=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" = "0" ]; then
  echo "no CUDA GPU on this machine: the GPU path was not checked (exit 3)"
  exit 3
fi
rm -rf "$OUT" && mkdir -p "$OUT"
$PY - <<'PY'
from cxrlab.core.device import Capabilities, resolve_policy
caps = Capabilities.detect()
print(f"== {caps.cuda_devices} x {caps.cuda_name}; bf16: {caps.cuda_bf16}")
p = resolve_policy("auto", "auto", workload="train", backbone="efficientnet_lite0", capabilities=caps)
print(f"auto policy: {p.device} {p.precision} ({p.reason})")
PY

TIMES="$OUT/times.tsv"
: > "$TIMES"
timed() {  # timed NAME IMAGES COMMAND...: runs it, appends "name seconds images" to times.tsv
  local name=$1 images=$2; shift 2
  echo "== $name: $*"
  local start=$SECONDS
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$images" >> "$TIMES"
}

timed synth 0 $CX synth --out "$OUT/phantoms" --patients 240 --size 256
DATA="$OUT/phantoms/manifest.csv"
COMMON=(--data "$DATA" --epochs 3 --batch-size 64 --set precision=auto --set device=auto --set progress_bar=false)
timed "train, every block" 3 $CX train "${COMMON[@]}" --fine-tune all --out "$OUT/full"
timed "train, k=2 (prefix cache)" 3 $CX train "${COMMON[@]}" --fine-tune 2 --out "$OUT/k2"
CXRLAB_IN_MEMORY_GB=0 timed "train, streamed shards + workers" 3 $CX train "${COMMON[@]}" --fine-tune all \
  --out "$OUT/stream" --set prepared="$OUT/full/prepared" --set num_workers=auto --set augment.enabled=true
if [ "$GPUS" -gt 1 ]; then
  timed "train, DDP x $GPUS" 3 $CX train "${COMMON[@]}" --fine-tune all --out "$OUT/ddp" --devices "$GPUS" --strategy ddp
fi
IMAGES=$($PY -c "import pandas as pd; print(len(pd.read_csv('$DATA')))")
timed evaluate "$IMAGES" $CX evaluate "$OUT/k2" --data "$DATA" --out "$OUT/evaluate" --device auto --precision auto
timed explain "$IMAGES" $CX explain "$OUT/k2" "$OUT/phantoms/images" --out "$OUT/explain" --device auto --precision auto
timed predict "$IMAGES" $CX predict "$OUT/k2" "$OUT/phantoms/images" --out "$OUT/predict" --device auto --precision auto
timed "study (cxrlab demo)" 0 $CX demo --out "$OUT/demo"

$PY - "$OUT" "$GPUS" <<'PY'
import json, sys
from pathlib import Path
from cxrlab.core.device import resolve_policy

out, gpus = Path(sys.argv[1]), int(sys.argv[2])
expected = resolve_policy("auto", "auto", workload="train", backbone="efficientnet_lite0").precision
failures = []
for summary in sorted(out.glob("**/summary.json")):
    stages = json.loads(summary.read_text()).get("stages") or {}
    for name, stage in stages.items():
        where = f"{summary.parent.relative_to(out)} / {name}"
        if not str(stage.get("device", "")).startswith("cuda"):
            failures.append(f"{where}: ran on {stage.get('device')}")
        fp32_by_design = name == "screening_reference"  # its pooled features are fp32 on purpose
        if summary.parent.name in ("full", "k2", "stream", "ddp") and not fp32_by_design and stage.get("precision") != expected:
            failures.append(f"{where}: {stage.get('precision')}, the auto policy chose {expected}")
        if summary.parent.name == "ddp" and name == "fit" and stage.get("processes") != gpus:
            failures.append(f"{where}: {stage.get('processes')} process(es) for {gpus} GPUs")
import torch

for audit in sorted(out.glob("**/shortcut_audit.json")):  # the study's audit of its best model
    ran = json.loads(audit.read_text()).get("ran_on") or {}
    if not str(ran.get("device", "")).startswith("cuda"):
        failures.append(f"{audit.relative_to(out)}: ran on {ran.get('device')}")
for model in sorted(out.glob("**/best-model/model.pt")):  # an exported ensemble's screening reference
    extra = torch.load(model, map_location="cpu", weights_only=True).get("extra") or {}
    ran = (extra.get("screening") or {}).get("ran_on")
    if ran is not None and not str(ran.get("device", "")).startswith("cuda"):
        failures.append(f"{model.relative_to(out)} screening reference: ran on {ran.get('device')}")
rows = [line.split("\t") for line in (out / "times.tsv").read_text().splitlines()]
print("| command | seconds | images/s |")
print("|---|---:|---:|")
for name, seconds, images in rows:
    rate = f"{int(images) / max(int(seconds), 1):.1f}" if int(images) > 3 else ""
    print(f"| {name} | {seconds} | {rate} |")
(out / "speed.json").write_text(json.dumps({"rows": rows, "failures": failures}, indent=1))
if failures:
    print("GPU check FAILED: a stage fell back:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"gpu check passed: every stage on the GPU in {expected}; {out}")
PY
