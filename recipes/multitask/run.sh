#!/usr/bin/env bash
# One decoder for three tasks, against three single-task models of the same size trained for the
# same steps per task: speech recognition (synth_speech), image captioning (synth_caption) and
# numbers to words (synth_text). Prints each task's test scores side by side, with each training's
# optimizer steps, wall and CPU seconds. PARALLEL=1 trains the four models at once.
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

train() {  # train CONFIG OUTPUT_DIR [overrides]; OUTPUT_DIR/times: wall, user and system seconds
  local config="$1" out="$2" times
  shift 2
  # The training's own output goes where train's does (fds 5, 6); only time's line is captured.
  { times=$( { TIMEFORMAT='%R %U %S'; time "$MMSEQ" train "$config" output_dir="$out" "$@" >&5 2>&6; } 2>&1 ); } 5>&1 6>&2
  echo "$times" > "$out/times"
}

echo "== 1/4 corpora"
[ -f "$SPEECH/train.jsonl" ] || "$PYTHON" recipes/synth_speech/prepare.py --out "$SPEECH"
"$PYTHON" recipes/synth_caption/prepare.py --out data/synth_caption_small --num-train 400 --num-valid 100 --num-test 200
"$PYTHON" recipes/synth_text/prepare.py --out data/synth_text_multitask --small-repeats 10
"$PYTHON" recipes/multitask/prepare.py --out "$DATA" --corpus asr="$SPEECH" --corpus text=data/synth_text_multitask \
  --corpus caption=data/synth_caption_small --limit asr=1500 --limit text=3000 --limit caption=400 --valid-limit 100

echo "== 2/4 one model for three tasks -> $EXP; three single-task models of the same size, the same steps per task"
mkdir -p exp
for task in asr caption text; do
  "$PYTHON" recipes/multitask/single_task.py recipes/multitask/config.yaml "$task" "exp/single_$task" > "exp/single_$task.yaml"
done
runs=("recipes/multitask/config.yaml $EXP" "exp/single_asr.yaml exp/single_asr" "exp/single_caption.yaml exp/single_caption"
      "exp/single_text.yaml exp/single_text")
if [ "${PARALLEL:-0}" = 1 ]; then
  # All four at once, one thread each, output in OUTPUT_DIR.out: on a shared machine compare their
  # CPU seconds rather than wall times.
  pids=()
  for run in "${runs[@]}"; do
    read -r config out <<< "$run"
    train "$config" "$out" "$@" > "$out.out" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
else
  for run in "${runs[@]}"; do
    read -r config out <<< "$run"
    train "$config" "$out" "$@"
  done
fi

echo "== 3/4 test scores"
pids=()
for task in asr caption text; do
  for pair in "$EXP/best $EXP/eval-$task" "exp/single_$task/best exp/single_$task/eval-test"; do
    read -r model out <<< "$pair"
    if [ "${PARALLEL:-0}" = 1 ]; then
      "$MMSEQ" eval "$model" "$DATA/$task/test.jsonl" --out "$out" > "$out.out" 2>&1 &
      pids+=($!)
    else
      "$MMSEQ" eval "$model" "$DATA/$task/test.jsonl" --out "$out"
    fi
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done

echo "== 4/4 side by side"
"$PYTHON" - <<'PY'
import csv, json
def run(folder):  # optimizer steps, wall seconds, CPU seconds (user + system)
    steps = max(int(r["step"]) for r in csv.DictReader(open(f"{folder}/log.csv")))
    wall, user, system = map(float, open(f"{folder}/times").read().split())
    return steps, wall, user + system
rows = [("asr", ["wer", "cer"]), ("caption", ["CIDEr", "Bleu_4"]), ("text", ["exact", "bleu", "chrf"])]
print(f"{'task':<8} {'metric':<7} {'single-task':>12} {'multitask':>10}")
for task, names in rows:
    single = json.load(open(f"exp/single_{task}/eval-test/metrics.json"))
    multi = json.load(open(f"exp/multitask/eval-{task}/metrics.json"))
    multi = {key.split("/", 1)[-1]: value for key, value in multi.items()}  # a multitask model's: asr/wer
    for name in names:
        print(f"{task:<8} {name:<7} {single[name]:>12.2f} {multi[name]:>10.2f}")
singles = {task: run(f"exp/single_{task}") for task, _ in rows}
runs = {**{f"single {task}": value for task, value in singles.items()},
        "single, all three": tuple(sum(v[i] for v in singles.values()) for i in range(3)),
        "multitask": run("exp/multitask")}
print(f"\n{'training':<18} {'steps':>6} {'wall s':>8} {'CPU s':>8}")
for name, (steps, wall, cpu) in runs.items():
    print(f"{name:<18} {steps:>6} {wall:>8.0f} {cpu:>8.0f}")
PY
