#!/usr/bin/env bash
# Synthetic image captioning end to end on CPU: render a corpus of shapes with five captions each,
# train a small ConvNeXt captioner from scratch with cross-entropy, score the test split (scenes never
# seen in training) with BLEU, METEOR, ROUGE-L and CIDEr, and caption a test image with a map of
# where the decoder looked for each word. SCST=1 adds the self-critical stage (scst.yaml) and scores it too.
# Extra arguments are config overrides, e.g. `bash recipes/synth_caption/run.sh trainer.max_epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/synth_caption
EXP=exp/synth_caption

echo "== 1/4 corpus (shapes) -> $DATA"
"$PYTHON" recipes/synth_caption/prepare.py --out "$DATA"

echo "== 2/4 training -> $EXP"
start=$(date +%s)
"$MMSEQ" train recipes/synth_caption/config.yaml output_dir="$EXP" "$@"
echo "training took $(( $(date +%s) - start )) s"

echo "== 3/4 test split"
"$MMSEQ" eval "$EXP/best" "$DATA/test.jsonl" --out "$EXP/eval-test"
BEST="$EXP/best"
METRICS=("$EXP/eval-test/metrics.json")
if [ "${SCST:-0}" = 1 ]; then
  echo "== 3b/4 self-critical sequence training -> ${EXP}_scst"
  start=$(date +%s)
  "$MMSEQ" train recipes/synth_caption/scst.yaml output_dir="${EXP}_scst" scst.init_from="$EXP/best"
  echo "SCST took $(( $(date +%s) - start )) s"
  "$MMSEQ" eval "${EXP}_scst/best" "$DATA/test.jsonl" --out "${EXP}_scst/eval-test"
  BEST="${EXP}_scst/best"
  METRICS+=("${EXP}_scst/eval-test/metrics.json")
fi

echo "== 4/4 caption a test image, with its attention map"
image="$DATA/$("$PYTHON" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["image"])' "$DATA/test.jsonl")"
echo "image:     $image"
echo "caption:   $("$MMSEQ" caption "$BEST" "$image" --attention "$EXP/attention.png")"
echo "truth:     $("$PYTHON" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["captions"][0])' "$DATA/test.jsonl")"
echo "attention: $EXP/attention.png"
"$PYTHON" - "${METRICS[@]}" <<'PY'
import json, sys
for path in sys.argv[1:]:
    m = json.load(open(path))
    scores = "  ".join(f"{k} {m[k]:.3f}" for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr") if k in m)
    print(f"{path}: {scores}  ({m['examples']} test images, scenes never seen in training)")
PY
