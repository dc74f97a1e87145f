#!/usr/bin/env bash
# Make or reuse the virtual environment and install what mmseq needs (system packages too).
# Usage: source-free; `bash tools/setup.sh` prints nothing on a warm machine but the venv path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MMSEQ_VENV:-.venv}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)  # pycocoevalcap's tokenizer and METEOR
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get" >&2
  as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || echo "setup: could not install ${missing[*]}; the speech demo needs espeak-ng" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Reinstall only when the project's requirements changed (pip keeps its download cache in ~/.cache/pip).
stamp="$VENV/.mmseq-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import mmseq" 2>/dev/null; then
  echo "setup: installing mmseq and its dependencies into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]" >&2
  echo "$want" > "$stamp"
fi
echo "$VENV"
