"""A task the numbers-to-words model never saw, for prompt tuning: read the digits one by one.

"1203" -> "one two zero three". The inputs look like those of synth_text (numbers of 1 to 6 digits
without leading zeros) and every output word ("zero" .. "nine") is already a word of its targets,
so a model trained on synth_text has all it needs but the task: whatever steers it there is learned
from these pairs alone. Lines carry ``"task": "digits"`` (the prompt-tuned route's name), so that
``mmseq eval`` on the tuned model, which serves both tasks, knows which task a line is.

Writes, under --out (default data/synth_digits), splits that share no number:
    train.jsonl, valid.jsonl, test.jsonl   {"id": "digits_train_00000", "task": "digits", "source": "1203", "text": "one two zero three"}

    python recipes/synth_text/prepare_digits.py --out data/synth_digits --num-train 4000
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def read_out(number: str) -> str:
    return " ".join(DIGITS[int(d)] for d in number)


def draw(counts: dict[str, int], seed: int) -> dict[str, list[int]]:
    """Disjoint numbers per split: a digit count from 1 to 6 uniformly, then a number with that many."""
    rng, used, splits = random.Random(seed), set(), {}
    for split, count in counts.items():
        numbers = []
        while len(numbers) < count:
            digits = rng.randint(1, 6)
            number = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
            if number not in used:
                used.add(number)
                numbers.append(number)
        splits[split] = numbers
    return splits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/synth_digits")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Test and valid draw first (the ten one-digit numbers go to whichever split draws them first).
    splits = draw({"test": args.num_test, "valid": args.num_valid, "train": args.num_train}, args.seed)
    for split, numbers in splits.items():
        with open(out / f"{split}.jsonl", "w") as file:
            for i, number in enumerate(numbers):
                file.write(json.dumps({"id": f"digits_{split}_{i:05d}", "task": "digits", "source": str(number),
                                       "text": read_out(str(number))}) + "\n")
    print(f"{out}: " + ", ".join(f"{len(v)} {k}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
