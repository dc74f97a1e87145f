#!/usr/bin/env bash
# COCO captioning on the Karpathy split, for one GPU: cross-entropy, then SCST, then the test split.
#   bash recipes/coco/run.sh resnet101      # or: vit_base
# Needs data/coco/ as README.md describes (images, dataset_coco.json, captions_*2014.json) and the
# backbone's ImageNet weights (fetched from the Hugging Face hub, or pretrained_file=... offline).
# Extra arguments are overrides for both stages, e.g. `bash recipes/coco/run.sh vit_base data.num_workers=4`.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${1:?usage: run.sh resnet101|vit_base [overrides...]}"; shift
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/coco
EXP=exp/coco

echo "== 1/4 manifests -> $DATA"
if [ ! -f "$DATA/train.jsonl" ]; then
  "$PYTHON" tools/coco_to_manifest.py --karpathy "$DATA/dataset_coco.json" \
    --captions "$DATA/annotations/captions_train2014.json" "$DATA/annotations/captions_val2014.json" \
    --images "$DATA/images" --out "$DATA"
fi

echo "== 2/4 cross-entropy -> $EXP/${MODEL}_xe"
"$MMSEQ" train "recipes/coco/${MODEL}_xe.yaml" "$@"

echo "== 3/4 self-critical sequence training -> $EXP/${MODEL}_scst"
"$MMSEQ" train "recipes/coco/${MODEL}_scst.yaml" "$@"

echo "== 4/4 Karpathy test split (5,000 images), beam 3"
for stage in xe scst; do
  "$MMSEQ" eval "$EXP/${MODEL}_${stage}/best" "$DATA/test.jsonl" --beam-size 3 --batch-size 50 \
    --out "$EXP/${MODEL}_${stage}/eval-test"
done
