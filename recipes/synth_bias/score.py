"""Score contextual biasing: names recognised and WER, with the names in the context and without.

    python recipes/synth_bias/score.py exp/synth_bias/best data/synth_bias --out exp/synth_bias/report.json

Decodes, with the checkpoint's decoding settings (attention alone: CTC cannot see the context):

    test                   unseen names, no context
    test_context           the same audio, context = the names and as many distractors, shuffled
    test_context_x10       ... and ten distractors per name
    test_distractors       ... the equal-distractor context without the utterance's names (a control:
                           how often the model writes a listed name it did not hear)
    test_seen              train names (in-vocabulary), no context; test_seen_context with one

For each: WER, the name error rate (a name is right when the word alignment of reference and
hypothesis marks it correct), and for the contexts how many hypothesis words are a listed
distractor. "errors fixed" is the share of the no-context name errors that the context removes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path



def _sibling(path: Path, name: str):
    """Import another recipe's script (as ``name``, so it never shadows or is shadowed by this one)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# recipes/synth_speech/score.py: the word alignment
align = _sibling(Path(__file__).resolve().parents[1] / "synth_speech" / "score.py", "synth_speech_score").align

CONDITIONS = {  # name: (manifest under DATA, how its context is changed)
    "test": ("test.jsonl", None),
    "test_context": ("test_context.jsonl", None),
    "test_context_x10": ("test_context_x10.jsonl", None),
    "test_distractors": ("test_context.jsonl", "drop_names"),
    "test_seen": ("test_seen.jsonl", None),
    "test_seen_context": ("test_seen_context.jsonl", None),
}
_MODEL = {}


def _start_worker(checkpoint: str) -> None:
    import torch

    from mmseq.model import load
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


def decode(data: Path, condition: str, limit: int | None, options: dict) -> dict:
    """Decode one condition in the worker's model; its WER and name scores."""
    from mmseq.evaluate import evaluate

    manifest, change = CONDITIONS[condition]
    lines = [json.loads(line) for line in (data / manifest).read_text().splitlines()][:limit]
    for line in lines:
        line["audio"] = str((data / line["audio"]).resolve())
        if change == "drop_names":
            line["context"] = [name for name in line["context"] if name not in line["names"]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        start = time.process_time()
        metrics = evaluate(_MODEL["model"], path, Path(folder) / "out", batch_size=32, num_workers=0, **options)
        seconds = time.process_time() - start
        rows = [json.loads(row) for row in open(Path(folder) / "out" / "hypotheses.jsonl")]
    hypotheses = {row["id"]: row["hypothesis"] for row in rows}
    examples = [{"id": line["id"], "reference": line["text"], "hypothesis": hypotheses[line["id"]],
                 "context": line.get("context")} for line in lines[:5]]
    return {"wer": metrics["wer"], "utterances": metrics["examples"], "words": metrics["words"],
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
    parser.add_argument("--ctc-weight", type=float, help="default: the checkpoint's (0: CTC cannot see the context)")
    parser.add_argument("--jobs", type=int, default=2, help="decodes run at once, one thread each (default: %(default)s)")
    arguments = parser.parse_args(argv)
    options = {key: value for key, value in (("beam_size", arguments.beam_size), ("ctc_weight", arguments.ctc_weight))
               if value is not None}
    import multiprocessing

    work = [(arguments.data, condition, arguments.limit, options) for condition in arguments.conditions]
    with multiprocessing.get_context("spawn").Pool(arguments.jobs, _start_worker, (arguments.checkpoint,)) as pool:
        results = dict(pool.map(_decode_star, work))
    for context, plain in (("test_context", "test"), ("test_context_x10", "test"), ("test_seen_context", "test_seen")):
        if context in results and plain in results and results[plain]["name_errors"]:
            fixed = 1 - results[context]["name_errors"] / results[plain]["name_errors"]
            results[f"errors_fixed_{context}"] = 100 * fixed
    results["options"] = options
    print_report(results)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
