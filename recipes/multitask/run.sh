#!/usr/bin/env bash
# One decoder for three tasks, against three single-task models of the same size trained for the
# same steps per task: speech recognition (synth_speech), image captioning (synth_caption) and
# numbers to words (synth_text). Prints each task's test scores side by side.
# Extra arguments are overrides for all four runs, e.g. `bash recipes/multitask/run.sh trainer.max_epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tools/setup.sh)"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/multitask
EXP=exp/multitask
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small models: one math thread is fastest
SPEECH="${SPEECH:-data/synth_speech}"            # an existing speech corpus may be named instead

echo "== 1/4 corpora"
[ -f "$SPEECH/train.jsonl" ] || "$PYTHON" recipes/synth_speech/prepare.py --out "$SPEECH"
"$PYTHON" recipes/synth_caption/prepare.py --out data/synth_caption_small --num-train 400 --num-valid 100 --num-test 200
"$PYTHON" recipes/synth_text/prepare.py --out data/synth_text
"$PYTHON" recipes/multitask/prepare.py --out "$DATA" --corpus asr="$SPEECH" --corpus text=data/synth_text \
  --corpus caption=data/synth_caption_small --limit asr=1500 --limit text=3000 --limit caption=400 --valid-limit 100

echo "== 2/4 one model for three tasks -> $EXP"
"$MMSEQ" train recipes/multitask/config.yaml output_dir="$EXP" "$@"

echo "== 3/4 three single-task models of the same size, the same steps per task"
for task in asr caption text; do
  "$PYTHON" recipes/multitask/single_task.py recipes/multitask/config.yaml "$task" "exp/single_$task" > "exp/single_$task.yaml"
  "$MMSEQ" train "exp/single_$task.yaml" "$@"
done

echo "== 4/4 test scores"
for task in asr caption text; do
  "$MMSEQ" eval "$EXP/best" "$DATA/$task/test.jsonl" --out "$EXP/eval-$task"
  "$MMSEQ" eval "exp/single_$task/best" "$DATA/$task/test.jsonl" --out "exp/single_$task/eval-test"
done
"$PYTHON" - <<'PY'
import json
rows = [("asr", ["wer", "cer"]), ("caption", ["CIDEr", "Bleu_4"]), ("text", ["exact", "bleu", "chrf"])]
print(f"{'task':<8} {'metric':<7} {'single-task':>12} {'multitask':>10}")
for task, names in rows:
    single = json.load(open(f"exp/single_{task}/eval-test/metrics.json"))
    multi = json.load(open(f"exp/multitask/eval-{task}/metrics.json"))
    for name in names:
        print(f"{task:<8} {name:<7} {single[name]:>12.2f} {multi[name]:>10.2f}")
PY
