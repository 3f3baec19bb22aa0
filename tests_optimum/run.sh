#!/usr/bin/env bash
# Optimum tests, each backend in its own virtual environment (they pin transformers; README, "Optimum"):
#   OpenVINO:     optimum-intel[openvino] 2.2.0 -> transformers 5.5.4, optimum 2.3.0 (torchvision removed again)
#   ONNX Runtime: optimum-onnx[onnxruntime] 0.1.0 -> transformers 4.57.6, optimum 2.1.0
#   llm-compressor: llmcompressor 0.14.0.1 -> transformers 5.17 (quantizes a pruned checkpoint's experts too)
# The environments live in $HF_MOE_PRUNE_VENVS (default .venvs/) and are reused while their pins are unchanged.
# The main environment (the active one, else .venv) prunes the checkpoints that the ONNX Runtime tests export, since
# the library cannot prune under transformers 4.57; the OpenVINO tests prune in their own environment.
# Installs and tests of the two backends run side by side; each one's log is printed when it is done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENVS=${HF_MOE_PRUNE_VENVS:-$ROOT/.venvs}
if [ -n "${HF_MOE_PRUNE_PYTHON:-}" ]; then MAIN=$HF_MOE_PRUNE_PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then MAIN=$VIRTUAL_ENV/bin/python
elif [ -x .venv/bin/python ]; then MAIN=.venv/bin/python
else MAIN=python3; fi
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
LIGHT="tqdm jinja2 safetensors huggingface-hub accelerate pytest"  # the library's own light dependencies
declare -A PINS=(
  [ov]="optimum-intel[openvino]==2.2.0 torchvision==0.28.0"  # optimum-intel hard-requires torchvision (unpinned)
  [ort]="optimum-onnx[onnxruntime]==0.1.0"
  [llmc]="llmcompressor==0.14.0.1"
)
declare -A TESTS=([ov]=tests_optimum/test_openvino.py [ort]=tests_optimum/test_ort.py)
TESTS[llmc]=tests_optimum/test_llm_compressor.py
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$VENVS"

# Create (or reuse) the environment $1: CPU torch first, then the pins under a torch==2.13.0 constraint (without it
# torchvision would pull a CUDA torch), then this package with --no-deps.
make_env() {
  local name=$1 env=$VENVS/$1 stamp="torch==2.13.0 ${PINS[$1]} $LIGHT"
  if [ "$(cat "$env/.pins" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/pip" install -q --no-compile torch==2.13.0
    echo "torch==2.13.0" > "$env/constraints.txt"
    # shellcheck disable=SC2086
    "$env/bin/pip" install -q --no-compile -c "$env/constraints.txt" ${PINS[$name]} $LIGHT
    if [ "$name" = ov ]; then "$env/bin/pip" uninstall -q -y torchvision; fi  # its PyPI build breaks CPU torch
    echo "$stamp" > "$env/.pins"
  fi
  if [ "$(cat "$env/.editable" 2>/dev/null)" != "$ROOT" ]; then
    "$env/bin/pip" install -q --no-deps -e "$ROOT"
    echo "$ROOT" > "$env/.editable"
  fi
  "$env/bin/python" -c "import importlib.metadata as m; print('$name:', ', '.join(p + ' ' + m.version(p) for p in
    {'ov': ('torch', 'transformers', 'optimum', 'optimum-intel'), 'ort': ('torch', 'transformers', 'optimum',
     'optimum-onnx'), 'llmc': ('torch', 'transformers', 'llmcompressor', 'compressed-tensors')}['$name']))"
}

run_backend() {
  local name=$1 start=$SECONDS
  make_env "$name" 2>&1 | grep -v "^WARNING: Location" || true
  test -f "$VENVS/$name/.pins" || { echo "$name: environment could not be built"; return 1; }
  echo "$name: environment ready in $((SECONDS - start)) s"
  if [ "$name" != ov ]; then  # the checkpoints are pruned meanwhile by the main environment
    while [ ! -e "$WORK/checkpoints.done" ]; do sleep 1; done
    [ -s "$WORK/checkpoints.done" ] || { echo "$name: no checkpoints (see above)"; return 1; }
    export HF_MOE_PRUNE_OPTIMUM_CHECKPOINTS=$WORK/checkpoints
  fi
  local errors=tests_optimum/test_errors.py
  if [ "$name" = llmc ]; then errors=; fi  # no Optimum there
  # shellcheck disable=SC2086
  "$VENVS/$name/bin/python" -m pytest "${TESTS[$name]}" $errors -q -p no:cacheprovider -p no:warnings -s
}

START=$SECONDS
run_backend ov > "$WORK/ov.log" 2>&1 & OV=$!
run_backend ort > "$WORK/ort.log" 2>&1 & ORT=$!
run_backend llmc > "$WORK/llmc.log" 2>&1 & LLMC=$!
if "$MAIN" tests_optimum/checkpoints.py "$WORK/checkpoints" > "$WORK/checkpoints.log" 2>&1; then
  echo ok > "$WORK/checkpoints.done"
else
  cat "$WORK/checkpoints.log"; touch "$WORK/checkpoints.done"
fi
status=0
wait $OV || status=1
echo "=== OpenVINO ==="; cat "$WORK/ov.log"
wait $ORT || status=1
echo "=== ONNX Runtime ==="; cat "$WORK/ort.log"
wait $LLMC || status=1
echo "=== llm-compressor ==="; cat "$WORK/llmc.log"
echo "tests_optimum/run.sh: $((SECONDS - START)) s"
exit $status
