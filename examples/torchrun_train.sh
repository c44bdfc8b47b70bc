#!/bin/bash
# One cxrlab training run over 2 machines x 4 GPUs with torchrun (Lightning reads its environment).
# Run this on each machine with NODE_RANK=0 and NODE_RANK=1, MASTER_ADDR the first machine's address.
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK (0 on the first machine)}" "${MASTER_ADDR:?set MASTER_ADDR}"
.venv/bin/torchrun --nnodes 2 --nproc-per-node 4 --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" \
  --master-port 29500 -m cxrlab.cli train --config configs/train/efficientnet_lite0.yaml --data /data/ChestX-ray14 --set data.scheme=chestxray14 --devices 4 --num-nodes 2 \
  --strategy ddp --set runtime.device=cuda --set runtime.precision=auto --out runs/nih-ddp
