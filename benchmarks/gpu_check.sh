#!/usr/bin/env bash
# One prepared device check (< 8 min on one GPU): environment, CUDA-vs-CPU tests, PatchCore + GeneralAD runs.
#
#   bash benchmarks/gpu_check.sh                      # from a copy of the repository, on the GPU machine
#   DATA=/path/to/bottle WEIGHTS=/path/to/vits14.safetensors GPU_CHECK_EPOCHS=160 bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --device cpu --image-size 224 --epochs 1     # CPU smoke test (args → .py)
#
# Steps, all inside one deadline of GPU_CHECK_TOTAL_S seconds (default 470, installation included):
#  1. machine: lscpu model name, nvidia-smi -L;
#  2. environment: reuse the venv at GPU_CHECK_VENV (default /tmp/generalad-gpu-venv) if it imports generalad
#     and torch; else create it. When the interpreter (GPU_CHECK_PYTHON, default python3) already holds a CUDA
#     torch (the lent H200 image: torch 2.11, no network), the venv sees that interpreter's site-packages
#     (a .pth file) and the project is installed with `pip install --no-deps --no-index -e .` (seconds), so
#     the image's torch runs, not the pinned 2.14.1: the JSON lines say which. Wheels carried in .whl/ (e.g.
#     faiss-cpu) are installed first, offline. Otherwise a plain venv and `pip install -e .` (downloads the
#     pinned torch==2.14.1 CUDA build: minutes, counted in the deadline);
#  3. tests/test_device.py (CUDA vs CPU for knn, coreset, maps, patches, loo, extract_features), at most
#     GPU_CHECK_TEST_S seconds (default 120; GPU_CHECK_TESTS=0 skips it);
#  4. benchmarks/gpu_check.py under `timeout` with the time left (its --budget-s 15 s less, so the GeneralAD
#     epochs are capped to finish in time). It prints one JSON line per model run.
# Outputs go to $OUT/gpu_check when OUT is set (the device tool), else runs/gpu_check.
set -uo pipefail
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-470}
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
left() { echo $(( TOTAL - ($(date +%s) - START) )); }

echo "== machine"
lscpu | grep -m1 'Model name' || grep -m1 'model name' /proc/cpuinfo
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"

echo "== environment"
PY=${GPU_CHECK_PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-/tmp/generalad-gpu-venv}
VPY="$VENV/bin/python"
t=$(date +%s)
if [ -x "$VPY" ] && "$VPY" -c "import torch, timm" 2>/dev/null; then
  echo "reusing $VENV"
else
  rm -rf "$VENV"
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "building on $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__)') (offline)"
    "$PY" -m venv --system-site-packages "$VENV" || exit 2
    # a venv made from a venv does not see its parent's packages: list them in a .pth file
    site_dir=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c "import site; print('\n'.join(site.getsitepackages()))" > "$site_dir/_gpu_check_parent.pth"
    if ls .whl/*.whl >/dev/null 2>&1; then
      "$VPY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || echo "warning: .whl/ wheels not installed"
    fi
    if ! "$VPY" -m pip install -q --no-deps --no-index --no-build-isolation -e . > "$VENV/pip-install.log" 2>&1; then
      # e.g. an old setuptools without bdist_wheel in the new venv: the checkout on sys.path does the same
      echo "pip install -e . failed offline (see $VENV/pip-install.log): using the checkout through a .pth file"
      pwd > "$site_dir/_gpu_check_generalad.pth"
    fi
  else
    echo "no CUDA torch in $PY: plain venv + pip install -e . (downloads the pinned torch)"
    "$PY" -m venv "$VENV" || exit 2
    "$VPY" -m pip install -q -e . || exit 2
  fi
fi
echo "environment ready in $(( $(date +%s) - t )) s"
"$VPY" - <<'EOF'
import importlib, torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
missing = []
for name in ("timm", "safetensors", "numpy", "scipy", "sklearn", "PIL", "tqdm", "yaml", "faiss", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')}")
    except ImportError:
        missing.append(name)
if missing:
    print("  missing: " + ", ".join(missing) + " (faiss: the torch k-NN backend is used; pytest: tests skipped)")
EOF

if [ "${GPU_CHECK_TESTS:-1}" != "0" ] && "$VPY" -c "import pytest" 2>/dev/null; then
  echo "== tests/test_device.py"
  budget=$(( $(left) - 120 ))
  [ "$budget" -gt "${GPU_CHECK_TEST_S:-120}" ] && budget=${GPU_CHECK_TEST_S:-120}
  if [ "$budget" -gt 10 ]; then
    timeout -k 5 "$budget" "$VPY" -m pytest -q -p no:cacheprovider tests/test_device.py \
      || echo "tests/test_device.py: FAILED or timed out (status $?)"
  else
    echo "skipped: only $(left) s left"
  fi
fi

echo "== gpu_check.py"
remaining=$(( $(left) - 5 ))
if [ "$remaining" -lt 60 ]; then
  echo "gpu_check: error: only $remaining s left of GPU_CHECK_TOTAL_S=$TOTAL for the runs" >&2
  exit 2
fi
timeout -k 5 "$remaining" "$VPY" benchmarks/gpu_check.py --budget-s $(( remaining - 15 )) "$@"
status=$?
[ "$status" -eq 124 ] && echo "gpu_check: error: timed out after $remaining s" >&2
echo "== total $(( $(date +%s) - START )) s, status $status"
exit "$status"
