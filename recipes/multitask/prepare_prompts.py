"""Give the multitask manifests the fields that recipes/multitask/prompts.yaml trains with: each
speech line gains a ``"context"``, a few of its own words among as many distractors, so the decoder
learns to copy words it is told to expect (contextual biasing by prompt). Caption length controls
are derived from the captions at read time (prompts.yaml's ``prompting.controls``), so caption and
text lines are copied unchanged.

    python recipes/multitask/prepare.py --out data/multitask ...        # first, as for config.yaml
    python recipes/multitask/prepare_prompts.py --data data/multitask --out data/multitask_prompts

Writes, under --out:
    train.jsonl, valid.jsonl      the lines of --data's, speech lines with a context
    asr/train.jsonl, asr/valid.jsonl
    asr/test_context.jsonl        asr/test.jsonl of --data with a context: some of each reference's
                                  own words (an oracle list, as a biasing list of expected names is)
                                  among distractors; score it beside the plain asr/test.jsonl

A context is a list: 1 to --max-words distinct words of the line's text (words of at least
--min-length letters where the line has enough) and the same number of distractors drawn from the
speech training text's words not in the line, shuffled. Everything follows from --seed and the line's
id, so a rerun writes the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def read_lines(path: Path) -> list[dict]:
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SystemExit(f"{path}:{number}: not a JSON line ({error.msg})") from None
    return lines


def context_for(text: str, vocabulary: list[str], draw: random.Random, max_words: int, min_length: int) -> list[str]:
    """Some of ``text``'s distinct words and as many distractors from ``vocabulary``, shuffled."""
    words = list(dict.fromkeys(text.split()))
    if not words:
        return []
    long_words = [w for w in words if len(w) >= min_length]
    pool = long_words or words
    chosen = draw.sample(pool, draw.randint(1, min(max_words, len(pool))))
    own = set(words)
    distractors = []
    while len(distractors) < len(chosen):  # the vocabulary is large; a few redraws at most
        word = draw.choice(vocabulary)
        if word not in own and word not in distractors:
            distractors.append(word)
    context = chosen + distractors
    draw.shuffle(context)
    return context


def with_contexts(lines: list[dict], vocabulary: list[str], seed: int, max_words: int, min_length: int) -> list[dict]:
    """Speech lines (``"task": "asr"``) with a ``"context"``; other lines as they are."""
    out = []
    for number, line in enumerate(lines):
        if line.get("task") == "asr":
            draw = random.Random(f"{seed}:{line.get('id', number)}")
            line = {**line, "context": context_for(line["text"], vocabulary, draw, max_words, min_length)}
        out.append(line)
    return out


def write(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"{path}: {len(lines)} lines", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/multitask"), help="prepare.py's folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("data/multitask_prompts"), help="output folder (default: %(default)s)")
    parser.add_argument("--max-words", type=int, default=3, help="most of a line's own words in its context (default: %(default)s)")
    parser.add_argument("--min-length", type=int, default=4, help="letters a context word has, where the line has such words (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_words < 1:
        raise SystemExit("--max-words: at least 1")
    train = read_lines(args.data / "train.jsonl")
    # Distractors come from the training text only: a test context names no word training lacks
    # unless the test reference has it.
    vocabulary = sorted({word for line in train if line.get("task") == "asr" for word in line["text"].split()})
    if not vocabulary:
        raise SystemExit(f"{args.data / 'train.jsonl'}: no speech lines (\"task\": \"asr\") to give contexts")
    options = (vocabulary, args.seed, args.max_words, args.min_length)
    for split in ("train", "valid"):
        lines = with_contexts(read_lines(args.data / f"{split}.jsonl") if split == "valid" else train, *options)
        write(args.out / f"{split}.jsonl", lines)
        write(args.out / "asr" / f"{split}.jsonl", [line for line in lines if line.get("task") == "asr"])
    test = read_lines(args.data / "asr" / "test.jsonl")
    write(args.out / "asr" / "test_context.jsonl", with_contexts(test, *options))


if __name__ == "__main__":
    main()
