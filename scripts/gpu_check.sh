#!/usr/bin/env bash
# One prepared GPU check (issues 5 and 14), results into RESULTS_DIR:
#   1. GPU tests: CUDA IPC channel between processes, services on the GPU (cuda_ipc, shm, graphs on),
#      runner parity, captured CUDA graphs vs eager, host syncs per step;
#   2. step times of random-weight Qwen3-8B / Qwen3-0.6B shapes in bf16 at batch 1, 8, 32, 64, CUDA
#      graphs on and off, beside the HBM roofline and transformers' forward (step_times.json);
#   3. minedraft bench with draft and target processes sharing cuda:0, our protocol and the paper's
#      (bench_run.json), graphs on in the services only if the graph tests passed;
#   3b. the serving matrix (issue 24): -k auto beside k = 2, 4 and ar at 1, 16, 64 rows (bench_auto.json);
#   4. bench_gpu.json (issue 14's contract) + bench_gpu.png, and a short table printed last.
# Installs nothing and downloads nothing (the GPU machine has no network); python3 with the repo on
# PYTHONPATH. Every part has its own timeout, sized from what is left of GPU_CHECK_LIMIT_S (520 s by
# default), so the whole fits one 10-minute device call even when a part hangs.
#   usage: bash scripts/gpu_check.sh RESULTS_DIR
set -uo pipefail
OUT="${1:?usage: gpu_check.sh RESULTS_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
START=$(date +%s)
LIMIT="${GPU_CHECK_LIMIT_S:-520}"

# budget WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for what follows (min 20).
budget() {
  local left=$(( LIMIT - ($(date +%s) - START) - $2 ))
  local want=$1
  (( left < want )) && want=$left
  (( want < 20 )) && want=20
  echo "$want"
}

# The GPU image has grpcio but maybe not its health-checking/reflection add-ons: install the two small
# pure-Python wheels carried in scripts/wheels (1.84.0, matching that image's grpcio), nothing else.
python3 -c "import grpc_health, grpc_reflection" 2>/dev/null || \
  python3 -m pip install --no-deps --no-index --find-links scripts/wheels grpcio-health-checking grpcio-reflection \
    > "$OUT/pip_wheels.log" 2>&1

{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, grpc, google.protobuf, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'grpc', grpc.__version__, 'protobuf', google.protobuf.__version__, 'transformers', transformers.__version__)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" || echo "cupy: not importable"
  python3 -c "import matplotlib; print('matplotlib', matplotlib.__version__)" || echo "matplotlib: not importable"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1) GPU tests (-rA: every test's outcome in the log, the graph tests' print lines too).
echo "== gpu tests"
timeout "$(budget 150 330)" python3 -m pytest -q -rA -s -m gpu tests/test_channels_gpu.py tests/test_gpu_services.py \
  tests/test_gpu_graphs.py tests/test_feature_channels.py tests/test_gpu_coupled.py -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
TESTS_RC=$?
tail -5 "$OUT/gpu_tests.log"
GRAPHS=0
if grep -q "PASSED tests/test_gpu_graphs.py::test_captured_graphs_match_eager_logits" "$OUT/gpu_tests.log" \
   && ! grep -q "FAILED tests/test_gpu_graphs.py" "$OUT/gpu_tests.log"; then
  GRAPHS=1
fi

# 2) Step times (the models are made on the device, nothing is read from disk).
echo "== step times"
timeout "$(budget 140 200)" python3 -m minedraft.bench.step_times --json "$OUT/step_times.json" \
  > "$OUT/step_times.log" 2>&1
STEPS_RC=$?
grep -E "graphs=(on|off)" "$OUT/step_times.log" | tail -24

# 3) The bench on the GPU: draft and target processes share cuda:0; the services' graphs follow step 1.
echo "== bench (MINEDRAFT_CUDA_GRAPHS=$GRAPHS)"
PLOT=()
python3 -c "import matplotlib" 2>/dev/null && PLOT=(--plot "$OUT/bench_run.png")
MINEDRAFT_CUDA_GRAPHS=$GRAPHS timeout "$(budget 170 85)" python3 -m minedraft bench --device cuda:0 --no-pin \
  --rounds 2 --num-requests 16 --paper-batch 16 -k 4 --max-tokens 64 --modes ar,sd,psd,sd-paper,psd-paper \
  --matrix off --json "$OUT/bench_run.json" "${PLOT[@]}" > "$OUT/bench_run.log" 2>&1
BENCH_RC=$?

# 3b) The goodput controller (issue 24) on the GPU: the serving matrix, auto beside fixed k and ar.
echo "== matrix (-k auto)"
MINEDRAFT_CUDA_GRAPHS=$GRAPHS timeout "$(budget 110 20)" python3 -m minedraft bench --device cuda:0 --no-pin \
  --matrix only --ks auto,2,4 --matrix-concurrency 1,16,64 --matrix-regimes greedy --matrix-rounds 2 \
  --no-progress --json "$OUT/bench_auto.json" > "$OUT/bench_auto.log" 2>&1
AUTO_RC=$?

# 4) One report in issue 14's shape; the table goes last.
echo
echo "== summary (tests rc=$TESTS_RC, step times rc=$STEPS_RC, bench rc=$BENCH_RC, auto rc=$AUTO_RC, services graphs=$GRAPHS, $(( $(date +%s) - START ))s)"
grep -E "passed|failed|skipped" "$OUT/gpu_tests.log" | tail -1
python3 -m minedraft.bench.gpu_report --steps "$OUT/step_times.json" --bench "$OUT/bench_run.json" \
  --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png"
grep -A12 "^serving matrix" "$OUT/bench_auto.log" | grep -E "^(load|c[0-9]|poisson|aims)"
python3 - "$OUT/bench_run.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
  try:
    data = json.load(open(path))
  except (OSError, ValueError) as exc:
    print("no bench JSON:", exc); continue
  print(f"{'mode':14s} {'tok/s':>9s} {'lat mean s':>10s} {'lat p99 s':>10s} {'accept':>7s}")
  for r in data["runs"]:
    print(f"{r['mode']:14s} {r['throughput_tok_s']:9.1f} {r['latency_mean_s']:10.3f} {r['latency_p99_s']:10.3f} "
          f"{(r.get('acceptance_rate') or 0):7.3f}")
PY
