#!/usr/bin/env bash
# LibriSpeech end to end (README.md here): download (stage 0, only when asked), manifests, training,
# checkpoint averaging, and WER on dev-clean, dev-other, test-clean and test-other.
#
#   bash recipes/librispeech/run.sh                                    # 100 h Conformer, stages 1 to 4
#   STAGE=0 LIBRISPEECH=/data bash recipes/librispeech/run.sh          # download from openslr 12 first
#   CONFIG=recipes/librispeech/conformer_960h.yaml bash recipes/librispeech/run.sh
#   bash recipes/librispeech/run.sh trainer.max_epochs=50             # extra arguments: config overrides
#
# Settings, from the environment:
#   LIBRISPEECH  folder that holds LibriSpeech/ (or LibriSpeech/ itself)       default: data/corpora
#   CONFIG       recipe config                              default: recipes/librispeech/conformer_100h.yaml
#   DATA         manifest folder                                               default: data/librispeech
#   NPROC        training processes, one per GPU                  default: the GPUs nvidia-smi lists, or 1
#   AVERAGE      checkpoints averaged: best:N (by validation, ESPnet's way) or last:N    default: best:10
#   STAGE, STOP_STAGE   first and last stage to run (0 download, 1 prepare, 2 train, 3 average, 4 eval)
#   PYTHON       the Python that has mmseq (default: the one tools/setup.sh makes or finds)
set -euo pipefail
cd "$(dirname "$0")/../.."

LIBRISPEECH="${LIBRISPEECH:-data/corpora}"
CONFIG="${CONFIG:-recipes/librispeech/conformer_100h.yaml}"
DATA="${DATA:-data/librispeech}"
AVERAGE="${AVERAGE:-best:10}"
STAGE="${STAGE:-1}"
STOP_STAGE="${STOP_STAGE:-4}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON="$(bash tools/setup.sh)/bin/python"
fi
if [ -z "${NPROC:-}" ]; then
  NPROC="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
  [ "$NPROC" -ge 1 ] || NPROC=1
fi
EVAL_SPLITS=(dev-clean dev-other test-clean test-other)
run() { [ "$STAGE" -le "$1" ] && [ "$STOP_STAGE" -ge "$1" ]; }

# What the config (with the overrides) names: its output folder and its manifests' file names, which
# this script puts under $DATA.
read -r EXP TRAIN VALID < <("$PYTHON" - "$CONFIG" "$@" <<'PY'
import os, sys
from mmseq.config import load_config
config = load_config(sys.argv[1], sys.argv[2:])
print(config.output_dir, os.path.basename(config.data.train), os.path.basename(config.data.valid))
PY
)
[ -n "${VALID:-}" ] || { echo "run.sh: cannot read $CONFIG with the overrides given" >&2; exit 2; }
case "$TRAIN" in
  train_960.jsonl) TRAIN_SPLITS=(train-clean-100 train-clean-360 train-other-500) ;;
  *) TRAIN_SPLITS=("${TRAIN%.jsonl}") ;;
esac

if run 0; then
  echo "== 0/4 download LibriSpeech (openslr.org/resources/12) -> $LIBRISPEECH"
  mkdir -p "$LIBRISPEECH"
  for split in "${TRAIN_SPLITS[@]}" "${EVAL_SPLITS[@]}"; do
    if [ ! -d "$LIBRISPEECH/LibriSpeech/$split" ]; then
      wget -c -O "$LIBRISPEECH/$split.tar.gz" "https://www.openslr.org/resources/12/$split.tar.gz"
      tar -xzf "$LIBRISPEECH/$split.tar.gz" -C "$LIBRISPEECH" && rm "$LIBRISPEECH/$split.tar.gz"
    fi
  done
fi

if run 1; then
  echo "== 1/4 manifests -> $DATA"
  todo=()
  for split in "${TRAIN_SPLITS[@]}" "${EVAL_SPLITS[@]}"; do
    [ -f "$DATA/$split.jsonl" ] || todo+=("$split")
  done
  if [ ${#todo[@]} -gt 0 ]; then
    "$PYTHON" recipes/librispeech/prepare.py --root "$LIBRISPEECH" --out "$DATA" --splits "${todo[@]}"
  fi
fi

if run 2; then
  echo "== 2/4 training ($NPROC processes) -> $EXP"
  start=$(date +%s)
  "$PYTHON" -m mmseq train --nproc "$NPROC" "$CONFIG" output_dir="$EXP" \
    data.train="$DATA/$TRAIN" data.valid="$DATA/$VALID" "$@"
  echo "training took $(( $(date +%s) - start )) s"
fi

if run 3; then
  echo "== 3/4 average the $AVERAGE checkpoints -> $EXP/average"
  "$PYTHON" -m mmseq average "$EXP" "--${AVERAGE%%:*}" "${AVERAGE##*:}" --out "$EXP/average"
fi

if run 4; then
  echo "== 4/4 word error rates"
  for split in "${EVAL_SPLITS[@]}"; do
    "$PYTHON" -m mmseq eval "$EXP/average" "$DATA/$split.jsonl" --out "$EXP/eval/$split"
  done
  "$PYTHON" - "$EXP" "${EVAL_SPLITS[@]}" <<'PY'
import json, sys
from pathlib import Path
exp, splits = Path(sys.argv[1]), sys.argv[2:]
lines = ["| split | WER % | CER % | sub | del | ins | words | utterances |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for split in splits:
    m = json.loads((exp / "eval" / split / "metrics.json").read_text())
    lines.append(f"| {split} | {m['wer']:.2f} | {m['cer']:.2f} | {m['substitutions']} | {m['deletions']} | "
                 f"{m['insertions']} | {m['words']} | {m['examples']} |")
table = "\n".join(lines) + "\n"
(exp / "results.md").write_text(table)
print(table + f"(also in {exp / 'results.md'}; compare with the anchors in recipes/librispeech/README.md)")
PY
fi
