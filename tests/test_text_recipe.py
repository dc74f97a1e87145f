"""recipes/synth_text/prepare.py: numbers spelled right, splits that share no number, every number
below 100 in train, and a corpus that follows from its settings alone."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("synth_text_prepare", REPO / "recipes" / "synth_text" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("number, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (45, "forty five"), (100, "one hundred"),
    (1203, "one thousand two hundred three"), (40017, "forty thousand seventeen"),
    (800000, "eight hundred thousand"), (999999, "nine hundred ninety nine thousand nine hundred ninety nine"),
    (110011, "one hundred ten thousand eleven"),
])
def test_spell(prepare, number, words):
    assert prepare.spell(number) == words


def test_spell_refuses_numbers_out_of_range(prepare):
    for number in (-1, 10 ** 6):
        with pytest.raises(ValueError, match="0 to 999999"):
            prepare.spell(number)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corpus_splits_are_disjoint_and_train_has_every_small_number(prepare, tmp_path, capsys):
    prepare.main(["--out", str(tmp_path), "--num-train", "600", "--num-valid", "50", "--num-test", "80",
                  "--small-repeats", "3"])
    splits = {name: read(tmp_path / f"{name}.jsonl") for name in ("train", "valid", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 600, "valid": 50, "test": 80}
    numbers = {k: [int(e["source"]) for e in v] for k, v in splits.items()}
    assert all(e["text"] == prepare.spell(int(e["source"])) for v in splits.values() for e in v)
    assert all(numbers["train"].count(n) == 3 for n in range(100))  # the small numbers, each repeated
    assert len(set(numbers["train"]) - set(range(100))) == 600 - 300  # the rest drawn once each
    assert not set(numbers["train"]) & set(numbers["valid"]) and not set(numbers["train"]) & set(numbers["test"])
    assert not set(numbers["valid"]) & set(numbers["test"])
    assert all(100 <= n < 10 ** 6 for n in numbers["valid"] + numbers["test"])  # 3 to 6 digits
    before = (tmp_path / "test.jsonl").read_text()
    capsys.readouterr()
    prepare.main(["--out", str(tmp_path), "--num-train", "600", "--num-valid", "50", "--num-test", "80",
                  "--small-repeats", "3"])
    assert "already made" in capsys.readouterr().err
    again = tmp_path / "again"
    prepare.main(["--out", str(again), "--num-train", "600", "--num-valid", "50", "--num-test", "80",
                  "--small-repeats", "3"])
    assert (again / "test.jsonl").read_text() == before  # the seed decides everything
