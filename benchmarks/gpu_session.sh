#!/usr/bin/env bash
# One prepared GPU session for issues #10 and #11, run as ONE device-tool command (the first try counts).
# Stages, most important first, each time-boxed (`timeout -s INT`, KILL 20 s later); one stage's failure never
# stops the next:
#   install     the carried wheels (.whl/, from ../shared/gpu/fetch-wheels.sh) into /tmp/site, as that script's
#               header says; install-pkg: the project too (only adds the `specnorm` script: the checkout comes
#               first on PYTHONPATH). Skipped when fastai, soundfile and librosa already import.
#   machine     nproc, memory, nvidia-smi, torch/CUDA versions, where each package comes from.
#   tests-cuda  the device-aware tests on CUDA (`-k cuda`: the `device` fixture's ids) and the three tests issue
#               #11 names (T_TESTS, 150 s).
#   bench-cuda  `benchmarks.run --device cuda`: #11's stats and normalize rows, #10's pipeline rows, the rest
#               (T_BENCH_CUDA, 240 s; a module stops after 150 s).
#   kernels     `python -m benchmarks.gpu_kernels`: each Triton kernel against its eager path, launch settings
#               compared, the kernels each transform runs (T_KERNELS, 60 s), into kernels.md.
#   tests-rest  the rest of the non-slow suite but the CPU-parametrized ids (CUDA through fastai's default
#               device) (T_REST, 100 s).
#   bench-cpu   `benchmarks.run --device cpu` in the time left.
# Files in $OUT (the device tool brings back 8 at most): session.log (everything printed), summary.txt (each
# stage's exit code, time, test counts), tests-cuda.xml and tests-rest.xml (junit), BENCHMARKS.md (the CUDA
# sections, rewritten after each one) and BENCHMARKS-cpu.md. The output ends with a digest: tables, failed
# tests, summary.
#
# On the GPU machine, from the repo root: bash benchmarks/gpu_session.sh (device tool: carry [".whl"],
#   timeout_s 570). A rerun of a part: STAGES="install bench-cuda" BENCH_ONLY=pipeline BUDGET_S=150 bash ...
# Rehearsal on a CPU machine: SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh (or --smoke): the
#   same stages at tiny sizes, a few device-aware tests on the CPU, OUT a temp folder unless set. Without CUDA
#   and without SMOKE it refuses to start (the full benchmarks would load a shared CPU machine).
# Settings (environment): OUT, PYTHON (python3), BUDGET_S (540: the whole script), T_TESTS, T_BENCH_CUDA,
#   T_REST, T_KERNELS, STAGES (the stage names above, "install" covering install-pkg), BENCH_ONLY (benchmarks, in order).
set -uo pipefail # no -e: a failing stage must not stop the next one
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

SMOKE=${SMOKE:-0}
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: [SMOKE=1] bash benchmarks/gpu_session.sh [--smoke] (settings: see the header)" >&2 && exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
T_TESTS=${T_TESTS:-150}
T_BENCH_CUDA=${T_BENCH_CUDA:-240}
T_REST=${T_REST:-100}
T_KERNELS=${T_KERNELS:-60}
STAGES=${STAGES:-install machine tests-cuda bench-cuda kernels tests-rest bench-cpu}
# Issue #11's rows first (a few seconds each), then #10's pipeline (the longest), then the rest.
BENCH_ONLY=${BENCH_ONLY:-stats normalize pipeline beyond epoch augment}
OUT=${OUT:-$(mktemp -d -t specnorm-gpu-XXXXXX)}
mkdir -p "$OUT"
# The checkout first, so the code under test is this tree's (the project install only adds the console script).
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"

# Test selections (pytest -k). On CUDA: every test parametrized on the `device` fixture's 'cuda' id, and issue
# #11's three named tests (the third was renamed; it is device-parametrized). Without CUDA (rehearsal): a few
# device-aware tests on the CPU, so the same path runs.
K_CUDA="cuda or test_get_dls_resamples_and_keeps_the_rate or test_statistics_free_methods_see_what_they_need"
K_CUDA+=" or test_update_never_reads_on_the_host_from_the_first_call or kernel" # kernel: the Triton kernels' tests
K_HOST="cpu and (test_update_never_reads_on_the_host_from_the_first_call or test_take_on_a_device_equals_gather)"
K_HOST+=" or test_get_dls_resamples_and_keeps_the_rate"

START=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - START))); }
min() { echo $(($1 < $2 ? $1 : $2)); }
wants() { [[ " $STAGES " == *" $1 "* ]]; }
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
FAILED=0

# stage NAME SECONDS CMD...: run CMD under `timeout -s INT` (then KILL 20 s later), log its exit code and time.
stage() {
  local name=$1 box=$2 t0=$SECONDS rc
  shift 2
  if ((box < 1)); then # `timeout 0` would mean no limit at all
    skip "$name" "no time left in the budget"
    FAILED=1
    return 1
  fi
  echo
  echo "=== $name: up to ${box} s: $(printf '%q ' "$@")"
  timeout -s INT -k 20 "$box" "$@"
  rc=$?
  [[ $rc -ne 0 ]] && FAILED=1
  local note=""
  [[ $rc -eq 124 || $rc -eq 137 ]] && note="  (time box of $box s reached)"
  summary "$(printf '%-12s rc=%-3s %4d s%s' "$name" "$rc" $((SECONDS - t0)) "$note")"
  return $rc
}

skip() { summary "$(printf '%-12s skipped: %s' "$1" "$2")"; }

# junit NAME: the counts in $OUT/NAME.xml, for the summary (pytest writes it also when interrupted by SIGINT).
junit() {
  summary "$(printf '%-12s ' "$1")$("$PYTHON" - "$OUT/$1.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    s = ET.parse(sys.argv[1]).getroot().find("testsuite")
    print(", ".join(f"{s.get(k)} {k}" for k in ("tests", "failures", "errors", "skipped")))
except Exception as e:
    print(f"no junit counts ({type(e).__name__}: {e})")
EOF
)"
}

main() {
  echo "specnorm GPU session: $(date -u '+%F %T UTC'), smoke=$SMOKE, budget ${BUDGET_S} s, stages: $STAGES, OUT=$OUT"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here)')"
  : >"$OUT/summary.txt"
  summary "specnorm GPU session $(date -u '+%F %T UTC') smoke=$SMOKE" \
    "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

  if wants install; then
    if "$PYTHON" -c "import fastai, soundfile, librosa" 2>/dev/null; then
      skip install "fastai, soundfile and librosa already import"
    elif compgen -G ".whl/*.whl" >/dev/null; then
      # As ../shared/gpu/fetch-wheels.sh's header says. The project install only adds the `specnorm` script.
      stage install 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      stage install-pkg 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
    else
      FAILED=1
      skip install "NO .whl/ and fastai does not import: run ../shared/gpu/fetch-wheels.sh and carry .whl"
    fi
  fi

  CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  if [[ $CUDA != 1 && $SMOKE != 1 ]]; then
    summary "no CUDA device: this is no GPU session (rehearse with SMOKE=1); stopping before the tests and benchmarks"
    return 1
  fi

  if wants machine; then
    echo "=== machine"
    nproc
    free -g | head -2
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi -L
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
        --format=csv
    fi
    "$PYTHON" - <<'EOF'
import platform, sys, torch, torchaudio
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}")
print(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
for name in ("fastai", "fastcore", "fasttransform", "plum", "soundfile", "librosa", "numpy", "pandas", "specnorm"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')} from {m.__file__}")
    except Exception as e:
        print(f"{name}: NOT IMPORTABLE ({type(e).__name__}: {e})")
EOF
  fi

  # Most important first: the CUDA tests (#11), the CUDA benchmarks (#10, #11), then what adds to them.
  local k=$K_CUDA rest=tests xdist_a=() xdist_b=() box
  if [[ $CUDA != 1 ]]; then
    k=$K_HOST
    rest=tests/test_host_guard.py # rehearsal on the CPU: one small file for tests-rest's path
  fi
  if "$PYTHON" -c "import xdist" 2>/dev/null; then
    xdist_a=(-n 4)
    xdist_b=(-n 8)
  fi
  # -v: each test's outcome is in the log as it happens, also when the time box kills pytest before its summary.
  local py=(-m pytest -p no:cacheprovider -v -ra --continue-on-collection-errors)
  # The notebook tests need nbclient and a kernel, which the GPU machine lacks (they are slow-marked anyway).
  "$PYTHON" -c "import nbclient, nbformat" 2>/dev/null || py+=(--ignore=tests/test_notebooks.py)
  local smoke=()
  [[ $SMOKE == 1 ]] && smoke=(--smoke)
  local bench=(-m benchmarks.run "${smoke[@]}" --keep-partial --only $BENCH_ONLY)

  if wants tests-cuda; then
    stage tests-cuda "$(min "$T_TESTS" "$(left)")" "$PYTHON" "${py[@]}" "${xdist_a[@]}" \
      --junitxml="$OUT/tests-cuda.xml" -k "$k" tests
    junit tests-cuda
  fi
  if wants bench-cuda; then
    local device=cuda
    [[ $CUDA != 1 ]] && device=cpu
    stage bench-cuda "$(min "$T_BENCH_CUDA" "$(left)")" "$PYTHON" "${bench[@]}" --device "$device" \
      --module-timeout 150 --out "$OUT/BENCHMARKS.md"
  fi
  if wants kernels; then # the Triton kernels against their eager paths
    local kpy=("$PYTHON" -m benchmarks.gpu_kernels)
    [[ $CUDA != 1 ]] && kpy=("$PYTHON" -c "print('kernels: no CUDA (rehearsal): skipped')")
    stage kernels "$(min "$T_KERNELS" "$(left)")" bash -c '"$@" > "$0"' "$OUT/kernels.md" "${kpy[@]}"
  fi
  if wants tests-rest; then
    # The rest of the non-slow suite but the CPU-parametrized ids: it meets CUDA through fastai's default device.
    # test_benchmarks.py tests this script and benchmarks.run (CPU only, and signals need pytest's main thread).
    box=$(min "$T_REST" $(($(left) - 60)))
    if ((box >= 30)); then
      stage tests-rest "$box" "$PYTHON" "${py[@]}" "${xdist_b[@]}" --junitxml="$OUT/tests-rest.xml" \
        --ignore=tests/test_benchmarks.py -m "not slow" -k "not ($k) and not cpu" "$rest"
      junit tests-rest
    else
      skip tests-rest "${box} s left for it in the budget"
    fi
  fi
  if wants bench-cpu; then
    box=$(($(left) - 15))
    if ((box >= 45)); then
      stage bench-cpu "$box" "$PYTHON" "${bench[@]}" --device cpu --module-timeout 90 --out "$OUT/BENCHMARKS-cpu.md"
    else
      skip bench-cpu "${box} s left in the budget"
    fi
  fi

  if command -v nvidia-smi >/dev/null && [[ $CUDA == 1 ]]; then
    nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,memory.used --format=csv
  fi
  summary "total $((SECONDS - START)) s of a ${BUDGET_S} s budget; files: $(cd "$OUT" && ls | tr '\n' ' ')"

  # The digest, last, for the device tool's output tail (its last 12,000 characters): the benchmark tables (CPU
  # first, so the CUDA ones stay in view), each module's time, the failed tests, then the summary.
  echo
  echo "=== digest"
  # grep a copy: this output is itself being appended to session.log
  local log
  log=$(mktemp)
  cp "$OUT/session.log" "$log"
  for md in "$OUT/BENCHMARKS-cpu.md" "$OUT/BENCHMARKS.md" "$OUT/kernels.md"; do
    [[ -f $md ]] && grep -E "^(#|\||Not measured|Incomplete)" "$md"
  done
  grep -h "^\[bench\]" "$log"
  # pytest -v prints `id FAILED` (one process) or `FAILED id` (xdist, and the -ra summary)
  grep -ohE "(FAILED|ERROR) tests/[^ ]+|tests/[^ ]+ (FAILED|ERROR)" "$log" |
    sed -E 's/^(tests[^ ]+) (FAILED|ERROR)$/\2 \1/' | sort -u | head -60
  rm -f "$log"
  cat "$OUT/summary.txt"
  return $FAILED
}

main 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
