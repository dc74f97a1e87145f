#!/usr/bin/env bash
# Text to text end to end on CPU: make the numbers-to-words corpus, train a small Transformer
# (character source encoder, shared decoder over sentencepiece word pieces), score the test split
# (numbers never seen in training) with BLEU, chrF and exact match, and spell a new number.
# Extra arguments are config overrides, e.g. `bash recipes/synth_text/run.sh trainer.max_epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/synth_text
EXP=exp/synth_text
# A model this small runs fastest on one math thread (more threads only wait on each other).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== 1/4 corpus -> $DATA"
"$PYTHON" recipes/synth_text/prepare.py --out "$DATA"

echo "== 2/4 training -> $EXP"
start=$(date +%s)
"$MMSEQ" train recipes/synth_text/config.yaml output_dir="$EXP" "$@"
echo "training took $(( $(date +%s) - start )) s"

echo "== 3/4 test split"
"$MMSEQ" eval "$EXP/best" "$DATA/test.jsonl" --out "$EXP/eval-test"

echo "== 4/4 spell a new number"
"$PYTHON" - "$EXP/best" <<'PY'
import sys
import mmseq
model = mmseq.load(sys.argv[1])
for number in ["7", "1203", "40017", "999999"]:
    print(f"{number:>7} -> {model.translate([number])[0]}")
PY
"$PYTHON" - "$EXP/eval-test/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"test BLEU {m['bleu']:.2f}  chrF {m['chrf']:.2f}  exact match {m['exact']:.2f}%  "
      f"({m['examples']} numbers never seen in training)")
PY
