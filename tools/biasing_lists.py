"""Biasing lists built the way the LibriSpeech biasing lists are (Le et al. 2021, "Contextualized
streaming end-to-end speech recognition with trie-based deep biasing and shallow fusion"):

- the **common** words are the 5,000 most frequent of a large English text (by default wordfreq's
  English list, https://github.com/rspeer/wordfreq, built from Wikipedia, subtitles, news, books,
  web text and more); every other word is **rare**;
- each utterance's list holds its own rare words plus N **distractors** drawn at random from the
  rare-word vocabulary (by default wordfreq's next most frequent words after the common ones,
  alphabetic only), in a shuffled order.

    python tools/biasing_lists.py data/real/cv100/manifest.jsonl --n 100 --out data/real/cv100/bias100.jsonl

The output is the manifest with a ``biasing`` field per line (the list); ``--as boost`` or
``--as context`` writes it as the field mmseq reads (``boost``: shallow fusion; ``context``: the
words joined as the decoder's context segment). Score with :func:`mmseq.metrics.biasing.biased_word_errors`.
The same seed gives the same lists.

For training a model to use its list (biasing-aware fine-tuning), ``--random-n`` draws each line's
number of distractors from 0 to N, and ``--empty P`` / ``--wrong P`` give a share P of lines no list
or a list of distractors alone (none of its own words), so that it learns to ignore what is not said::

    python tools/biasing_lists.py data/synth_speech/train.jsonl --n 100 --random-n --empty 0.15 --wrong 0.15 \
        --as context --out data/synth_speech/train_context.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmseq.metrics.speech import normalize_text  # noqa: E402


def word_lists(common_file: str | None, vocabulary_file: str | None, common: int, vocabulary: int):
    """(the common words, the rare-word vocabulary distractors are drawn from), from files (one
    word a line, most frequent first) or from wordfreq."""
    def read(path):
        return [normalize_text(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    if common_file and vocabulary_file:
        return set(read(common_file)[:common]), read(vocabulary_file)
    import wordfreq

    ranked = [normalize_text(w) for w in wordfreq.top_n_list("en", common + vocabulary)]
    common_words = set(read(common_file)[:common]) if common_file else set(ranked[:common])
    rare = read(vocabulary_file) if vocabulary_file else [w for w in ranked[common:] if w.isalpha()]
    return common_words, rare


def rare_words(text: str, common: set[str]) -> list[str]:
    """The words of ``text`` (normalised) outside ``common``, each once, in order."""
    return list(dict.fromkeys(w for w in normalize_text(text).split() if w not in common and not w.isdigit()))


def biasing_list(text: str, common: set[str], vocabulary: list[str], n: int, rng: random.Random,
                 own_words: bool = True) -> list[str]:
    """The utterance's rare words (unless not ``own_words``) and ``n`` distractors (rare words it
    does not say), shuffled."""
    own = rare_words(text, common) if own_words else []
    said = set(normalize_text(text).split())
    distractors = []
    while len(distractors) < n:
        word = vocabulary[rng.randrange(len(vocabulary))]
        if word not in said and word not in distractors:
            distractors.append(word)
    words = own + distractors
    rng.shuffle(words)
    return words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="JSON Lines with a 'text' per line")
    parser.add_argument("--n", type=int, default=100, help="distractors per utterance (the LibriSpeech lists: 100, 500, 1000)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--as", dest="field", choices=("biasing", "boost", "context"), default="biasing",
                        help="the field written: the list (biasing), boost (the list), context (the words joined)")
    parser.add_argument("--common", type=int, default=5000, help="the most frequent words that are not rare")
    parser.add_argument("--vocabulary", type=int, default=100_000, help="frequency ranks drawn from after the common words")
    parser.add_argument("--common-words", help="a file of words, most frequent first (default: wordfreq's English)")
    parser.add_argument("--vocabulary-words", help="a file of rare words distractors are drawn from (default: wordfreq)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-n", action="store_true", help="each line: from 0 to --n distractors (training lists)")
    parser.add_argument("--empty", type=float, default=0.0, help="the share of lines given no list (training lists)")
    parser.add_argument("--wrong", type=float, default=0.0, help="the share of lines given distractors alone (training lists)")
    args = parser.parse_args(argv)
    if not (0 <= args.empty and 0 <= args.wrong and args.empty + args.wrong <= 1):
        parser.error(f"--empty {args.empty} and --wrong {args.wrong}: shares from 0 to 1 that add up to at most 1")
    common, vocabulary = word_lists(args.common_words, args.vocabulary_words, args.common, args.vocabulary)
    vocabulary = [w for w in vocabulary if w not in common]
    if len(vocabulary) < 2 * args.n:
        parser.error(f"the rare-word vocabulary holds {len(vocabulary)} words, too few for --n {args.n}")
    base = Path(args.manifest).resolve().parent
    rng = random.Random(args.seed)
    lines, rare = [], 0
    for number, line in enumerate(Path(args.manifest).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" not in row:
            parser.error(f"{args.manifest}:{number}: no 'text' to draw rare words from")
        draw = rng.random() if args.empty or args.wrong else 1.0  # (drawn only then: the plain lists stay as they were)
        n = rng.randint(0, args.n) if args.random_n else args.n
        words = [] if draw < args.empty else biasing_list(row["text"], common, vocabulary, n, rng,
                                                           own_words=draw >= args.empty + args.wrong)
        rare += len(rare_words(row["text"], common))
        if "audio" in row and not Path(row["audio"]).is_absolute():
            row["audio"] = str(base / row["audio"])  # the output may live elsewhere
        row[args.field] = " ".join(words) if args.field == "context" else words
        lines.append(json.dumps(row, ensure_ascii=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(lines)} utterances, {rare} rare words, lists of {args.n} distractors plus "
          f"their own rare words", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
