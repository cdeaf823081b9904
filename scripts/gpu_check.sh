#!/usr/bin/env bash
# One prepared GPU check (issue 5): GPU-marked tests, then the bench on the GPU, results into $1.
# Installs nothing (the GPU machine has no network); uses its python3 with the repo on PYTHONPATH.
# Ends well within 6 minutes; prints a short table last.
#   usage: bash scripts/gpu_check.sh RESULTS_DIR
set -uo pipefail
OUT="${1:?usage: gpu_check.sh RESULTS_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
START=$(date +%s)

# The GPU image has grpcio but maybe not its health-checking/reflection add-ons: install the two small
# pure-Python wheels carried in scripts/wheels (1.84.0, matching that image's grpcio), nothing else.
python3 -c "import grpc_health, grpc_reflection" 2>/dev/null || \
  python3 -m pip install --no-deps --no-index --find-links scripts/wheels grpcio-health-checking grpcio-reflection \
    > "$OUT/pip_wheels.log" 2>&1

{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, grpc, google.protobuf, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'grpc', grpc.__version__, 'protobuf', google.protobuf.__version__, 'transformers', transformers.__version__)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" || echo "cupy: not importable"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1) GPU tests: CUDA IPC channel between processes, services on the GPU with cuda_ipc, runner parity in bf16.
timeout 200 python3 -m pytest -q -m gpu tests/test_channels_gpu.py tests/test_gpu_services.py \
  -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
TESTS_RC=$?
tail -5 "$OUT/gpu_tests.log"

# 2) The bench on the GPU: draft and target processes share the one GPU (cuda:0).
timeout 240 python3 -m minedraft bench --device cuda:0 --no-pin --rounds 3 --num-requests 16 -k 4 \
  --max-tokens 64 --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png" > "$OUT/bench_gpu.log" 2>&1
BENCH_RC=$?

echo
echo "== summary (tests rc=$TESTS_RC, bench rc=$BENCH_RC, $(( $(date +%s) - START ))s)"
grep -E "passed|failed|skipped" "$OUT/gpu_tests.log" | tail -1
python3 - "$OUT/bench_gpu.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    print("no bench JSON:", exc); raise SystemExit
print(f"{'mode':14s} {'tok/s':>9s} {'lat mean s':>10s} {'lat p99 s':>10s} {'accept':>7s}")
for r in data["runs"]:
    print(f"{r['mode']:14s} {r['throughput_tok_s']:9.1f} {r['latency_mean_s']:10.3f} {r['latency_p99_s']:10.3f} "
          f"{(r.get('acceptance_rate') or 0):7.3f}")
for k, v in data.get("ratios", {}).items():
    print(f"{k}: {v}")
PY
