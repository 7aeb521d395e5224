#!/usr/bin/env bash
# The accelerator check, for a machine with a GPU or an Ascend NPU: what the device computes
# in fp32 (`llmgate devices`), then smollm2-135m through numerics, perf and, where the host
# has two devices, numerics at --tp 2, each run's summary printed. About 6 minutes on one
# H100; every step has its own time limit, so the whole stays under 8.
#
#   bash benchmarks/device_check.sh [cuda|npu]        (default: cuda)
#
# Needs the project installed beside a torch for the device (a CUDA build of torch 2.13, or
# torch_npu with CANN): it uses .venv if there is one, else python3. Runs go to $OUT
# (default /tmp/llmgate-device-check); the exit status is the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
HW=${1:-cuda}
OUT=${OUT:-/tmp/llmgate-device-check}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
status=0

step() {  # step NAME SECONDS ARGS...: one pytest run, its summary, its exit status kept
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider -n 0 "$@" --model smollm2-135m \
        --hardware "$HW" --require-hardware --results-dir="$OUT" --run-id="$name" \
        | tail -n 25
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ -f "$OUT/$name/summary.md" ] && cat "$OUT/$name/summary.md"
    [ "$status" = 0 ] && status=$rc
}

"$PY" -m harness.cli devices
"$PY" - "$HW" <<'EOF'
import sys, torch
hw = sys.argv[1]
if hw == "npu":
    import torch_npu  # noqa: F401
module = getattr(torch, hw)
name = module.get_device_name(0) if hasattr(module, "get_device_name") else "host"
print(f"{hw}: {module.device_count()} device(s), {name}, torch {torch.__version__}")
EOF

step numerics 200 suites/numerics --batch 1,4 --seqlen 128
step perf 150 suites/perf --batch 1,8 --seqlen 128 --perf-baseline none --repeats 3
devices=$("$PY" -c "import sys, torch; hw = sys.argv[1]; hw == 'npu' and __import__('torch_npu'); \
print(getattr(torch, hw).device_count())" "$HW")
if [ "${devices:-0}" -ge 2 ]; then
    step tp2 100 suites/numerics --tp 2 --dtype fp16 --batch 2 --seqlen 64
else
    echo "== tp2: not run, this host has ${devices:-0} $HW device (--tp 2 needs two)"
fi
exit "$status"
