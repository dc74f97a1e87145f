#!/usr/bin/env bash
# The multitask model trained with prompts (prompts.yaml) against the same recipe trained without
# (config.yaml), on the same data and schedule: each task's test scores with no prompt and no
# context at inference (prompts dropped), then the prompt-trained model's with them given (speech:
# a context of some of each reference's words among as many distractors; captions: <|short|> and
# <|long|>). Needs run.sh's data/multitask (its step 1/4); a model already trained is kept.
# Extra arguments are overrides for both trainings, e.g. `bash recipes/multitask/prompts.sh trainer.max_epochs=10`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-$(bash tools/setup.sh)}"
PYTHON="$VENV/bin/python"
MMSEQ="$VENV/bin/mmseq"
DATA=data/multitask
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

[ -f "$DATA/train.jsonl" ] || { echo "no $DATA/train.jsonl: run step 1/4 of recipes/multitask/run.sh first" >&2; exit 1; }
"$PYTHON" recipes/multitask/prepare_prompts.py --data "$DATA" --out data/multitask_prompts

echo "== training, both at once, one thread each (kept if already trained)"
pids=()
for run in "config exp/multitask" "prompts exp/multitask_prompts"; do
  read -r config out <<< "$run"
  [ -d "$out/best" ] && continue
  ( TIMEFORMAT='%R %U %S'; { time "$MMSEQ" train "recipes/multitask/$config.yaml" output_dir="$out" "$@" > "$out.out" 2>&1; } 2> "$out.times" ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

echo "== test scores, two at a time"
evals=(  # model manifest out [options]
  "exp/multitask $DATA/asr/test.jsonl eval-asr"
  "exp/multitask $DATA/caption/test.jsonl eval-caption"
  "exp/multitask $DATA/text/test.jsonl eval-text"
  "exp/multitask_prompts $DATA/asr/test.jsonl eval-asr"
  "exp/multitask_prompts $DATA/caption/test.jsonl eval-caption"
  "exp/multitask_prompts $DATA/text/test.jsonl eval-text"
  "exp/multitask_prompts data/multitask_prompts/asr/test_context.jsonl eval-asr-context"
  "exp/multitask_prompts $DATA/caption/test.jsonl eval-caption-short --prompt <|short|>"
  "exp/multitask_prompts $DATA/caption/test.jsonl eval-caption-long --prompt <|long|>"
)
running=0
for run in "${evals[@]}"; do
  read -r model manifest out options <<< "$run"
  [ -f "$model/$out/metrics.json" ] && continue
  # shellcheck disable=SC2086  # options: --prompt TOKEN, split on purpose
  "$MMSEQ" eval "$model/best" "$manifest" --out "$model/$out" ${options:-} > "$model/$out.out" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then wait -n; running=$((running - 1)); fi
done
wait

echo "== side by side"
"$PYTHON" - <<'PY'
import csv, json
def metrics(model, out):  # a multitask model's names carry the route: asr/wer
    found = json.load(open(f"exp/{model}/{out}/metrics.json"))
    return {**found, **{key.split("/", 1)[1]: value for key, value in found.items() if "/" in key}}
def rows(model, out):
    return {row["id"]: row for row in map(json.loads, open(f"exp/{model}/{out}/hypotheses.jsonl"))}
def words(model, out):  # mean words per hypothesis
    found = rows(model, out).values()
    return sum(len(str(row["hypothesis"]).split()) for row in found) / len(found)
plain, prompted = "multitask", "multitask_prompts"
print(f"{'task':<8} {'metric':<8} {'plain':>8} {'dropped':>8} {'change':>7}   prompts given")
given = {"asr": ("eval-asr-context", "context"), "caption": None, "text": None}
for task, names in [("asr", ["wer", "cer"]), ("caption", ["CIDEr", "Bleu_4"]), ("text", ["exact", "bleu", "chrf"])]:
    for name in names:
        a, b = metrics(plain, f"eval-{task}")[name], metrics(prompted, f"eval-{task}")[name]
        extra = ""
        if task == "asr":
            extra = f"with context: {metrics(prompted, 'eval-asr-context')[name]:.2f}"
        elif task == "caption":
            extra = "  ".join(f"{t}: {metrics(prompted, f'eval-caption-{t}')[name]:.2f}" for t in ("short", "long"))
        change = f"{100 * (b - a) / a:+.1f}%" if a else "-"
        print(f"{task:<8} {name:<8} {a:>8.2f} {b:>8.2f} {change:>7}   {extra}")
print("\nmean words per caption: plain {:.1f}, dropped {:.1f}, <|short|> {:.1f}, <|long|> {:.1f}".format(
    words(plain, "eval-caption"), words(prompted, "eval-caption"),
    words(prompted, "eval-caption-short"), words(prompted, "eval-caption-long")))
# The context's own words (those of the reference): how many the hypotheses spell, without and with it.
test = {line["id"]: line for line in map(json.loads, open("data/multitask_prompts/asr/test_context.jsonl"))}
for label, out in [("no context", "eval-asr"), ("with context", "eval-asr-context")]:
    hyps, hit, total = rows(prompted, out), 0, 0
    for key, line in test.items():
        own = [w for w in line["context"] if w in line["text"].split()]
        said = set(str(hyps[key]["hypothesis"]).split())
        hit, total = hit + sum(w in said for w in own), total + len(own)
    print(f"context words recognized, {label}: {hit}/{total} = {100 * hit / total:.1f} %")
print(f"\n{'training':<18} {'steps':>6} {'wall s':>8} {'CPU s':>8}")
for model in (plain, prompted):
    steps = max(int(r["step"]) for r in csv.DictReader(open(f"exp/{model}/log.csv")))
    wall, user, system = map(float, open(f"exp/{model}.times").read().split())
    print(f"{model:<18} {steps:>6} {wall:>8.0f} {user + system:>8.0f}")
PY
