#!/usr/bin/env bash
# Every GPU path of meds_core in one command, sized for a short lease of a bare GPU machine (8 minutes, build
# included): build the CUDA extension for the present GPU, run every CUDA test natively, run the GPU benchmarks.
#
#   bash benchmarks/gpu_suite.sh                  # on the GPU machine (from the repository root or anywhere)
#   bash benchmarks/gpu_suite.sh --dry-run        # anywhere: print the plan, run the CPU-side parts
#   bash benchmarks/gpu_suite.sh --fetch-wheels   # where a package registry is reachable: fill .whl/
#
# Results: $OUT/benchmarks/results/{clustering,feature_capture,trl_step}_gpu.{json,md} and $OUT/gpu_suite.log
# ($OUT defaults to the repository root). Packages the machine lacks travel as wheels in .whl/ (git-ignored; for
# CPython 3.12 manylinux x86-64, about 8 MiB): they are installed into a private folder, nothing else is touched.
# With a registry on the GPU machine, `pip install -e '.[dev,cuda]'` replaces the wheels.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT}"
RESULTS="$OUT/benchmarks/results"
LOG="$OUT/gpu_suite.log"
BUDGET_S="${MEDS_GPU_SUITE_BUDGET_S:-480}"   # whole suite, build included
# The packages the lent machine's image lacks (it has torch, transformers, peft, numba, numba-cuda, CuPy, pyarrow,
# pandas, scikit-learn): one version each, no dependencies beyond these.
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hdbscan==0.8.44 math-verify==0.9.0
        latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
TESTS=(tests/test_native.py tests/test_capture_gpu.py tests/test_cuda_clustering.py tests/test_verl_capture_gpu.py)

DRY=0
FETCH=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$arg'; use --dry-run, --fetch-wheels or --help" >&2; exit 2 ;;
  esac
done

START=$SECONDS
say() { echo "[gpu_suite $((SECONDS - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }
# run STAGE SECONDS CMD...: a stage with a time cap (never past the suite's budget); its output goes to the log too
FAILED=()
stage() {
  local name="$1" cap="$2"; shift 2
  local t; t=$(left)
  (( cap > t )) && cap=$t
  if (( cap < 10 )); then say "SKIP $name: the ${BUDGET_S}s budget is spent"; FAILED+=("$name (no time)"); return; fi
  say "BEGIN $name (at most ${cap}s): $*"
  timeout --kill-after=5 "$cap" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if (( rc == 0 )); then say "END $name: ok"; else say "END $name: FAILED (exit $rc$( ((rc == 124)) && echo ', time cap'))"; FAILED+=("$name"); fi
}

if (( FETCH )); then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  du -sh .whl
  exit 0
fi

mkdir -p "$RESULTS"
: > "$LOG"
say "plan ($( ((DRY)) && echo 'dry run: CPU-side parts only' || echo 'GPU run'); budget ${BUDGET_S}s; results in $RESULTS):"
say "  1 wheels: install .whl/*.whl (${WHEELS[*]}) into a private site folder"
say "  2 build: MEDS_FORCE_CUDA=1, CUDA architecture of the present GPU (native)"
say "  3 tests, natively (NUMBA_ENABLE_CUDASIM=0): ${TESTS[*]} (veRL's GPU capture test skips unless veRL is installed)"
say "  4 clustering: cuda engine vs CPU engine vs cuML, P=512, n in {64,256,1024}, d=14 -> clustering_gpu.{json,md}"
say "  5 capture: gather kernel vs HBM bandwidth, capture in bf16 Qwen2.5-1.5B/7B-shaped forwards at seq 4096 -> feature_capture_gpu.{json,md}"
say "  6 trl: TRL GRPO steps plain vs MEDS on the GPU -> trl_step_gpu.{json,md}"

if (( DRY )); then
  ls .whl/*.whl >/dev/null 2>&1 && say "wheels: $(ls .whl/*.whl | wc -l) in .whl/" \
    || say "wheels: .whl/ is empty; run 'bash benchmarks/gpu_suite.sh --fetch-wheels' where a registry is reachable"
  for f in "${TESTS[@]}" benchmarks/gpu_bench.py benchmarks/feature_capture.py benchmarks/trl_step_overhead.py; do
    [[ -f "$f" ]] || { say "missing file: $f"; exit 1; }
  done
  export NUMBA_ENABLE_CUDASIM=1  # the cuda engine's side of the clustering benchmark runs on the simulator
  stage clustering-cpu-side 300 "$PY" benchmarks/gpu_bench.py clustering capture trl --dry-run --reps 1 --out-dir "$RESULTS"
  (( ${#FAILED[@]} )) && { say "FAILED: ${FAILED[*]}"; exit 1; }
  say "dry run done"
  exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=/tmp/meds_gpu_site
  stage wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('trl', 'datasets', 'hdbscan', 'numba_cuda', 'torch', 'transformers') if u.find_spec(m) is None))")
[[ -n "$missing" ]] && say "missing packages: $missing (bring them: bash benchmarks/gpu_suite.sh --fetch-wheels where a registry is reachable)"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { say "no CUDA GPU visible to torch: nothing to check here (use --dry-run on a machine without a GPU)"; exit 1; }
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"

export CUDAARCHS="${CUDAARCHS:-native}" NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1
stage build 120 env MEDS_FORCE_CUDA=1 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
stage tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
stage clustering 60 "$PY" benchmarks/gpu_bench.py clustering --out-dir "$RESULTS"
stage capture 110 "$PY" benchmarks/gpu_bench.py capture --out-dir "$RESULTS"
stage trl 90 "$PY" benchmarks/gpu_bench.py trl --out-dir "$RESULTS"
if (( ${#FAILED[@]} )); then say "done with failures: ${FAILED[*]}"; exit 1; fi
say "done: every stage passed"
