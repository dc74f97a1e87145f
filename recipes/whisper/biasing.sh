#!/usr/bin/env bash
# Contextual biasing on real speech (after run.sh, with data/real/cv100 from tools/real_speech.py): lists built
# as the LibriSpeech biasing lists, the biasing-aware LoRA trained on espeak-ng speech, then every way of giving
# the list to Whisper-base beside faster-whisper's (tools/bench_biasing.py; time it alone on the machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
"$PYTHON" -c "import wordfreq, faster_whisper" 2>/dev/null || "$VENV/bin/pip" install -q -e ".[test,bench]"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
LISTS=exp/biasing/lists

for n in 100 1000; do
  "$PYTHON" tools/biasing_lists.py data/real/cv100/manifest.jsonl --n "$n" --out "$LISTS/cv100_n$n.jsonl"
done
for split in train:1 valid:2; do  # training lists: 0-100 distractors, 15 % none, 15 % distractors alone
  "$PYTHON" tools/biasing_lists.py "data/synth_speech/${split%%:*}.jsonl" --n 100 --random-n --empty 0.15 --wrong 0.15 \
    --as context --seed "${split#*:}" --out "data/synth_speech/${split%%:*}_context.jsonl"
done
"$VENV/bin/mmseq" train recipes/whisper/biasing_lora.yaml

# The dev set the settings were chosen on (LJSpeech clips, data/real/ljspeech): boost weights, context joins.
"$PYTHON" tools/biasing_lists.py data/real/ljspeech/manifest.jsonl --n 100 --out "$LISTS/lj_n100.jsonl"
DEV=("$PYTHON" tools/bench_biasing.py "$LISTS/lj_n100.jsonl" --threads 2 --out exp/biasing/dev2)
"${DEV[@]}" --conditions none,context
"${DEV[@]}" --conditions context --context-join " " --tag .space
for w in 0.5 1 2 3; do "${DEV[@]}" --conditions boost --boost-weight "$w" --tag ".w$w"; done
for w in 1 2; do "${DEV[@]}" --conditions both --boost-weight "$w" --context-join " " --tag ".space.w$w"; done

# Weights as chosen there: 1 with the context (2 ran away), 3 for the boost alone.
BENCH=("$PYTHON" tools/bench_biasing.py --threads 2 --out exp/biasing/test)
LORA=(--prompt-tuning exp/whisper_biasing_lora/best --task biased --context-join " " --boost-weight 1 --tag .lora)
for n in 100 1000; do
  "${BENCH[@]}" "$LISTS/cv100_n$n.jsonl" --conditions none,context,both,fw-prompt,fw-hotwords --boost-weight 1
  "${BENCH[@]}" "$LISTS/cv100_n$n.jsonl" --conditions boost --boost-weight 3 --tag .w3
  "${BENCH[@]}" "$LISTS/cv100_n$n.jsonl" --conditions context,both "${LORA[@]}"
done
"$PYTHON" tools/bench_boost_cost.py "$LISTS/cv100_n1000.jsonl"
