#!/usr/bin/env bash
# msc_seg driver.
#   ./run.sh                      set up .venv, build the demo data, train + evaluate the demo config
#   ./run.sh test [pytest args]   run the whole test suite
#   ./run.sh train CONFIG [--config.x=y ...] [--workdir=DIR]
#   ./run.sh eval  CONFIG [--checkpoint=latest|best|STEP] [--workdir=DIR]
#   ./run.sh bench [NAME]         run benchmarks/NAME.py (default: all)
# Environment: PYTHON (default python3), MSC_SEG_EXTRAS (pip extras, default "test"),
# TFDS_DATA_DIR (default ./.data/tensorflow_datasets), WORKDIR (default runs/<config name>).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
EXTRAS="${MSC_SEG_EXTRAS:-test}"
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$PWD/.data/tensorflow_datasets}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "msc_seg needs Python >= 3.11 (PYTHON=$PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
  fi
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  local stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
  if [ ! -f "$stamp" ]; then
    echo "Installing msc_seg[$EXTRAS] into .venv ..."
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

config_workdir() {  # CONFIG ARGS... -> prints the --workdir value (given, or runs/<name>)
  local cfg="$1"; shift
  for a in "$@"; do case "$a" in --workdir=*) echo "${a#--workdir=}"; return;; esac; done
  local name; name="$(basename "${cfg%%:*}" .py)"
  echo "${WORKDIR:-runs/$name}"
}

strip_workdir() { for a in "$@"; do case "$a" in --workdir=*) ;; *) printf '%s\0' "$a";; esac; done; }

cmd="${1:-demo}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup
    wd="${WORKDIR:-runs/demo}"
    echo "== Building the demo dataset into $TFDS_DATA_DIR"
    .venv/bin/python -m msc_seg.data.prepare --dataset=demo --data_dir="$TFDS_DATA_DIR"
    echo "== Training configs/demo.py in $wd"
    .venv/bin/python -m msc_seg.main --config=configs/demo.py --workdir="$wd" "$@"
    echo "== Evaluating the final checkpoint of $wd"
    .venv/bin/python -m msc_seg.main --mode=eval --config=configs/demo.py --workdir="$wd" "$@"
    ;;
  test)
    setup
    .venv/bin/python -m pytest -q -n 2 --dist=loadfile --durations=15 "$@"
    ;;
  train|eval)
    [ $# -ge 1 ] || { echo "usage: ./run.sh $cmd CONFIG [--config.x=y ...] [--workdir=DIR]" >&2; exit 2; }
    setup
    cfg="$1"; shift
    wd="$(config_workdir "$cfg" "$@")"
    mapfile -d '' rest < <(strip_workdir "$@")
    .venv/bin/python -m msc_seg.main --mode="$cmd" --config="$cfg" --workdir="$wd" "${rest[@]}"
    ;;
  bench)
    setup
    if [ $# -ge 1 ]; then .venv/bin/python "benchmarks/$1.py" "${@:2}";
    else for b in benchmarks/*.py; do .venv/bin/python "$b"; done; fi
    ;;
  lint)
    setup
    .venv/bin/ruff check msc_seg tests benchmarks configs
    ;;
  *)
    echo "unknown command '$cmd'; use: (none) | test | train CONFIG | eval CONFIG | bench [NAME] | lint" >&2
    exit 2
    ;;
esac
