"""WER under one stated normalisation, for comparing mmseq with Whisper baselines.

Two kinds, both applied to reference and hypothesis alike before jiwer counts words:

- ``"basic"`` (the headline figure): :func:`mmseq.metrics.normalize_text`, mmseq's one text
  normaliser: Unicode NFKC, lower case, every punctuation character (Unicode ``P*``) becomes a
  space except an apostrophe between two letters/digits (``don't`` stays, ``'quoted'`` loses
  them), hyphens included (``well-known`` -> ``well known``), runs of whitespace collapsed.
  Symbols (``$ + =``, currency) are kept. Numbers stay as written (``1465`` and ``fourteen
  sixty-five`` differ). This is "lower case without punctuation", the normalisation of the
  faster-whisper reference figures in the issue.
- ``"whisper"``: OpenAI Whisper's ``EnglishTextNormalizer`` (whisper/normalizers/english.py and
  english.json), as imported from the installed ``openai-whisper`` package: lower case, bracketed
  and filler words (``uh``, ``um``) dropped, contractions and titles spelled one way (``mr`` ->
  ``mister``), spelled-out numbers to digits (``twenty one`` -> ``21``), British spellings to
  American (``colour`` -> ``color``), symbols and punctuation removed. This is the normalisation of
  Whisper's paper and the Open ASR leaderboard. ``openai-whisper`` is a tools-only dependency:
  importing it loads torch and numba, so it is imported only when this kind is asked for.

    from tools.whisper_wer import normalize, wer
    wer(["Mr. Smith's 21 colours."], ["mister smiths twenty-one colors"], "whisper")   # 0.25
    python tools/whisper_wer.py RESULTS.jsonl      # WER of a per-clip file (fields "ref", "hyp")
    python tools/whisper_wer.py --same A.jsonl B.jsonl   # clips two systems transcribe alike
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("basic", "whisper")


@functools.lru_cache(maxsize=1)
def _whisper_normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str, kind: str = "basic") -> str:
    """``text`` as scored under ``kind`` (``"basic"`` or ``"whisper"``); words joined by one space."""
    if kind == "basic":
        from mmseq.metrics.speech import normalize_text

        return normalize_text(text)
    if kind == "whisper":
        return " ".join(_whisper_normalizer()(text).split())
    raise ValueError(f"kind={kind!r}: must be one of {KINDS}")


def counts(reference: str, hypothesis: str, kind: str = "basic") -> dict:
    """Word edit counts of one pair after normalising both: substitutions, deletions, insertions,
    reference words (an empty reference makes every hypothesis word an insertion)."""
    import jiwer

    ref, hyp = normalize(reference, kind), normalize(hypothesis, kind)
    if not ref:
        return {"sub": 0, "del": 0, "ins": len(hyp.split()), "words": 0, "ref": ref, "hyp": hyp}
    if not hyp:
        n = len(ref.split())
        return {"sub": 0, "del": n, "ins": 0, "words": n, "ref": ref, "hyp": hyp}
    out = jiwer.process_words(ref, hyp)
    return {"sub": out.substitutions, "del": out.deletions, "ins": out.insertions,
            "words": out.substitutions + out.deletions + out.hits, "ref": ref, "hyp": hyp}


def wer(refs: list[str], hyps: list[str], kind: str = "basic") -> float:
    """Corpus word error rate (total edits / total reference words) after normalising with ``kind``."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = words = 0
    for ref, hyp in zip(refs, hyps):
        c = counts(ref, hyp, kind)
        edits += c["sub"] + c["del"] + c["ins"]
        words += c["words"]
    if words == 0:
        raise ValueError("no reference words after normalisation")
    return edits / words


def same_text(first: str, second: str, kind: str = "basic") -> None:
    """Print how many clips two per-clip result files transcribe to the same normalised text, and
    the clips where they differ (the agreement figure of the Whisper comparison)."""
    rows = [{r["id"]: r for r in map(json.loads, Path(p).read_text(encoding="utf-8").splitlines())} for p in (first, second)]
    shared = sorted(set(rows[0]) & set(rows[1]))
    differ = [i for i in shared if normalize(rows[0][i]["hyp"], kind) != normalize(rows[1][i]["hyp"], kind)]
    print(f"{len(shared) - len(differ)} of {len(shared)} clips the same text ({kind} normalisation)")
    for i in differ:
        print(f"  {i}:\n    {rows[0][i]['hyp']}\n    {rows[1][i]['hyp']}")


def main(argv=None) -> int:
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        print(__doc__)
        return 2
    if paths[0] == "--same":  # python tools/whisper_wer.py --same A.jsonl B.jsonl
        same_text(paths[1], paths[2])
        return 0
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [r for r in rows if "ref" in r and "hyp" in r]
        refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
        figures = "  ".join(f"WER {kind} {100 * wer(refs, hyps, kind):.2f} %" for kind in KINDS)
        print(f"{path}: {len(rows)} clips  {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
