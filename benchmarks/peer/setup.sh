#!/usr/bin/env bash
# Peer benchmark (issue 17 item 4): anomalib 2.7.0 in its own virtual environment, weights injected offline.
#
#   bash benchmarks/peer/setup.sh            # idempotent: creates / completes the venv, injects the weights
#
# PEER_VENV  (default /work/peer-venv)   the anomalib venv, outside the repository
# PEER_CACHE (default /work/peer-cache)  the local Hugging Face hub cache the weights are injected into
# MAIN_PY    (default .venv/bin/python)  generalad's own venv: it reads the bundled Lite0 file and converts keys
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEER_VENV="${PEER_VENV:-/work/peer-venv}"
PEER_CACHE="${PEER_CACHE:-/work/peer-cache}"
MAIN_PY="${MAIN_PY:-$ROOT/.venv/bin/python}"
PY="${PYTHON:-python3}"

# the exact versions the benchmark was set up with; torch / torchvision match generalad's venv
PINS=(anomalib==2.7.0 torch==2.14.1 torchvision==0.29.1)

if [ ! -x "$PEER_VENV/bin/python" ]; then
  echo "[setup] creating $PEER_VENV"
  "$PY" -m venv "$PEER_VENV"
fi
if ! "$PEER_VENV/bin/python" - "${PINS[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have.split("+")[0] != want:
        sys.exit(1)
import anomalib.models  # noqa: F401  (import check: PatchCore + GeneralAD need nothing more)
PYEOF
then
  echo "[setup] installing ${PINS[*]} into $PEER_VENV"
  "$PEER_VENV/bin/python" -m pip install --quiet "${PINS[@]}"
fi
"$PEER_VENV/bin/python" -c "from anomalib.models import Patchcore, GeneralAD; print('[setup] anomalib import ok')"
"$PEER_VENV/bin/python" -m pip freeze --all | grep -v '^-e ' > "$HERE/requirements-peer.lock.txt"
echo "[setup] froze $(wc -l < "$HERE/requirements-peer.lock.txt") packages into benchmarks/peer/requirements-peer.lock.txt"

# weights: converted with generalad's own code (main venv), written as timm hub snapshots, checked in anomalib's venv
"$MAIN_PY" "$HERE/inject_weights.py" write --cache "$PEER_CACHE"
"$PEER_VENV/bin/python" "$HERE/inject_weights.py" verify --cache "$PEER_CACHE"
echo "[setup] done: PEER_VENV=$PEER_VENV PEER_CACHE=$PEER_CACHE"
