#!/usr/bin/env bash
# Contextual biasing by prompt, end to end on CPU: sentences with names (wamerican's proper nouns) spoken by
# espeak-ng, a small Conformer trained with each line's context listing its names among distractors (and
# with the context dropped from 30 % of lines), then the test split's names, which training never saw,
# decoded with and without them in the context. Extra arguments are config overrides of the model,
# e.g. `bash recipes/synth_bias/run.sh trainer.max_epochs=3`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/synth_bias EXP=exp/synth_bias

echo "== 1/3 corpus (wamerican's names, espeak-ng) -> $DATA"
"$PYTHON" recipes/synth_bias/prepare.py --out "$DATA"

echo "== 2/3 speech model with contexts -> $EXP"
start=$(date +%s)
OMP_NUM_THREADS=1 "$MMSEQ" train --nproc 2 recipes/synth_bias/config.yaml output_dir="$EXP" "$@"
echo "training took $(( $(date +%s) - start )) s"

echo "== 3/3 unseen names with and without context; seen names"
OMP_NUM_THREADS=1 "$PYTHON" recipes/synth_bias/score.py "$EXP/best" "$DATA" --jobs 2 --out "$EXP/report.json"

line="$(head -n 1 "$DATA/test.jsonl")"
audio="$DATA/$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["audio"])' "$line")"
context="$(head -n 1 "$DATA/test_context.jsonl" | "$PYTHON" -c 'import json, sys; print(", ".join(json.loads(sys.stdin.read())["context"]))')"
echo "said:                 $("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["text"])' "$line")"
echo "without context:      $("$MMSEQ" transcribe "$EXP/best" "$audio" | cut -f2)"
echo "context '$context': $("$MMSEQ" transcribe "$EXP/best" "$audio" --context "$context" | cut -f2)"
