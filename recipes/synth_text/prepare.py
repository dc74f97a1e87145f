"""Make a text-to-text corpus: numbers written in digits to the same numbers spelled out in English.

"1203" -> "one thousand two hundred three", "40017" -> "forty thousand seventeen". To get a test
number right a model must read place value from the digits' positions, skip the zeros, and choose
between "ten".."nineteen" and "twenty".."ninety": real sequence learning, yet small enough to train
on a CPU in minutes. Numbers go from 0 to 999999. The hundred numbers below 100 are the vocabulary:
they all go to train, each --small-repeats times (only 100 of them against 20000 longer numbers, a
model would otherwise read "7" as the end of a longer number); valid and test draw a digit count
from 3 to 6 uniformly, then a number with that many digits; train draws the rest from 1 to 6
digits the same way. The splits share no number, so every test number is one the model never saw.
Everything follows from --seed.

Writes, under --out (default data/synth_text):
    train.jsonl, valid.jsonl, test.jsonl   {"id": "train_00000", "source": "1203", "text": "one thousand two hundred three"}
    settings.json                          the settings that made them; a rerun with the same settings does nothing

    python recipes/synth_text/prepare.py --out data/synth_text --num-train 20000
    python recipes/synth_text/prepare.py --spell 1203
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

CORPUS_VERSION = 2
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MAX_DIGITS = 6


def below_thousand(number: int) -> list[str]:
    """Words of 1..999 (an empty list for 0): "two hundred three", "forty five"."""
    words = []
    hundreds, rest = divmod(number, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(TENS[rest // 10])
        rest %= 10
    if rest:
        words.append(ONES[rest])
    return words


def spell(number: int) -> str:
    """0..999999 in English words, without "and" or hyphens: 40017 -> "forty thousand seventeen"."""
    if not 0 <= number < 10 ** MAX_DIGITS:
        raise ValueError(f"numbers go from 0 to {10 ** MAX_DIGITS - 1}, got {number}")
    if number == 0:
        return "zero"
    thousands, rest = divmod(number, 1000)
    words = below_thousand(thousands) + ["thousand"] if thousands else []
    return " ".join(words + below_thousand(rest))


def draw_numbers(counts: dict[str, int], seed: int, small_repeats: int = 1) -> dict[str, list[int]]:
    """Disjoint lists of numbers per split, drawn in the order given: a digit count uniformly, then
    a number with that many digits. ``train`` takes every number below 100 ``small_repeats`` times
    and draws the rest from 1 to 6 digits; the other splits draw from 3 to 6 digits (give them first, so that train cannot
    use up the 900 three-digit numbers before they draw)."""
    rng = random.Random(seed)
    used = set(range(100))
    splits = {}
    for split, count in counts.items():
        numbers = [n for n in range(100) for _ in range(small_repeats)][:count] if split == "train" else []
        smallest = 1 if split == "train" else 3
        capacity = 10 ** MAX_DIGITS - 10 ** (smallest - 1) - len(used)
        if count - len(numbers) > capacity:
            raise SystemExit(f"cannot draw {count} more distinct numbers below {10 ** MAX_DIGITS}")
        while len(numbers) < count:
            digits = rng.randint(smallest, MAX_DIGITS)
            number = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
            if number not in used:
                used.add(number)
                numbers.append(number)
        rng.shuffle(numbers)
        splits[split] = numbers
    return splits


def write_corpus(out: Path, counts: dict[str, int], seed: int, small_repeats: int = 40) -> None:
    settings = {"version": CORPUS_VERSION, "seed": seed, "small_repeats": small_repeats,
                **{f"num_{k}": v for k, v in counts.items()}}
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        print(f"{out}: corpus already made with these settings", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    splits = draw_numbers({"test": counts["test"], "valid": counts["valid"], "train": counts["train"]}, seed,
                          small_repeats)
    for split, numbers in splits.items():
        lines = [json.dumps({"id": f"{split}_{i:05d}", "source": str(n), "text": spell(n)}) for i, n in enumerate(numbers)]
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(out / f"{split}.jsonl")
    settings_file.write_text(json.dumps(settings, indent=1) + "\n")
    print(f"{out}: " + ", ".join(f"{len(v)} {k}" for k, v in splits.items()), file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/synth_text"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=20000, help="train pairs (default: %(default)s)")
    parser.add_argument("--num-valid", type=int, default=500, help="valid pairs (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=1000, help="test pairs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the number draws (default: %(default)s)")
    parser.add_argument("--small-repeats", type=int, default=40,
                        help="times each number below 100 appears in train (default: %(default)s)")
    parser.add_argument("--spell", type=int, metavar="NUMBER", help="print NUMBER in words and exit")
    args = parser.parse_args(argv)
    if args.spell is not None:
        print(spell(args.spell))
        return
    write_corpus(args.out, {"train": args.num_train, "valid": args.num_valid, "test": args.num_test}, args.seed,
                 args.small_repeats)


if __name__ == "__main__":
    main()
