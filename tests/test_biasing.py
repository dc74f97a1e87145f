"""Biasing lists built as the LibriSpeech lists are, and the B-WER / U-WER that score them."""

import importlib.util
import json
from pathlib import Path

import pytest

from mmseq.errors import InputError
from mmseq.metrics.biasing import biased_word_errors

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("biasing_lists", ROOT / "tools" / "biasing_lists.py")
biasing_lists = importlib.util.module_from_spec(spec)
spec.loader.exec_module(biasing_lists)


def test_errors_fall_on_the_listed_or_the_other_words():
    scores = biased_word_errors(
        ["The Kowalski family arrived late.", "a quiet evening"],
        ["the kowalsky family arrived late", "a quiet nguyen evening"],
        [["Kowalski", "zebra"], ["Nguyen"]])
    # a substitution counts on its reference word; an insertion on the word inserted
    assert (scores["biased_words"], scores["biased_errors"]) == (1, 2)
    assert (scores["unbiased_words"], scores["unbiased_errors"]) == (7, 0)
    assert scores["b_wer"] == 200.0 and scores["u_wer"] == 0.0 and scores["wer"] == pytest.approx(25.0)
    deletion = biased_word_errors(["see the otter swim"], ["see the swim"], [["otter"]])
    assert deletion["b_wer"] == 100.0 and deletion["u_wer"] == 0.0
    assert biased_word_errors(["one two"], [""], [[]])["u_wer"] == 100.0
    with pytest.raises(InputError, match="one list per reference"):
        biased_word_errors(["a"], ["a"], [])


def test_lists_hold_the_rare_words_and_distractors_the_utterance_does_not_say(tmp_path):
    common = tmp_path / "common.txt"
    common.write_text("\n".join(["the", "a", "is", "now", "it", "stand", "look"]))
    vocabulary = tmp_path / "rare.txt"
    vocabulary.write_text("\n".join(f"word{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)) + "\nseam\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u1", "audio": "u1.wav", "text": "Look, the seam is now broken!"}) + "\n"
                        + json.dumps({"id": "u2", "audio": "u2.wav", "text": "It is 42."}) + "\n")
    out = tmp_path / "out" / "lists.jsonl"
    arguments = [str(manifest), "--n", "20", "--out", str(out), "--common-words", str(common),
                 "--vocabulary-words", str(vocabulary)]
    assert biasing_lists.main(arguments) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first, second = rows[0]["biasing"], rows[1]["biasing"]
    assert {"seam", "broken"} <= set(first) and len(first) == 22 and len(set(first)) == 22
    assert len(second) == 20 and "42" not in second  # numbers are not rare words
    assert not {"look", "the", "is", "now"} & set(first)
    assert rows[0]["audio"] == str(tmp_path / "u1.wav")  # paths stay valid from the new folder
    biasing_lists.main(arguments + ["--out", str(tmp_path / "again.jsonl")])
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # the same seed, the same lists
    biasing_lists.main(arguments + ["--out", str(tmp_path / "boost.jsonl"), "--as", "context"])
    assert isinstance(json.loads((tmp_path / "boost.jsonl").read_text().splitlines()[0])["context"], str)


def test_training_lists_leave_some_lines_without_a_list_or_without_their_own_words(tmp_path):
    common = tmp_path / "common.txt"
    common.write_text("the\na\n")
    vocabulary = tmp_path / "rare.txt"
    vocabulary.write_text("\n".join(f"word{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"u{i}", "text": f"the zorblax{i} a quux{i}"}) + "\n" for i in range(400)))
    out = tmp_path / "train.jsonl"
    assert biasing_lists.main([str(manifest), "--n", "30", "--random-n", "--empty", "0.25", "--wrong", "0.25",
                               "--out", str(out), "--common-words", str(common), "--vocabulary-words", str(vocabulary)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    own = [{f"zorblax{i}", f"quux{i}"} & set(row["biasing"]) for i, row in enumerate(rows)]
    empty = sum(not row["biasing"] for row in rows)
    wrong = sum(bool(row["biasing"]) and not found for row, found in zip(rows, own))
    assert 60 < empty < 140 and 60 < wrong < 140  # a quarter each, of 400
    assert all(len(found) in (0, 2) for found in own)
    assert len({len(row["biasing"]) - len(found) for row, found in zip(rows, own) if row["biasing"]}) > 10  # N from 0 to 30
    with pytest.raises(SystemExit):
        biasing_lists.main([str(manifest), "--empty", "0.7", "--wrong", "0.5", "--out", str(out)])
