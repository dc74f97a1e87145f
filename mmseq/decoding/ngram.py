"""Token n-gram language models: counted from text in minutes, written and read as ARPA files (the
format of KenLM and SRILM), fused in beam search by :class:`mmseq.decoding.scorers.ngram.NGramLM` (which also
saves them as safetensors arrays, the fast way to load; :func:`mmseq.decoding.lm.build` counts one
with a checkpoint's tokenizer).

    mmseq ngram exp/synth_speech/best data/synth_speech/lm.jsonl --order 4 --prune 2 --out exp/synth_speech_ngram

The words of the model are the tokens of a checkpoint's tokenizer (sub-word pieces or characters),
so the model scores exactly what the decoder proposes, and text is cheap: millions of words count
in seconds where a neural LM would train for hours on this CPU. Smoothing is interpolated
Kneser-Ney (Chen and Goodman 1998) with one discount per order, ``n1 / (n1 + 2 n2)``; lower orders
count the distinct tokens before an n-gram (continuation counts), except n-grams that start with
``<s>``, which nothing precedes; the unigrams are interpolated with a uniform distribution over the
whole vocabulary, so that no token has probability zero. A space inside a token (a character
tokenizer's) is written as U+2581, sentencepiece's own mark.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError

BOS, EOS = "<s>", "</s>"
LOG10 = math.log(10)


def arpa_word(token: str) -> str:
    """A token as an ARPA word (ARPA splits on whitespace)."""
    return token.replace(" ", "\u2581")


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Counts of every n-gram of orders 1 to ``order`` over ``sentences`` (token lists), each
    between ``<s>`` and ``</s>``."""
    counts = [Counter() for _ in range(order)]
    for sentence in sentences:
        padded = [BOS, *sentence, EOS]
        for n in range(1, order + 1):
            counts[n - 1].update(zip(*(padded[i:] for i in range(n))))
    return counts


def kneser_ney(counts: list[Counter], vocabulary: Iterable[str], prune: int = 1) -> list[dict[tuple, tuple[float, float | None]]]:
    """Interpolated Kneser-Ney from :func:`count_ngrams`: per order, ``{ngram: (log10 p, log10
    backoff or None)}``; the unigrams cover ``vocabulary`` (plus ``</s>``) whether counted or not.
    ``prune``: n-grams of the highest order seen fewer times are dropped (their probability then
    comes from backing off, and each history's backoff is set so that it still sums to one)."""
    order = len(counts)
    adjusted = [Counter() for _ in range(order)]
    adjusted[-1] = counts[-1]
    for n in range(order - 1, 0, -1):  # continuation counts: distinct tokens seen before the n-gram
        before = Counter(gram[1:] for gram in counts[n])
        adjusted[n - 1] = Counter({gram: (count if gram[0] == BOS else before[gram])
                                   for gram, count in counts[n - 1].items()})
    words = sorted(set(vocabulary) | {EOS} | {gram[0] for gram in counts[0]} - {BOS})
    probs: list[dict[tuple, float]] = []
    gammas: list[dict[tuple, float]] = []
    for n in range(1, order + 1):
        grams = adjusted[n - 1]
        histogram = Counter(c for c in grams.values() if c <= 2)
        n1, n2 = histogram[1], histogram[2]
        discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
        totals, types = defaultdict(int), defaultdict(int)
        for gram, count in grams.items():
            if gram[-1] != BOS:
                totals[gram[:-1]] += count
                types[gram[:-1]] += 1
        gamma = {history: discount * types[history] / total for history, total in totals.items()}
        if n == 1:
            total, spread = totals[()], gamma[()] / len(words)
            table = {(w,): max(grams.get((w,), 0) - discount, 0) / total + spread for w in words}
        else:
            lower = probs[-1]
            table = {gram: max(count - discount, 0) / totals[gram[:-1]] + gamma[gram[:-1]] * lower[gram[1:]]
                     for gram, count in grams.items() if gram[-1] != BOS}
        if n == order and order > 1 and prune > 1:
            table = {gram: p for gram, p in table.items() if grams[gram] >= prune}
            kept, kept_lower = defaultdict(float), defaultdict(float)
            for gram, p in table.items():
                kept[gram[:-1]] += p
                kept_lower[gram[:-1]] += probs[-1][gram[1:]]
            gamma = {history: (1 - kept[history]) / (1 - kept_lower[history]) for history in gamma}
        probs.append(table)
        gammas.append(gamma)
    model = []
    for n, table in enumerate(probs, 1):
        backoff = gammas[n] if n < order else {}
        entries = {gram: (math.log10(p), _log10(backoff.get(gram))) for gram, p in table.items()}
        if n == 1:
            entries[(BOS,)] = (-99.0, _log10(backoff.get((BOS,))))
        model.append(entries)
    return model


def _log10(value: float | None) -> float | None:
    return None if value is None else math.log10(value)


def write_arpa(model: list[dict], path: str | os.PathLike) -> None:
    """``model`` (as :func:`kneser_ney` returns it) as an ARPA file, written atomically."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with (gzip.open(temporary, "wt", encoding="utf-8") if path.suffix == ".gz"
          else open(temporary, "w", encoding="utf-8")) as out:
        out.write("\n\\data\\\n")
        for n, entries in enumerate(model, 1):
            out.write(f"ngram {n}={len(entries)}\n")
        for n, entries in enumerate(model, 1):
            out.write(f"\n\\{n}-grams:\n")
            for gram, (logp, backoff) in entries.items():
                words = " ".join(arpa_word(w) for w in gram)
                out.write(f"{logp:.6f}\t{words}" + ("" if backoff is None else f"\t{backoff:.6f}") + "\n")
        out.write("\n\\end\\\n")
    os.replace(temporary, path)


def read_arpa(path: str | os.PathLike) -> list[dict[tuple, tuple[float, float | None]]]:
    """An ARPA file (plain or ``.gz``) as per-order ``{ngram: (log10 p, log10 backoff or None)}``;
    an :class:`InputError` naming the file and line on anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such n-gram language model (an ARPA file)")
    model: list[dict] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        section = None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                return model
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:-len("-grams:")])
                model.append({})
                continue
            fields = line.split()
            if section is None or len(fields) not in (section + 1, section + 2):
                raise InputError(f"{path}:{number}: not an ARPA line of order {section}: {line[:80]!r}")
            try:
                logp = float(fields[0])
                backoff = float(fields[section + 1]) if len(fields) == section + 2 else None
            except ValueError:
                raise InputError(f"{path}:{number}: not a number in an ARPA line: {line[:80]!r}") from None
            model[-1][tuple(fields[1:section + 1])] = (logp, backoff)
    raise InputError(f"{path}: ends before \\end\\ (a truncated ARPA file)")


def train_ngram(tokenizer, texts: Iterable[str], order: int = 4, prune: int = 1) -> list[dict]:
    """A Kneser-Ney model of order ``order`` over ``tokenizer``'s tokens of ``texts`` (see
    :func:`kneser_ney` for ``prune``)."""
    pieces = tokenizer.pieces()
    sentences = ([pieces[i] for i in tokenizer.encode(text)] for text in texts)
    ordinary = [piece for i, piece in enumerate(pieces) if i not in tokenizer.special_ids]
    return kneser_ney(count_ngrams(sentences, order), ordinary, prune)


def read_texts(paths: Iterable[str | os.PathLike]) -> Iterable[str]:
    """The sentences of text files (one a line) and JSONL manifests (each line's ``text``); an
    :class:`InputError` names the file and line of one that is neither."""
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"{path}: no such text file")
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if path.suffix != ".jsonl":
                    if line.strip():
                        yield line.strip()
                    continue
                try:
                    text = json.loads(line).get("text") if line.strip() else ""
                except (ValueError, AttributeError):
                    raise InputError(f"{path}:{number}: not a JSON object") from None
                if not isinstance(text, str):
                    raise InputError(f"{path}:{number}: no \"text\" string")
                if text.strip():
                    yield text.strip()
