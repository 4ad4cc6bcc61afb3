#!/usr/bin/env bash
# Idempotent setup of .venv for every make target: torch==2.13.0 first (the CPU build on disk here; a looser
# pin would pull several GB of CUDA packages), then bnlab in editable mode with its extras.
# Quiet when there is nothing to do: a stamp holds a hash of the files that decide what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.bnlab-setup"
EXTRAS="${BNLAB_EXTRAS:-dev,triton}"  # triton: CI tests its kernels under the interpreter
want=$( (cat pyproject.toml scripts/setup.sh; echo "$EXTRAS") | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

echo "bnlab: setting up $VENV (first run, or pyproject.toml changed)..."
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"

pip_install() {
  # pip's notes about this machine's unused index folders are noise; real errors are printed in full.
  local log
  log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    return 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
}

pip_install torch==2.13.0
pip_install -e ".[$EXTRAS]"
echo "$want" >"$STAMP"
echo "bnlab: $VENV ready"
