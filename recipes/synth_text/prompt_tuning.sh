#!/usr/bin/env bash
# Prompt tuning against fine-tuning (issue 12, item 3). From the numbers-to-words model of run.sh
# (exp/synth_text/best), learn a task it never saw, reading the digits one by one ("1203" -> "one
# two zero three"), by soft prompt vectors only (prompt_tuning.yaml; a few vector counts and
# learning rates, deep prompts), by LoRA on the decoder's attention beside the vectors, and by
# training every weight for the same number of steps (finetune.yaml).
# Prints, for each run, the held-out test score, the trainable parameters (% of the model), the
# checkpoint's size, and the original task's test score through the same weights.
# Run run.sh first (or give BASE=folder). Extra arguments are overrides for every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
MMSEQ="${MMSEQ:-.venv/bin/mmseq}"
BASE="${BASE:-exp/synth_text/best}"
DATA=data/synth_digits
EXP="${EXP:-exp/synth_digits}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# name, config, overrides
RUNS=(
  "prompt-v20-lr0.03|prompt_tuning.yaml|prompt_tuning.vectors=20 trainer.lr=0.03"
  "prompt-v20-lr0.3|prompt_tuning.yaml|prompt_tuning.vectors=20 trainer.lr=0.3"
  "prompt-v40-lr0.3|prompt_tuning.yaml|prompt_tuning.vectors=40 trainer.lr=0.3"
  "deep-v20-lr0.1|prompt_tuning.yaml|prompt_tuning.vectors=20 prompt_tuning.deep=true trainer.lr=0.1"
  "lora-r8-lr3e-3|prompt_tuning.yaml|prompt_tuning.vectors=20 prompt_tuning.lora=8 trainer.lr=0.003"
  "finetune-lr5e-4|finetune.yaml|trainer.lr=0.0005"
)
[ -n "${ONLY:-}" ] && RUNS=("${RUNS[@]:0:$ONLY}")

mkdir -p "$EXP"
echo "== corpus -> $DATA, and the checks that the task is new but its words are not"
"$PYTHON" recipes/synth_text/prepare_digits.py --out "$DATA"
"$PYTHON" - "$BASE" data/synth_text/train.jsonl "$DATA" <<'PY'
import json, sys
import mmseq
base, base_train, data = sys.argv[1:]
read = lambda path: [json.loads(line) for line in open(path)]
base_words = {w for line in read(base_train) for w in line["text"].split()}
digits = {split: read(f"{data}/{split}.jsonl") for split in ("train", "valid", "test")}
words = {w for lines in digits.values() for line in lines for w in line["text"].split()}
assert words <= base_words, words - base_words
tokenizer = mmseq.load(base).tokenizer
assert all(tokenizer.decode(tokenizer.encode(w)) == w for w in words)
train = {line["source"] for line in digits["train"]}
held = {s: len({line["source"] for line in digits[s]} & train) for s in ("valid", "test")}
assert held == {"valid": 0, "test": 0}, held
print(f"every target word ({len(words)}) is a word of the base's training targets and its tokenizer; "
      f"test numbers in the digit task's training: {held['test']}, valid: {held['valid']}")
PY

echo "== the base alone on the new task (its own route)"
"$MMSEQ" eval "$BASE" "$DATA/test.jsonl" --out "$EXP/base-eval-test" > /dev/null

for run in "${RUNS[@]}"; do
  IFS="|" read -r name config overrides <<< "$run"
  [ -f "$EXP/$name/eval-base-task/metrics.json" ] && continue  # done in an earlier run of this script
  echo "== $name: $config $overrides"
  rm -rf "${EXP:?}/$name"
  # shellcheck disable=SC2086
  /usr/bin/time -f "%U %S %e" -o "$EXP/$name.time" "$MMSEQ" train "recipes/synth_text/$config" \
      output_dir="$EXP/$name" prompt_tuning.base="$BASE" $overrides "$@" 2> "$EXP/$name.log" || {
      tail -5 "$EXP/$name.log"; exit 1; }
  "$MMSEQ" eval "$EXP/$name/best" "$DATA/test.jsonl" --task digits --out "$EXP/$name/eval-test" > /dev/null
  "$MMSEQ" eval "$EXP/$name/best" data/synth_text/test.jsonl --task text --out "$EXP/$name/eval-base-task" > /dev/null
done

"$PYTHON" - "$EXP" "$BASE" "${RUNS[@]}" <<'PY'
import json, os, re, sys
exp, base, *runs = sys.argv[1:]
metrics = lambda folder: json.load(open(f"{folder}/metrics.json"))
zero = metrics(f"{exp}/base-eval-test")
print(f"\nbase model, its own route, on the digit task's test: exact {zero['exact']:.1f} %, BLEU {zero['bleu']:.2f}")
print("| run | test exact % | test BLEU | trainable parameters | model.safetensors | folder (with trainer state) "
      "| numbers-to-words test exact % after | CPU s (user+sys) | wall s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for run in runs:
    name = run.split("|")[0]
    log = open(f"{exp}/{name}.log", errors="replace").read()
    count = re.search(r"(\d+) trainable parameters of (\d+) \(([\d.]+) %\)", log)
    best = os.path.realpath(f"{exp}/{name}/best")
    weights = os.path.getsize(f"{best}/model.safetensors")
    folder = sum(os.path.getsize(f"{best}/{f}") for f in os.listdir(best))
    user, system, wall = map(float, open(f"{exp}/{name}.time").read().split()[-3:])
    test, kept = metrics(f"{exp}/{name}/eval-test"), metrics(f"{exp}/{name}/eval-base-task")
    print(f"| {name} | {test['exact']:.1f} | {test['bleu']:.2f} | {int(count[1]):,} ({count[3]} %) | {weights:,} B "
          f"| {folder:,} B | {kept['exact']:.1f} | {user + system:.0f} | {wall:.0f} |")
PY
