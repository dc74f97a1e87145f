"""Do length controls steer captions? Score decoded test captions by their length and by CIDEr
against references of the kind the control asked for.

Each RUN is ``NAME=HYPOTHESES`` (the ``hypotheses.jsonl`` that ``mmseq eval --out`` writes: one
row per image with its caption and all its references). A reference is *short* when it has at most
``--bound`` words (the upper bound of ``<|short|>`` in the controlled model's config; read from
``--checkpoint`` when given), *long* otherwise. For each run this prints the mean words per
caption and CIDEr (pycocoevalcap's, on captions PTB-tokenized as mmseq's caption metrics do) against
three reference sets: every reference of every image; the short references of the images that
have any; the long references of the images that have any. CIDEr's document frequencies come from
the set scored against, so two runs compare only within one column.

    python recipes/synth_caption/controls.py --checkpoint exp/synth_caption_controls/best \\
        plain=exp/synth_caption/eval-test/hypotheses.jsonl \\
        short=exp/synth_caption_controls/eval-short/hypotheses.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KINDS = ("all", "short", "long")


def short_bound(checkpoint: Path) -> int:
    """The word bound of ``<|short|>`` in a checkpoint's length control."""
    config = json.loads((checkpoint / "config.json").read_text())
    model = config["model"]
    routes = [model, *(model.get("tasks") or {}).values()]
    for route in routes:
        for control in (route.get("prompting") or {}).get("controls") or []:
            if control.get("attribute") == "words" and "<|short|>" in (control.get("bins") or {}):
                return int(control["bins"]["<|short|>"])
    raise SystemExit(f"{checkpoint}/config.json: no words control with a <|short|> bin")


def read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{path}: no decoded rows")
    return sorted(rows, key=lambda row: row["id"])


def references_of_kind(references: list[str], kind: str, bound: int) -> list[str]:
    if kind == "all":
        return list(references)
    short = [text for text in references if len(text.split()) <= bound]
    return short if kind == "short" else [text for text in references if len(text.split()) > bound]


def tokenizer():
    """pycocoevalcap's PTB tokenizer as mmseq's caption metrics run it (its Python stand-in without Java)."""
    from mmseq.metrics.captions import ptb_tokenize, python_tokenize
    from mmseq.metrics.java import java_problem

    return ptb_tokenize if java_problem() is None else python_tokenize


def score(rows: list[dict], bound: int, tokenize) -> dict:
    """Mean words of the hypotheses; CIDEr and the image count against each kind of reference.
    CIDEr is pycocoevalcap's, on PTB-tokenized captions, as in :func:`mmseq.metrics.captions.caption_metrics`
    (one tokenizer run per call instead of one per metric and reference set: Java starts slowly)."""
    from pycocoevalcap.cider.cider import Cider

    result = {"images": len(rows), "words": sum(len(row["hypothesis"].split()) for row in rows) / len(rows)}
    flat = tokenize([row["hypothesis"] for row in rows] + [text for row in rows for text in row["references"]])
    hypotheses, position, references = flat[: len(rows)], len(rows), []
    for row in rows:  # (raw, tokenized) per reference, so that kinds are told by the raw word count
        references.append(list(zip(row["references"], flat[position: position + len(row["references"])])))
        position += len(row["references"])
    for kind in KINDS:
        gts, res = {}, {}
        for i, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
            kept = [tokens for raw, tokens in refs if references_of_kind([raw], kind, bound)]
            if kept:
                gts[i], res[i] = kept, [hypothesis]
        result[f"CIDEr_{kind}"], result[f"images_{kind}"] = float(Cider().compute_score(gts, res)[0]), len(gts)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=HYPOTHESES")
    parser.add_argument("--checkpoint", type=Path, help="the controlled model, for the bound of <|short|>")
    parser.add_argument("--bound", type=int, help="the most words of a short caption (instead of --checkpoint)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if (args.bound is None) == (args.checkpoint is None):
        parser.error("give --checkpoint or --bound")
    bound = args.bound if args.bound is not None else short_bound(args.checkpoint)
    runs = {}
    for run in args.runs:
        name, _, path = run.partition("=")
        if not path:
            parser.error(f"{run!r}: expected NAME=HYPOTHESES")
        runs[name] = read_rows(Path(path))
    ids = {name: [row["id"] for row in rows] for name, rows in runs.items()}
    if len({tuple(v) for v in ids.values()}) != 1:
        raise SystemExit("the runs decoded different images")

    tokenize = tokenizer()
    figures = {name: score(rows, bound, tokenize) for name, rows in runs.items()}
    print(f"short reference: at most {bound} words; {len(next(iter(runs.values())))} test images")
    print(f"{'run':<24} {'words':>6} {'CIDEr all':>10} {'CIDEr short':>12} {'CIDEr long':>11}")
    for name, f in figures.items():
        print(f"{name:<24} {f['words']:>6.2f} {f['CIDEr_all']:>10.3f} {f['CIDEr_short']:>12.3f} {f['CIDEr_long']:>11.3f}")
    first = next(iter(figures.values()))
    print(f"(images with short references: {first['images_short']}, with long: {first['images_long']})")
    short = [name for name in figures if "short" in name]
    long = [name for name in figures if "long" in name]
    if short and long:
        ratio = figures[short[0]]["words"] / figures[long[0]]["words"]
        print(f"words {short[0]} / {long[0]} = {ratio:.3f} (goal: at most 0.6)")
        pairs = zip(runs[short[0]], runs[long[0]], strict=True)
        shorter = sum(len(a["hypothesis"].split()) < len(b["hypothesis"].split()) for a, b in pairs)
        print(f"images whose {short[0]} caption is shorter than their {long[0]} one: {shorter} of {len(runs[short[0]])}")
        figures["ratio"], figures["shorter_images"] = ratio, shorter
    if args.json:
        args.json.write_text(json.dumps({"bound": bound, **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
