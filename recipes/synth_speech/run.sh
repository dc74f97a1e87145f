#!/usr/bin/env bash
# Open-vocabulary synthetic speech recognition end to end on CPU: speak WordNet's English with espeak-ng,
# train a small Conformer with joint CTC/attention, count a token 6-gram LM on far more text, choose the
# decoding settings on the valid split, score the WordNet test and the other-source test (The Devil's
# Dictionary) with and without the LM, and transcribe a sentence from outside the corpus by an unheard voice.
# Extra arguments are config overrides of the speech model, e.g. `bash recipes/synth_speech/run.sh trainer.max_epochs=2`;
# `FULL=1 bash recipes/synth_speech/run.sh` runs the hour-long version (full.yaml, twice the utterances).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
if [ "${FULL:-0}" = 1 ]; then
  CONFIG=recipes/synth_speech/full.yaml DATA=data/synth_speech_full EXP=exp/synth_speech_full NUM_TRAIN=16000
else
  CONFIG=recipes/synth_speech/config.yaml DATA=data/synth_speech EXP=exp/synth_speech NUM_TRAIN=8000
fi
LM="${EXP}_ngram"

echo "== 1/6 corpus (Debian text packages, espeak-ng) -> $DATA"
"$PYTHON" recipes/synth_speech/prepare.py --out "$DATA" --num-train "$NUM_TRAIN"

echo "== 2/6 speech model -> $EXP"
start=$(date +%s)
OMP_NUM_THREADS=1 "$MMSEQ" train --nproc 2 "$CONFIG" output_dir="$EXP" "$@"
echo "speech model training took $(( $(date +%s) - start )) s"

echo "== 3/6 language model -> $LM: token 6-grams of lm.jsonl (about 4 million words), the speech model's pieces"
# Counted in a few minutes (7 GB of memory at the peak); six pieces span about two words. A Transformer
# LM (lm.yaml) needs about an hour of this CPU to help (see the README).
start=$(date +%s)
"$MMSEQ" ngram "$EXP/best" "$DATA/lm.jsonl" --order 6 --prune 2 --out "$LM"
echo "language model counting took $(( $(date +%s) - start )) s"

echo "== 4/6 decoding settings, chosen on the valid split only"
# The grid: 24 settings (beam 8 or 16, CTC, LM weight, length scoring), one process each, on the whole valid split.
OMP_NUM_THREADS=1 "$PYTHON" recipes/synth_speech/score.py tune "$EXP/best" "$DATA/valid.jsonl" --lm "$LM" \
  --jobs 2 --out "$EXP/decoding.json"

echo "== 5/6 test splits: WordNet (in-source) and The Devil's Dictionary (other source)"
OMP_NUM_THREADS=1 "$PYTHON" recipes/synth_speech/score.py report "$EXP/best" "$DATA" --decoding "$EXP/decoding.json" \
  --lm "$LM" --jobs 2 --out "$EXP/report.json"

echo "== 6/6 transcribe a sentence from outside the corpus, spoken by a voice training never heard"
sentence="$("$PYTHON" recipes/synth_speech/prepare.py --out "$DATA" --num-train "$NUM_TRAIN" --new-sentence)"
"$PYTHON" recipes/synth_speech/prepare.py --say "$sentence" --wav "$EXP/new.wav" --voice en-us-nyc+m5 --speed 160
read -r -a flags <<< "$("$PYTHON" recipes/synth_speech/score.py flags "$EXP/decoding.json" --lm "$LM")"
echo "said:        $sentence"
echo "transcribed: $("$MMSEQ" transcribe "$EXP/best" "$EXP/new.wav" "${flags[@]}")"
