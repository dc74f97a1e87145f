#!/usr/bin/env bash
# The Whisper speed and agreement comparison, in one run (run it alone on the machine): mmseq
# (30-s windows and a 10-s tail; float32 and int8) against faster-whisper (float32 and int8, one
# clip at a time and its BatchedInferencePipeline) and transformers' generate(), on the same
# Whisper-base weights and the same clips, greedy and beam 5, two threads each.
#   bash tools/bench_whisper.sh [MANIFEST]       (default data/real/cv100/manifest.jsonl)
# Needs: python tools/fetch_whisper.py; mmseq import whisper (exp/whisper-base; with --tail 10
# exp/whisper-base-t10; with --feature-padding zeros exp/whisper-base-fw, faster-whisper's padding); mmseq export exp/whisper-base --format transformers --out exp/whisper-base-hf;
# pip install "mmseq[bench]".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
MANIFEST="${1:-data/real/cv100/manifest.jsonl}"
OUT="${OUT:-exp/bench_whisper}"
bench() { "$PYTHON" tools/bench_whisper.py --manifest "$MANIFEST" --threads 2 --out "$OUT" "$@"; }
bench --systems faster-whisper-f32,faster-whisper-int8 --beam 1
bench --systems faster-whisper-batched-f32,faster-whisper-batched-int8 --beam 1 --batch-size 8
bench --systems mmseq,mmseq-int8 --mmseq-model exp/whisper-base --beam 1
bench --systems mmseq,mmseq-int8 --mmseq-model exp/whisper-base-t10 --beam 1
bench --systems mmseq --mmseq-model exp/whisper-base-fw --beam 1
bench --systems transformers --hf-model exp/whisper-base-hf --beam 1
bench --systems faster-whisper-f32 --beam 5
bench --systems mmseq --mmseq-model exp/whisper-base --beam 5
bench --systems mmseq --mmseq-model exp/whisper-base-fw --beam 5
bench --systems transformers --hf-model exp/whisper-base-hf --beam 5
