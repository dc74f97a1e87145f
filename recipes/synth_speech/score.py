"""Choose decoding settings on the valid split, then score the test splits with and without the LM.

    python recipes/synth_speech/score.py tune exp/synth_speech/best data/synth_speech/valid.jsonl \
        --lm exp/synth_speech_ngram --out exp/synth_speech/decoding.json
    python recipes/synth_speech/score.py report exp/synth_speech/best data/synth_speech \
        --decoding exp/synth_speech/decoding.json --lm exp/synth_speech_ngram --out exp/synth_speech/report.json
    python recipes/synth_speech/score.py flags exp/synth_speech/decoding.json --lm exp/synth_speech_ngram

``tune`` sees only the manifest it is given (the valid split): it decodes every setting of a small
grid (beam 8 or 16; CTC weight 0.3 or 0.5; LM weight 0, 0.6 or 0.8; scores normalised by length, or
not normalised with a length bonus of 0.5 a token: with normalisation on, a constant bonus per
token changes no ranking: 24 settings), in parallel processes, and keeps the best without the LM
and the best with it; the LM is used by default only when it lowers the valid WER. ``--limit N``
decodes only the first N utterances of each manifest. ``report`` adds, for
each test split, the OOV rate against the training text (``text.txt``) and the error rate of
in-vocabulary and OOV reference words apart: each reference word counts as an error when the
alignment substitutes or deletes it, so insertions (which belong to no reference word) are counted
on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# A wide beam is what lets the LM help: on the demo's valid split with the 6-gram, WER 18.5 % at beam 4,
# 15.0 at 8 and 12.8 at 16; 0.6 and 0.8 were the best LM weights of 0.4 to 0.8 there.
BEAMS = (8, 16)
CTC_WEIGHTS = (0.3, 0.5)
LM_WEIGHTS = (0.6, 0.8)
# (length_penalty, length_bonus): normalise by length, or reward length with a bonus instead
LENGTH_SCORING = ((1.0, 0.0), (0.0, 0.5))
TEST_SPLITS = ("test", "test_other")


def align(reference: list[str], hypothesis: list[str]) -> tuple[list[bool], int]:
    """Levenshtein alignment of two word lists: whether each reference word came out right, and the insertions.

    >>> align("a b c".split(), "a x c d".split())
    ([True, False, True], 1)
    """
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            same = reference[i - 1] == hypothesis[j - 1]
            cost[i][j] = min(cost[i - 1][j - 1] + (not same), cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    correct, insertions, i, j = [False] * len(reference), 0, rows - 1, cols - 1
    while i or j:  # walk back, preferring a match or substitution, then a deletion, then an insertion
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            correct[i - 1] = reference[i - 1] == hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            insertions, j = insertions + 1, j - 1
    return correct, insertions


def vocabulary_breakdown(references: list[str], hypotheses: list[str], vocabulary: set[str]) -> dict:
    """OOV rate of the references against ``vocabulary`` and the word error rate of each kind of word, in %."""
    counts = {"iv": [0, 0], "oov": [0, 0]}  # [reference words, errors]
    insertions = 0
    for reference, hypothesis in zip(references, hypotheses):
        words = reference.split()
        correct, inserted = align(words, hypothesis.split())
        insertions += inserted
        for word, right in zip(words, correct):
            kind = counts["iv" if word in vocabulary else "oov"]
            kind[0] += 1
            kind[1] += not right
    total = counts["iv"][0] + counts["oov"][0]
    return {"oov_rate": 100 * counts["oov"][0] / max(total, 1),
            "iv_word_error": 100 * counts["iv"][1] / max(counts["iv"][0], 1),
            "oov_word_error": 100 * counts["oov"][1] / max(counts["oov"][0], 1),
            "insertions_per_word": 100 * insertions / max(total, 1)}


_MODEL = {}


def _start_worker(checkpoint: str) -> None:
    import torch

    from mmseq.checkpoint import load
    torch.set_num_threads(1)  # the parallelism is across decodes
    _MODEL["model"] = load(checkpoint, "cpu")


def decode(manifest: Path, settings: dict, lm: str | None, limit: int | None) -> tuple[dict, list[str], list[str]]:
    """WER/CER of the worker's model on ``manifest`` (its first ``limit`` lines) with ``settings``;
    also the references and hypotheses."""
    from mmseq.inference.evaluate import evaluate

    options = dict(settings)
    if options.get("lm_weight", 0) > 0:
        options["lm"] = lm
    with tempfile.TemporaryDirectory() as folder:
        if limit:  # a shortened copy; audio paths stay relative to the original manifest's folder
            lines = Path(manifest).read_text().splitlines()[:limit]
            rows = [json.loads(line) for line in lines]
            for row in rows:
                row["audio"] = str((Path(manifest).parent / row["audio"]).resolve())
            short = Path(folder) / "manifest.jsonl"
            short.write_text("".join(json.dumps(row) + "\n" for row in rows))
            manifest = short
        metrics = evaluate(_MODEL["model"], manifest, folder, batch_size=32, num_workers=0, **options)
        rows = [json.loads(line) for line in open(Path(folder) / "hypotheses.jsonl")]
    references = [row["references"][0] if isinstance(row["references"], list) else row["references"] for row in rows]
    return metrics, references, [row["hypothesis"] for row in rows]


def _decode_star(arguments):
    return decode(*arguments)


def tune(pool, valid: Path, lm: str | None, limit: int | None) -> dict:
    """Every setting of the grid decoded on ``valid`` (in parallel by ``pool``); the best without and with the LM."""
    grid = [{"beam_size": beam, "ctc_weight": ctc, "lm_weight": weight, "length_penalty": penalty, "length_bonus": bonus}
            for beam in BEAMS for ctc in CTC_WEIGHTS for weight in ((0.0,) + LM_WEIGHTS if lm else (0.0,))
            for penalty, bonus in LENGTH_SCORING]
    results = pool.map(_decode_star, [(valid, settings, lm, limit) for settings in grid])
    tried = []
    for settings, (metrics, _, _) in zip(grid, results):
        tried.append({**settings, "wer": metrics["wer"], "cer": metrics["cer"], "utterances": metrics["examples"]})
        print(f"valid {settings}: WER {metrics['wer']:.2f} %  CER {metrics['cer']:.2f} %", flush=True)
    without = min((r for r in tried if r["lm_weight"] == 0), key=lambda r: r["wer"])
    keys = ("beam_size", "ctc_weight", "lm_weight", "length_penalty", "length_bonus")
    result = {"without_lm": {k: without[k] for k in keys}, "valid_wer_without_lm": without["wer"], "tried": tried}
    if lm:
        with_lm = min((r for r in tried if r["lm_weight"] > 0), key=lambda r: r["wer"])
        result.update(with_lm={k: with_lm[k] for k in keys}, valid_wer_with_lm=with_lm["wer"],
                      use_lm=with_lm["wer"] < without["wer"])
    else:
        result["use_lm"] = False
    return result


def report(pool, data: Path, decoding: dict, lm: str | None, limit: int | None) -> dict:
    vocabulary = set((data / "text.txt").read_text().split())
    work = [(split, name) for split in TEST_SPLITS for name in ("without_lm", "with_lm")
            if name in decoding and (name == "without_lm" or lm)]
    outputs = pool.map(_decode_star, [(data / f"{split}.jsonl", decoding[name], lm, limit) for split, name in work])
    results = {}
    for (split, name), (metrics, references, hypotheses) in zip(work, outputs):
        results[f"{split}/{name}"] = {"wer": metrics["wer"], "cer": metrics["cer"], "words": metrics["words"],
                                      "utterances": metrics["examples"],
                                      **vocabulary_breakdown(references, hypotheses, vocabulary)}
    return results


def print_report(results: dict, decoding: dict) -> None:
    print(f"decoding chosen on valid: without LM {decoding['without_lm']}")
    if "with_lm" in decoding:
        print(f"                          with LM    {decoding['with_lm']} (used by default: {decoding['use_lm']})")
    print(f"{'split':<24} {'WER %':>7} {'CER %':>7} {'OOV %':>7} {'IV-word err %':>14} {'OOV-word err %':>15} {'words':>6}")
    for name, row in results.items():
        print(f"{name:<24} {row['wer']:7.2f} {row['cer']:7.2f} {row['oov_rate']:7.2f} {row['iv_word_error']:14.2f} "
              f"{row['oov_word_error']:15.2f} {row['words']:6d}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tune_parser = commands.add_parser("tune", help="choose decoding settings on one manifest (the valid split)")
    tune_parser.add_argument("checkpoint")
    tune_parser.add_argument("manifest", type=Path)
    report_parser = commands.add_parser("report", help="score test.jsonl and test_other.jsonl under DATA")
    report_parser.add_argument("checkpoint")
    report_parser.add_argument("data", type=Path)
    report_parser.add_argument("--decoding", type=Path, required=True, help="the JSON that `tune` wrote")
    flags_parser = commands.add_parser("flags", help="print the chosen settings as `mmseq transcribe` options")
    flags_parser.add_argument("decoding", type=Path)
    for sub in (tune_parser, report_parser, flags_parser):
        sub.add_argument("--lm", help="language model: an n-gram model folder (mmseq ngram) or an lm checkpoint")
    for sub in (tune_parser, report_parser):
        sub.add_argument("--out", type=Path, required=True, help="JSON file to write")
        sub.add_argument("--limit", type=int, help="decode only the first LIMIT utterances of each manifest")
        sub.add_argument("--jobs", type=int, default=4, help="decodes run at once, one thread each (default: %(default)s)")
    arguments = parser.parse_args(argv)
    if arguments.command == "flags":
        decoding = json.loads(arguments.decoding.read_text())
        settings = decoding["with_lm"] if decoding.get("use_lm") and arguments.lm else decoding["without_lm"]
        flags = [f"--beam-size={settings['beam_size']}", f"--ctc-weight={settings['ctc_weight']}",
                 f"--length-penalty={settings.get('length_penalty', 1.0)}", f"--length-bonus={settings['length_bonus']}"]
        if settings["lm_weight"] > 0:
            flags += [f"--lm={arguments.lm}", f"--lm-weight={settings['lm_weight']}"]
        print(" ".join(flags))
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(arguments.jobs, _start_worker, (arguments.checkpoint,)) as pool:
        if arguments.command == "tune":
            result = tune(pool, arguments.manifest, arguments.lm, arguments.limit)
        else:
            decoding = json.loads(arguments.decoding.read_text())
            result = report(pool, arguments.data, decoding, arguments.lm, arguments.limit)
            print_report(result, decoding)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
