#!/usr/bin/env bash
# Set-up and entry point. Creates the virtual environment on first use (CPU torch first,
# so pip never pulls a multi-GB CUDA build), reinstalls when pyproject.toml changes.
#
#   bash scripts/fm.sh demo [options]   the main job on a synthetic cohort
#   bash scripts/fm.sh test [pytest args]   the test suite
#   bash scripts/fm.sh run COMMAND ...  any fusion-model command
#   bash scripts/fm.sh docs [serve]     the documentation site into site/ (strict), or served while you edit
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FUSION_MODEL_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC="${FUSION_MODEL_TORCH:-torch==2.13.0}"
STAMP="$VENV/.fusion-model-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV (one time) ..." >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    LOG="$VENV/install.log"
    {
        "$VENV/bin/python" -m pip install -q --upgrade pip &&
        # CPU build of torch first; FUSION_MODEL_TORCH_INDEX may name a CPU wheel index elsewhere.
        "$VENV/bin/python" -m pip install -q ${FUSION_MODEL_TORCH_INDEX:+--index-url "$FUSION_MODEL_TORCH_INDEX"} "$TORCH_SPEC" &&
        "$VENV/bin/python" -m pip install -q -e ".[dev]"
    } > "$LOG" 2>&1 || { cat "$LOG" >&2; echo "set-up failed; the log above is also in $LOG" >&2; exit 1; }
    echo "$WANT" > "$STAMP"
fi

cmd="${1:-demo}"
shift || true
case "$cmd" in
    demo) exec "$VENV/bin/fusion-model" demo "$@" ;;
    test) exec "$VENV/bin/python" -m pytest "$@" ;;
    run)  exec "$VENV/bin/fusion-model" "$@" ;;
    docs) export NO_MKDOCS_2_WARNING=1
          if [ "${1:-}" = serve ]; then exec "$VENV/bin/python" -m mkdocs serve --strict; fi
          exec "$VENV/bin/python" -m mkdocs build --strict ;;
    *) echo "usage: bash scripts/fm.sh demo|test|run|docs ..." >&2; exit 2 ;;
esac
