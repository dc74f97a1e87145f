#!/usr/bin/env bash
# Adaptation by prompt on the espeak-ng domain (after run.sh): deep prompts, LoRA on the decoder, LoRA on
# decoder and encoder, each a small folder over exp/whisper-base-tail1, scored on the domain's test set and
# on real speech through the adapted task and through the base's own task (what it forgot).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
MMSEQ="$VENV/bin/mmseq"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

for run in deep_prompts:whisper_synth_deep lora:whisper_synth_lora lora_encoder:whisper_synth_lora_enc; do
  recipe="${run%%:*}" out="exp/${run#*:}"
  echo "== $recipe -> $out"
  "$MMSEQ" train "recipes/whisper/$recipe.yaml"
  "$MMSEQ" eval "$out/best" data/synth_speech/test.jsonl --task synth --out "$out/eval-synth-test"
  if [ -f data/real/cv100/manifest.jsonl ]; then
    "$MMSEQ" eval "$out/best" data/real/cv100/manifest.jsonl --task synth --out "$out/eval-cv100"
    "$MMSEQ" eval exp/whisper-base data/real/cv100/manifest.jsonl --prompt-tuning "$out/best" --task asr \
      --out "$out/eval-cv100-base-task"
  fi
done
