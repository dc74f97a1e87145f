"""The data rules of recipes/synth_bias: held-out names never in training text, contexts that hold
the utterance's names among distractors, and the name scoring of its score.py."""

import importlib.util
import random
import string
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = load_script(REPO / "recipes" / "synth_bias" / "prepare.py", "synth_bias_prepare")
score = load_script(REPO / "recipes" / "synth_bias" / "score.py", "synth_bias_score")
SIZES = {"train": 300, "valid": 30, "test": 40, "test_seen": 30}


def pseudo_names(count, seed=0):
    rng = random.Random(seed)
    names = set()
    while len(names) < count:
        names.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 8))))
    return sorted(names)


@pytest.fixture
def corpus():
    pools = prepare.split_names(pseudo_names(900), num_test=120, num_valid=60, seed=1)
    return pools, prepare.make_splits(pools, SIZES, seed=1)


def test_names_of_a_word_list():
    words = ["Aaron", "aaron's", "Bill", "bill", "Victorian", "Victorians", "Zeke", "Zekes", "NATO", "O'Neil",
             "Jo", "Kwan", "Sparta", "apple"]
    # Bill is also an ordinary word; Victorians and Zekes are plurals of names; NATO, O'Neil and Jo are
    # not a capital and 2 to 9 letters.
    assert prepare.names_of(words) == ["aaron", "kwan", "sparta", "victorian", "zeke"]


def test_held_out_names_never_occur_in_training_text(corpus):
    pools, splits = corpus
    assert not set(pools["test"]) & set(pools["train"]) and not set(pools["valid"]) & set(pools["train"])
    train_words = {w for line in splits["train"] for w in line["text"].split() + line["context"]}
    test_names = [n for line in splits["test"] for n in line["names"]]
    assert len(test_names) >= SIZES["test"] and not set(test_names) & train_words
    assert all(set(line["names"]) <= set(pools["test"]) for line in splits["test"])
    # The seen split's names are all spoken in train.
    spoken = {n for line in splits["train"] for n in line["names"]}
    assert all(set(line["names"]) <= spoken for line in splits["test_seen"])
    check = prepare.check_splits(splits, pools)
    assert check["test_names_in_train_text"] == 0 and check["test_names"] == len(test_names)


def test_contexts_hold_the_names_among_distractors(corpus):
    pools, splits = corpus
    for line in splits["train"]:
        assert line["text"].split().count(line["names"][0]) >= 1
        assert set(line["context"]) <= set(pools["train"]) and len(set(line["context"])) == len(line["context"])
        others = [n for n in line["context"] if n not in line["names"]]
        assert len(others) <= prepare.MAX_DISTRACTORS
    listed = [set(line["names"]) <= set(line["context"]) for line in splits["train"]]
    # Most lines list their names, some (UNLISTED_SHARE) do not: copying must be conditional on hearing.
    assert 0.7 < sum(listed) / len(listed) < 0.95
    assert all(not set(line["names"]) & set(line["context"]) for line, has in zip(splits["train"], listed) if not has)
    # Names land in different positions of the lists (shuffled, not always first or last).
    first = [line["context"].index(line["names"][0]) for line, has in zip(splits["train"], listed) if has]
    assert len(set(first)) > 3
    for line in splits["test"]:
        n = len(line["names"])
        assert sorted(n_ for n_ in line["context"] if n_ in line["names"]) == sorted(line["names"])
        assert len(line["context"]) == 2 * n and len(line["context_x10"]) == (prepare.TEST_X + 1) * n
        assert set(line["context"]) <= set(line["context_x10"]) <= set(pools["test"])


def test_the_check_fails_on_a_leaked_name_or_a_bad_context(corpus):
    pools, splits = corpus
    leaked = splits["test"][0]["names"][0]
    splits["train"][0]["text"] += f" {leaked}"
    with pytest.raises(RuntimeError, match="occur in the training text"):
        prepare.check_splits(splits, pools)
    splits["train"][0]["text"] = splits["train"][0]["text"].rsplit(" ", 1)[0]
    splits["test"][1]["context"] = splits["test"][1]["context"][1:]
    with pytest.raises(RuntimeError, match="as many distractors"):
        prepare.check_splits(splits, pools)


def test_name_scores_count_aligned_names_and_written_distractors():
    lines = [{"id": "a", "text": "call bo now", "names": ["bo"], "context": ["bo", "al"]},
             {"id": "b", "text": "bo met cy at noon", "names": ["bo", "cy"], "context": ["cy", "bo", "al", "di"]}]
    result = score.name_scores(lines, {"a": "call bo now", "b": "bo met al at noon"})
    assert result == {"names": 3, "name_errors": 1, "name_error": 100 / 3, "distractors_written": 1}
    # A deleted name is an error too, and words outside the list are no distractors.
    result = score.name_scores(lines[:1], {"a": "call now"})
    assert result["name_errors"] == 1 and result["distractors_written"] == 0
