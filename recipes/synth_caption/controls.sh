#!/usr/bin/env bash
# Length controls that steer captions (issue 12): train config.yaml (uncontrolled) and controls.yaml
# (each training caption carries <|short|> or <|long|>, derived from its word count when read) with
# the same schedule, decode the test split (scenes never seen in training) with each model, the
# controlled one under <|short|>, <|long|> and no control, and print mean words per caption and
# CIDEr against all references and against the references of each kind (controls.py).
# A run already in its folder is resumed (a finished one is left as it is). Extra arguments are
# config overrides given to both trainings, e.g. `bash recipes/synth_caption/controls.sh trainer.max_epochs=6`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-$(bash tools/setup.sh)}"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/synth_caption
PLAIN=exp/synth_caption
CONTROLLED=exp/synth_caption_controls

echo "== 1/3 corpus (shapes) -> $DATA"
"$PYTHON" recipes/synth_caption/prepare.py --out "$DATA"

echo "== 2/3 training"
for pair in "config.yaml $PLAIN" "controls.yaml $CONTROLLED"; do
  config=${pair% *}; out=${pair#* }
  start=$(date +%s)
  "$MMSEQ" train "recipes/synth_caption/$config" output_dir="$out" "$@"
  echo "$config took $(( $(date +%s) - start )) s"
done

echo "== 3/3 test split, with and without controls"
"$MMSEQ" eval "$PLAIN/best" "$DATA/test.jsonl" --out "$PLAIN/eval-test" > /dev/null
"$MMSEQ" eval "$CONTROLLED/best" "$DATA/test.jsonl" --out "$CONTROLLED/eval-none" > /dev/null
for control in short long; do
  "$MMSEQ" eval "$CONTROLLED/best" "$DATA/test.jsonl" --prompt "<|$control|>" --out "$CONTROLLED/eval-$control" > /dev/null
done
"$PYTHON" recipes/synth_caption/controls.py --checkpoint "$CONTROLLED/best" --json "$CONTROLLED/controls.json" \
  "plain=$PLAIN/eval-test/hypotheses.jsonl" \
  "controlled, none=$CONTROLLED/eval-none/hypotheses.jsonl" \
  "controlled, <|short|>=$CONTROLLED/eval-short/hypotheses.jsonl" \
  "controlled, <|long|>=$CONTROLLED/eval-long/hypotheses.jsonl"
