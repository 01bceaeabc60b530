#!/usr/bin/env bash
# Train HPVFG 2.0 on one GPU for about 8 minutes from a self-contained payload, continuing
# from the run that training/hpvfg2/runs.json names; the device tool runs this in the repo root.
#
# 1. Here (the development machine), with KFAAR_SFACE_MODEL set and the chip caches built
#    (LFW: kfaar train builds them; CelebA: the payload builds it once, about 20 minutes):
#      .venv/bin/python -m training.hpvfg2.payload --out .gpu/payload --parts .gpu/parts
#    It writes a payload of at most 60 MiB (code, both recognizers in float16, LFW + CelebA
#    chips, init.fp16.pt from runs.json) and cuts it into .gpu/parts/part-NN. .gpu/ is
#    git-ignored. A device call carries the working tree (tracked + untracked-not-ignored
#    files) plus the carried paths, 64 MiB in all: --part-mib auto (the default) measures the
#    tree, logs it, and picks the largest part that leaves 4 MiB spare (7.2 MiB parts, 9 parts
#    for 59.2 MiB, with the 52.7 MiB tree of 2026-12-04; --max-mib 48 saves two calls). It
#    refuses (exit 2) when not even a 2 MiB part fits.
#    Then, still here, check that every call fits today's tree and count the calls:
#      bash scripts/gpu_train_hpvfg2.sh plan
# 2. Device calls, back to back (the warm machine keeps carried paths that later calls do not
#    name; a call that finds no warm machine starts a bare one, and the parts must travel again):
#      run(carry=[".gpu/parts/parts.json", ".gpu/parts/part-00"],
#          command="bash scripts/gpu_train_hpvfg2.sh check", timeout_s=120)
#      run(carry=[".gpu/parts/part-01"], command="bash scripts/gpu_train_hpvfg2.sh check",
#          timeout_s=60)
#      ... one call per further part except the last ...
#      run(carry=[".gpu/parts/part-LAST"], command="BUDGET_S=450 bash scripts/gpu_train_hpvfg2.sh",
#          timeout_s=600)
#    The last call joins the parts (SHA-256 checked), unpacks the payload to /tmp/payload and
#    runs its run.sh: python3 -m training.hpvfg2.run --init init.fp16.pt --profile ..., bf16,
#    channels_last and batch 96 by default on CUDA. Extra arguments go to training.hpvfg2.run.
# 3. What comes back in $OUT (at most 8 files): weights.fp16.pt (the end), up to five
#    weights-STEP.fp16.pt snapshots (the ends of the warm-up and identity stages first, then the
#    newest, then every 2000th step), history.json, and train.log with a per-phase time table
#    per stage ("profile: stage identity: ... triplets/s"). Then, here:
#      python -c "from training.hpvfg2.slim import read_slim; read_slim(...)"; kfaar export ...
#    and add the run to training/hpvfg2/runs.json (continue_from) so the next run builds on it.
# The payload imports nothing the GPU image lacks (simplejpeg, PyNaCl, grpcio, faiss, usearch,
# psycopg, flwr): tests/test_hpvfg2_run.py trains from a tiny payload with those blocked.
set -euo pipefail
OUT="${OUT:-runs/gpu}"
PARTS="${PARTS:-.gpu/parts}"
PAYLOAD=/tmp/payload
if [ "${1:-}" = "plan" ]; then  # here, before any device call: does each part still fit?
  exec "${PYTHON:-.venv/bin/python}" -m training.hpvfg2.device_budget --parts "$PARTS"
fi
mkdir -p "$OUT"
if [ "${1:-}" = "check" ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  ls -l "$PARTS"/part-* "$PARTS"/parts.json 2>&1 || true
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -f "$PARTS/parts.json" ]; then
  digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["payload.tar"])' \
    "$PARTS/parts.json")
  cat "$PARTS"/part-*/payload.tar.[0-9][0-9][0-9] > /tmp/payload.tar
  if ! echo "$digest  /tmp/payload.tar" | sha256sum -c --quiet -; then
    echo "payload parts are missing or damaged: carry every part-NN first" >&2
    ls -l "$PARTS"/part-* >&2 || true
    exit 2
  fi
  rm -rf "$PAYLOAD"
  tar -xf /tmp/payload.tar -C /tmp  # the tar holds payload/
elif [ -d .gpu/payload ]; then
  PAYLOAD=.gpu/payload
else
  echo "no payload: carry .gpu/parts (see this script's header)" >&2
  exit 2
fi
OUT="$(cd "$OUT" && pwd)" BUDGET_S="${BUDGET_S:-450}" bash "$PAYLOAD/run.sh" \
  --steps 60000 --kvfa-steps 20000 --eval-every 500 "$@"
