#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, within 9 minutes (the device allows 10 a command):
#   bash bench/on_device.sh           the GPU set (bench.run --set gpu: eager, compiled and graphed steps at
#                                     8/16/48 frames, 576x320 fp16, Show-1's keyframe U-Net; 240 s budget),
#                                     then `dmedit run --model zeroscope-random --frames 8 --steps 200`
#                                     eager, then the same with --compile on a cold inductor cache
#   bash bench/on_device.sh --small   the GPU set at 64x64, 2 frames, fp32, with a 60 s budget and
#                                     without the compiled configurations (on a CPU a cold compile or
#                                     Show-1's U-Net takes minutes), then a 2-step tiny end-to-end run:
#                                     checks the script on a CPU in about 2 minutes
# The wheels `make gpu-kit` put in .whl/ (carry [".whl"]) are installed into .whl/site when the
# machine lacks them; src/ and .whl/site go on PYTHONPATH. Results (bench/results/*.json), the log
# and BENCHMARKS.md are copied under $OUT (./gpu-out when unset).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/.whl/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import diffusers, av, platformdirs" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "on_device: no wheels in .whl/; run make gpu-kit here and carry .whl" >&2; exit 3; }
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site .whl/*.whl || exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: a CPU run"
"$PY" -c "import torch, diffusers, av, dmedit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)" || exit 3
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
if [ "${1:-}" = "--small" ]; then
  bench=(--set gpu --small --skip=-default --label small --budget-s 60 --end-to-end --end-to-end-args "--model tiny --steps 2 --frames 4"
         --end-to-end-timeout-s 120)
else
  bench=(--set gpu --budget-s 240 --end-to-end --end-to-end-compiled --end-to-end-timeout-s 130)
fi
timeout 540 "$PY" -m bench.run "${bench[@]}" 2>&1 | tee "$out/log.txt"
rc=${PIPESTATUS[0]}
mkdir -p "$out/bench"
cp -r bench/results "$out/bench/" 2>/dev/null || true
cp BENCHMARKS.md "$out/" 2>/dev/null || true
exit "$rc"
