"""Checkpoints written before the one-shape model (``tests/fixtures/legacy``, made by
``tests/fixtures/make_legacy.py`` with mmseq at commit 2cd68e7) load and decode bit for bit as
that code decoded them: single-task speech (characters and sentencepiece), caption, text, and a
multitask model of the three."""

import json
from pathlib import Path

import pytest

from mmseq.model import load

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
CASES = [(name, task) for name, tasks in EXPECTED.items() for task in tasks]


@pytest.mark.parametrize("name,task", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_legacy_checkpoint_decodes_as_before(name, task):
    model = load(LEGACY / name)
    route = model.route(task)
    case = EXPECTED[name][task]
    loaded = [route.task.load_input(str(LEGACY / "inputs" / s) if task != "text" else s) for s in case["inputs"]]
    inputs, lengths = route.task.collate_inputs(loaded)
    for result in case["results"]:
        hyps = model.generate({"inputs": inputs, "lengths": lengths, "task": task}, **result["options"],
                              max_length=12)
        got = [[{"tokens": h.tokens, "score": h.score, "log_prob": h.log_prob} for h in nbest] for nbest in hyps]
        assert got == result["hypotheses"], result["options"]
