#!/usr/bin/env bash
# Train HPVFG 2.0 on one GPU in about ten minutes; the device tool runs this in the repo root.
#
# Before (on the development machine), with KFAAR_SFACE_MODEL set:
#   python -m training.hpvfg2.pack --out .gpu --max-mib 18 --part-mib 12   # git-ignored
# A device call carries the repository plus at most 64 MiB in all (the repository is about
# 50 MiB), so the pack travels in parts: one call per part with carry [".gpu/part-NN",
# ".gpu/parts.json"] and command `true`, back to back (the machine keeps the parts while
# warm), then the training call:
#   bash scripts/gpu_train_hpvfg2.sh        (timeout_s 600)
# After: the weights come back under the device tool's files folder as weights.fp16.pt;
#   python -c "from training.hpvfg2.slim import read_slim; read_slim(...)", then kfaar export;
#   the newest weights-STEP.fp16.pt snapshots come back too, for a judge in no loss to choose.
# The GPU image has torch, numpy, onnx and opencv but no kfaar dependencies such as PyNaCl or
# grpcio: training.hpvfg2 imports none of them (tests/test_hpvfg2.py checks that).
set -euo pipefail
OUT="${OUT:-runs/gpu}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PACK=.gpu
if [ -f .gpu/parts.json ]; then
  python3 -m training.hpvfg2.pack --join .gpu --out /tmp/pack
  PACK=/tmp/pack
fi
python3 -m training.hpvfg2.run --packed "$PACK" --out /tmp/hpvfg2 --slim "$OUT" \
  --device cuda --budget-s "${BUDGET_S:-480}" "$@" 2>&1 | tee "$OUT/train.log"
cp /tmp/hpvfg2/history.json "$OUT/" 2>/dev/null || true
