"""Score contextual biasing: names recognised and WER, with the names in the context and without.

    python recipes/synth_bias/score.py exp/synth_bias/best data/synth_bias --out exp/synth_bias/report.json

Decodes, with the checkpoint's decoding settings (attention alone: CTC cannot see the context):

    test                   unseen names, no context
    test_context           the same audio, context = the names and as many distractors, shuffled
    test_context_x10       ... and ten distractors per name
    test_distractors       ... the equal-distractor context without the utterance's names (a control:
                           how often the model writes a listed name it did not hear)
    test_boost             the equal-distractor list given to mmseq.decoding.scorers.ContextBoost (shallow
                           fusion: a bonus for tokens spelling a listed word), not to the decoder
    test_context_boost     the list both in the decoder's context and boosted
    test_distractors_boost ... without the utterance's names (the control, boosted)
    test_seen              train names (in-vocabulary), no context; test_seen_context with one

The two boost weights (boosted alone, boosted with the list in the context) are chosen on the first
100 lines of valid.jsonl (its own names; lowest WER) unless --boost gives them.

For each: WER, the name error rate (a name is right when the word alignment of reference and
hypothesis marks it correct), and for the contexts how many hypothesis words are a listed
distractor. "errors fixed" is the share of the no-context name errors that the context removes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path



sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import _sibling  # noqa: E402  (this recipe's prepare.py)


# recipes/synth_speech/score.py: the word alignment
align = _sibling(Path(__file__).resolve().parents[1] / "synth_speech" / "score.py", "synth_speech_score").align

# name: (manifest under DATA, drop the utterance's names from the list, the decoder sees the list,
# the list is boosted by shallow fusion with the weight chosen on valid)
CONDITIONS = {
    "test": ("test.jsonl", False, True, False),
    "test_context": ("test_context.jsonl", False, True, False),
    "test_context_x10": ("test_context_x10.jsonl", False, True, False),
    "test_distractors": ("test_context.jsonl", True, True, False),
    "test_boost": ("test_context.jsonl", False, False, True),
    "test_context_boost": ("test_context.jsonl", False, True, True),
    "test_distractors_boost": ("test_context.jsonl", True, True, True),
    "test_seen": ("test_seen.jsonl", False, True, False),
    "test_seen_context": ("test_seen_context.jsonl", False, True, False),
}
BOOST_GRID = (1.0, 2.0, 3.0, 4.0, 6.0)
_MODEL = {}


def _start_worker(checkpoint: str) -> None:
    import torch

    from mmseq.checkpoint import load
    torch.set_num_threads(1)  # the parallelism is across decodes
    _MODEL["model"] = load(checkpoint, "cpu")


def name_scores(lines: list[dict], hypotheses: dict[str, str]) -> dict:
    """Name error rate (%) and counts over manifest ``lines`` (each with ``text``, ``names`` and
    maybe ``context``) given the hypothesis of each line's id; also how many hypothesis words are
    listed distractors.

    >>> name_scores([{"id": "a", "text": "call bo now", "names": ["bo"], "context": ["bo", "al"]}], {"a": "call al now"})
    {'names': 1, 'name_errors': 1, 'name_error': 100.0, 'distractors_written': 1}
    """
    names = errors = written = 0
    for line in lines:
        reference, hypothesis = line["text"].split(), hypotheses[line["id"]].split()
        correct, _ = align(reference, hypothesis)
        for word, right in zip(reference, correct):
            if word in line["names"]:
                names += 1
                errors += not right
        distractors = set(line.get("context") or []) - set(line["names"])
        written += sum(word in distractors for word in hypothesis)
    return {"names": names, "name_errors": errors, "name_error": 100 * errors / max(names, 1),
            "distractors_written": written}


def decode(data: Path, condition: str, limit: int | None, options: dict, boost: float = 0.0) -> dict:
    """Decode one condition (a name of CONDITIONS, or ``valid_boost`` / ``valid_context_boost``)
    with the worker's model; its WER and name scores. ``boost``: the weight of
    :class:`mmseq.decoding.scorers.ContextBoost` over each line's context words, in boosted conditions."""
    import torch
    from torch.utils.data import DataLoader

    from mmseq.decoding.scorers import ContextBoost
    from mmseq.tasks import ExampleDataset

    model = _MODEL["model"]
    valid = {"valid_boost": ("valid.jsonl", False, False, True), "valid_context_boost": ("valid.jsonl", False, True, True)}
    manifest, drop_names, sees_list, boosted = {**CONDITIONS, **valid}[condition]
    lines = [json.loads(line) for line in (data / manifest).read_text().splitlines()][:limit]
    by_id = {}
    for line in lines:
        line["audio"] = str((data / line["audio"]).resolve())
        if drop_names:
            line["context"] = [name for name in line["context"] if name not in line["names"]]
        by_id[line["id"]] = line
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        examples, _ = model.task.read(path, training=False)
    loader = DataLoader(ExampleDataset(model.task, examples, training=False), batch_size=32,
                        collate_fn=model.task.collate)
    start, hypotheses, references = time.process_time(), {}, []
    with torch.no_grad():
        for batch in loader:
            scorers = []
            if not sees_list:  # the list goes to the scorer alone, not to the decoder
                batch["contexts"] = [[] for _ in batch["ids"]]
            if boosted and boost:
                words = [by_id[i].get("context") or [] for i in batch["ids"]]
                scorers = [(ContextBoost(model.tokenizer, words), boost)]
            for i, text, refs in zip(batch["ids"], model.decode_texts(batch, scorers=scorers, **options),
                                     batch["references"]):
                hypotheses[i] = text
                references.append((refs, text))
    seconds = time.process_time() - start
    metrics = model.task.score([r for r, _ in references], [h for _, h in references])
    examples = [{"id": line["id"], "reference": line["text"], "hypothesis": hypotheses[line["id"]],
                 "context": line.get("context")} for line in lines[:5]]
    return {"wer": metrics["wer"], "utterances": len(hypotheses), "words": metrics["words"],
            "cpu_seconds": round(seconds, 1), **name_scores(lines, hypotheses), "examples": examples}


def _decode_star(arguments):
    return arguments[1], decode(*arguments)


def print_report(results: dict) -> None:
    print(f"{'condition':<20} {'WER %':>7} {'name err %':>11} {'names':>6} {'distractors written':>20} {'utts':>5}")
    for name, row in results.items():
        if isinstance(row, dict) and "wer" in row:
            print(f"{name:<20} {row['wer']:7.2f} {row['name_error']:11.2f} {row['names']:6d} "
                  f"{row['distractors_written']:20d} {row['utterances']:5d}")
    for key, value in results.items():
        if key.startswith("errors_fixed"):
            print(f"{key}: {value:.1f} % of the no-context name errors")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data", type=Path, help="the folder prepare.py wrote")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--limit", type=int, help="decode only the first LIMIT utterances of each manifest")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--beam-size", type=int, help="default: the checkpoint's")
    parser.add_argument("--ctc-weight", type=float, help="default: the checkpoint's")
    parser.add_argument("--boost", type=float, nargs=2, metavar=("ALONE", "WITH_CONTEXT"),
                        help="ContextBoost weights, the list boosted alone and boosted while the decoder "
                             "sees it (default: chosen on the first 100 lines of valid.jsonl, lowest WER)")
    parser.add_argument("--jobs", type=int, default=2, help="decodes run at once, one thread each (default: %(default)s)")
    arguments = parser.parse_args(argv)
    options = {key: value for key, value in (("beam_size", arguments.beam_size), ("ctc_weight", arguments.ctc_weight))
               if value is not None}
    import multiprocessing

    from mmseq.checkpoint import read_config
    read_config(Path(arguments.checkpoint))  # here: a worker whose start fails is only started again, forever
    results = {}
    with multiprocessing.get_context("spawn").Pool(arguments.jobs, _start_worker, (arguments.checkpoint,)) as pool:
        boosts = arguments.boost
        if boosts is None and any(CONDITIONS[c][3] for c in arguments.conditions):
            grid = [(condition, weight) for condition in ("valid_boost", "valid_context_boost") for weight in BOOST_GRID]
            tried = pool.map(_decode_star, [(arguments.data, c, 100, options, w) for c, w in grid])
            results["boost_tuning"] = [{"condition": c, "weight": w, "wer": r["wer"], "name_error": r["name_error"]}
                                       for (c, w), (_, r) in zip(grid, tried)]
            boosts = [min((t for t in results["boost_tuning"] if t["condition"] == c), key=lambda t: t["wer"])["weight"]
                      for c in ("valid_boost", "valid_context_boost")]
            print(f"boost weights chosen on valid (alone, with context): {boosts}")
        boosts = boosts or [0.0, 0.0]
        work = [(arguments.data, c, arguments.limit, options, boosts[CONDITIONS[c][2]] if CONDITIONS[c][3] else 0.0)
                for c in arguments.conditions]
        results.update(pool.map(_decode_star, work))
        results["boost_weights"] = boosts
    for context, plain in (("test_context", "test"), ("test_context_x10", "test"), ("test_boost", "test"),
                           ("test_context_boost", "test"), ("test_seen_context", "test_seen")):
        if context in results and plain in results and results[plain]["name_errors"]:
            fixed = 1 - results[context]["name_errors"] / results[plain]["name_errors"]
            results[f"errors_fixed_{context}"] = 100 * fixed
    results["options"] = options
    print_report(results)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
