#!/usr/bin/env bash
# Idempotent setup of .venv for every make target: torch==2.13.0 first (the CPU build on disk here; a looser
# pin would pull several GB of CUDA packages), then bnlab in editable mode with its extras.
# Quiet when there is nothing to do: a stamp holds a hash of the files that decide what is installed.
# Debian packages the lab uses (Fashion-MNIST, Chromium for the report test) are installed where apt-get can
# run as root; elsewhere setup says how to get them and goes on (the tests that need them skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.bnlab-setup"
# lab: make run and the lab's tests; triton: CI tests its kernels under the interpreter; compat: Keras and Flax,
# which bnlab.compat is tested against; test-models: the tools on Hugging Face's vision models (tests, benchmarks)
EXTRAS="${BNLAB_EXTRAS:-dev,lab,triton,compat,test-models}"
DEBIAN_PACKAGES=(dataset-fashion-mnist chromium)
want=$( (cat pyproject.toml scripts/setup.sh; echo "$EXTRAS") | sha256sum | cut -c1-16)

debian_missing() {
  local pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || echo "$pkg"
  done
}

install_debian_packages() {
  local missing
  command -v dpkg-query >/dev/null 2>&1 || { echo "bnlab: not a Debian system: install Fashion-MNIST" \
    "(the four IDX .gz files; pass --data-dir or set BNLAB_DATA) and Chromium yourself if you want them"; return 0; }
  mapfile -t missing < <(debian_missing)
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null 2>&1 || [[ $(id -u) -ne 0 ]]; then
    echo "bnlab: optional Debian packages missing: ${missing[*]}; install them with" \
      "'sudo apt-get install -y ${missing[*]}' (until then the tests that need them are skipped)"
    return 0
  fi
  echo "bnlab: installing Debian packages: ${missing[*]}..."
  local log
  log=$(mktemp)
  # A fresh image may have no package lists yet: update once and try again.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
    && ! { DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
              >>"$log" 2>&1; }; then
    tail -n 5 "$log"
    echo "bnlab: could not install ${missing[*]} (see above); going on without them"
  fi
  rm -f "$log"
}

can_apt() {
  command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  # The venv is ready. A Debian package that failed to install earlier is tried again where apt-get can run
  # (the dpkg-query check is cheap and prints nothing when all are installed).
  if can_apt && [[ -n "$(debian_missing)" ]]; then
    install_debian_packages
  fi
  exit 0
fi
install_debian_packages

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
