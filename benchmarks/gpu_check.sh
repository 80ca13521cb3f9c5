#!/usr/bin/env bash
# GPU check: on a CUDA machine, install what is needed, run the GPU-marked tests (flash attention
# with LSE, flex-attention TSA, NCCL sequence-parallel groups, bf16 renders, xfuser when present)
# and the benchmarks, and print one table. Without a GPU it stops at once with exit code 3 and
# says so: it never reports a pass it did not measure.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   GPU_CHECK_QUICK=0 bash benchmarks/gpu_check.sh   # full-size benchmarks (default: quick ones)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${GPU_CHECK_LOG:-$ROOT/gpu_check_logs}
mkdir -p "$LOG"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: FAIL: no NVIDIA GPU here (nvidia-smi missing or finds none); nothing was run" >&2
    exit 3
fi
nvidia-smi -L

# Environment: an existing venv with CUDA torch, else a fresh .venv-gpu with the CUDA wheels.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv-gpu/bin/python ]; then PY=.venv-gpu/bin/python
    else
        python3 -m venv .venv-gpu || { echo "gpu_check: FAIL: cannot create .venv-gpu" >&2; exit 4; }
        PY=.venv-gpu/bin/python
        $PY -m pip install -q --upgrade pip
        $PY -m pip install -q torch || { echo "gpu_check: FAIL: cannot install torch" >&2; exit 4; }
        $PY -m pip install -q -e ".[test]" || $PY -m pip install -q -e . pytest || { echo "gpu_check: FAIL: cannot install the package" >&2; exit 4; }
        $PY -m pip install -q "xfuser" >/dev/null 2>&1 || echo "gpu_check: xfuser not installable here (its test is skipped)"
    fi
fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: FAIL: $PY has a torch without CUDA ($($PY -c 'import torch; print(torch.__version__)' 2>&1)); nothing was run" >&2
    exit 3
fi
export LONGVID_CACHE=${LONGVID_CACHE:-/tmp/longvid-gpu-cache} PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
QUICK=${GPU_CHECK_QUICK:-1}
Q=""; [ "$QUICK" = 1 ] && Q="--quick"

declare -a ROWS
row() { ROWS+=("$(printf '%-52s %-6s %s' "$1" "$2" "$3")"); }

run() {  # name, timeout seconds, command...
    local name=$1 t=$2; shift 2
    local f="$LOG/$(echo "$name" | tr ' /' '__').log" s=0
    local t0=$(date +%s)
    timeout "$t" "$@" >"$f" 2>&1 || s=$?
    local dt=$(( $(date +%s) - t0 ))
    echo "$s" >"$f.rc"
    if [ "$s" = 0 ]; then echo "  ok    $name (${dt}s)"; else echo "  FAIL  $name (exit $s, ${dt}s): $f"; fi
    return "$s"
}

echo "== GPU tests"
for t in test_flash_attention_lse_matches_explicit test_tsa_flex_attention_matches_dense_masked \
         test_nccl_split_forward_equals_unsplit test_bf16_prediction_is_finite_and_close_to_fp32 \
         test_bf16_render_is_finite_and_close_to_fp32 test_xfuser_backend_when_installed; do
    run "$t" 900 $PY -m pytest -q -rs -m gpu tests/test_gpu.py -k "$t"
    f="$LOG/$t.log"
    if [ "$(cat "$f.rc")" != 0 ]; then row "$t" FAIL "$(tail -n 1 "$f")"
    elif grep -q "skipped" "$f" && ! grep -q "passed" "$f"; then row "$t" SKIP "$(grep -m1 SKIPPED "$f" | sed 's/.*: //')"
    else row "$t" PASS "$(tail -n 1 "$f")"; fi
done

echo "== benchmarks"
bench() {  # name, grep pattern of the figure lines, command...
    local name=$1 pat=$2; shift 2
    if run "$name" 1800 "$@"; then row "$name" RAN "$(grep -E "$pat" "$LOG/$(echo "$name" | tr ' /' '__').log" | tail -n 3 | tr '\n' ';')"
    else row "$name" FAIL "see $LOG"; fi
}
bench bench_engine "x|ratio" $PY benchmarks/bench_engine.py
bench bench_ray "x  " $PY benchmarks/bench_ray.py $Q
bench bench_sp "x|GiB" $PY benchmarks/bench_sp.py
bench bench_batch "in flight|->" $PY benchmarks/bench_batch.py $Q
bench scale_model "G=64|glc" $PY benchmarks/scale_model.py

echo
echo "== gpu_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); logs in $LOG)"
printf '%-52s %-6s %s\n' check result detail
for r in "${ROWS[@]}"; do echo "$r"; done
if printf '%s\n' "${ROWS[@]}" | grep -q " FAIL "; then exit 1; fi
exit 0
