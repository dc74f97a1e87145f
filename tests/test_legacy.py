"""Checkpoints written before the one-shape model (``tests/fixtures/legacy``, made by
``tests/fixtures/make_legacy.py`` with mmseq at commit 2cd68e7) load and decode as that code
decoded them (the same tokens, scores within float noise): single-task speech (characters and
sentencepiece), caption, text, and a multitask model of the three."""

import json
from pathlib import Path

import pytest

from mmseq.checkpoint import load

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
        # The same tokens; scores within float noise: the kernels of another CPU (AVX2 against
        # AVX-512) round a near-certain token's log-probability differently in the 4th digit.
        assert [[h.tokens for h in nbest] for nbest in hyps] == \
            [[h["tokens"] for h in nbest] for nbest in result["hypotheses"]], result["options"]
        got = [[(h.score, h.log_prob) for h in nbest] for nbest in hyps]
        want = [[(h["score"], h["log_prob"]) for h in nbest] for nbest in result["hypotheses"]]
        assert got == [[pytest.approx(pair, rel=1e-3, abs=1e-3) for pair in nbest] for nbest in want], result["options"]
