#!/usr/bin/env bash
# Synthetic speech recognition end to end on CPU: make a corpus with espeak-ng, train a small
# Conformer with joint CTC/attention, score the test split (sentences never seen in training),
# and transcribe a recording of a new sentence by a voice setting it never heard.
# Extra arguments are config overrides, e.g. `bash recipes/synth_speech/run.sh trainer.max_epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/synth_speech
EXP=exp/synth_speech

echo "== 1/4 corpus (espeak-ng) -> $DATA"
"$PYTHON" recipes/synth_speech/prepare.py --out "$DATA"

echo "== 2/4 training -> $EXP"
start=$(date +%s)
OMP_NUM_THREADS=1 "$MMSEQ" train --nproc 2 recipes/synth_speech/config.yaml output_dir="$EXP" "$@"
echo "training took $(( $(date +%s) - start )) s"

echo "== 3/4 test split"
"$MMSEQ" eval "$EXP/best" "$DATA/test.jsonl" --out "$EXP/eval-test"

echo "== 4/4 transcribe a new recording"
sentence="$("$PYTHON" recipes/synth_speech/prepare.py --new-sentence)"
"$PYTHON" recipes/synth_speech/prepare.py --say "$sentence" --wav "$EXP/new.wav" --voice en-gb-scotland+m5 --speed 160
echo "said:        $sentence"
echo "transcribed: $("$MMSEQ" transcribe "$EXP/best" "$EXP/new.wav")"
"$PYTHON" - "$EXP/eval-test/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"test WER {m['wer']:.2f}%  CER {m['cer']:.2f}%  ({m['words']} words, {m['examples']} utterances never seen in training)")
PY
