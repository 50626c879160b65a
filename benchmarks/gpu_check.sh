#!/usr/bin/env bash
# One prepared check of every CUDA path of codemix, for a GPU machine that reaches no registry and no
# data mirror: at most 8 minutes on one H100, one JSON line per check (see benchmarks/gpu_check.py).
#
#   make gpu-bundle                       # here: wheels the GPU machine lacks + the data the check reads
#   bash benchmarks/gpu_check.sh          # there, with .device/ carried beside src/
#   bash benchmarks/gpu_check.sh --cpu    # the same checks at tiny sizes on a CPU (a test runs this)
#   bash benchmarks/gpu_check.sh benchmarks/pack_throughput.py --preset 20m --ks 8 --batch-size 8
#                                         # any other benchmark script, with the same setup
#
# PYTHON picks the interpreter (default: python3); CODEMIX_BUNDLE the bundle (default: .device);
# CODEMIX_DATA the data directory (default: the bundle's data/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${CODEMIX_BUNDLE:-.device}
[ -d "$BUNDLE" ] && BUNDLE=$(cd "$BUNDLE" && pwd)

if ! "$PY" -c "import pydantic, tree_sitter, datasets, submitit, rouge_score" 2>/dev/null; then
  if ! compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
    echo '{"check": "setup", "ok": false, "error": "codemix dependencies missing and no wheels in '"$BUNDLE"'/wheels: run `make gpu-bundle` and carry .device"}'
    exit 1
  fi
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export CODEMIX_DATA=${CODEMIX_DATA:-$BUNDLE/data}
export PYTHONUNBUFFERED=1
if [[ "${1:-}" == *.py ]]; then
  exec "$PY" "$@"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
