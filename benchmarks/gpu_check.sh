#!/usr/bin/env bash
# One short GPU check (issue 16, item 4), meant to run in a single call on a machine with a CUDA GPU:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu_check_out)
# 1. the CUDA tests: gsplat against the torch compositor, warp CUDA against warp CPU, fp16 priors;
# 2. the benchmarks on CUDA: MPM forward and gradient (warp CUDA), splat rendering (gsplat), the
#    reference estimation iteration;
# 3. one SVD-xt distillation iteration (256x256, 25 frames, 5k particles) with a randomly
#    initialised UNet / VAE / image encoder of SVD-xt's full size (benchmarks/svd_xt_random.py).
# Every step has its own time limit and the script goes on after a failure; the JSON lines of all
# steps land in OUT_DIR/gpu_check.jsonl and each step's full log in OUT_DIR/<step>.log.
#
# Packages: the backend's (requirements/backend.txt) must import with CUDA. A machine whose Python
# lacks some (the lent H200 image has CUDA torch and transformers, but no warp-lang, gsplat or
# diffusers) takes wheels from .whl/ (git-ignored; pip download --no-deps --only-binary=:all:
# --python-version <its Python> ...): they are installed into /tmp/site first. A wheel too large to
# travel in one go (warp-lang is ~150 MB) may come as `split -b 60M` parts NAME.whl.part-aa, -ab, ...
# carried over several calls; they are joined here. gsplat compiles its CUDA code on first use
# (minutes), so its steps run last.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || PY=python3
if [ -d .whl ]; then
    for part in .whl/*.whl.part-aa; do
        [ -e "$part" ] && cat "${part%.part-aa}".part-* > "${part%.part-aa}"
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT_DIR/wheels.log" 2>&1 && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
JSONL="$OUT_DIR/gpu_check.jsonl"
: > "$JSONL"

DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-560}))  # the whole check fits one 10-minute device call
step() {  # step NAME SECONDS COMMAND...   (the limit is cut to what is left before DEADLINE)
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "{\"step\": \"$name\", \"skipped\": \"out of time\"}" | tee -a "$JSONL"; return
    fi
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    grep -h '^{' "$OUT_DIR/$name.log" >> "$JSONL"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$JSONL"
}

step env 60 "$PY" -c "
import json, torch, warp as wp
wp.config.log_level = 30; wp.init()
print(json.dumps({'case': 'env', 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
  'warp': wp.config.version, 'warp_cuda': wp.is_cuda_available()}))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.log" 2>&1

step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/mpm/test_cuda.py tests/prior/test_fp16_cuda.py
step mpm_cuda 120 "$PY" benchmarks/mpm.py --device cuda
SVD_DIR="$(mktemp -d)/svd-xt-random"
step svd_xt_build 90 "$PY" benchmarks/svd_xt_random.py "$SVD_DIR"
step svd_xt_iteration 150 "$PY" benchmarks/estimate.py --case svd-xt-cuda svd "$SVD_DIR" 5000 256 25 cuda 2
rm -rf "$SVD_DIR"
step estimate_reference_cuda 60 "$PY" benchmarks/estimate.py --case reference-cuda reference - 5000 64 8 cuda 3
step gsplat_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/render/test_gsplat_cuda.py
step render_cuda 45 bash -c "for c in '20000 256 256' '100000 1024 576'; do
    $PY benchmarks/render.py --case \$c gsplat cuda 5; done"
echo "done: $JSONL"
