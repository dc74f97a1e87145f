"""Boost lists from every entry point: ``generate(boost=...)`` with ``boost_weight``, a manifest
line's ``"boost"`` (batches and batch jobs), ``--boost FILE --boost-weight W``, and their errors."""

import json

import pytest
import soundfile

import mmseq
from conftest import SAMPLE_RATE, make_model, tone, waveform_batch
from mmseq.cli import main
from mmseq.data.manifest import read_manifest
from mmseq.errors import ConfigError, InputError, ManifestError

WORDS = [["dog"], ["bird"]]


def has(text: str, word: str) -> bool:
    return word in text.split()


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generate_boosts_each_inputs_own_words(char_tokenizer, beam_size):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    batch = waveform_batch([0.5, 0.6])
    plain = model.decode_texts(batch, beam_size=beam_size)
    assert not any(has(text, w[0]) for w, text in zip(WORDS, plain))
    # Without a weight the list does nothing; with one each input gets its own word only.
    assert model.decode_texts(batch, beam_size=beam_size, boost=WORDS) == plain
    boosted = model.decode_texts(batch, beam_size=beam_size, boost=WORDS, boost_weight=20.0)
    assert has(boosted[0], "dog") and not has(boosted[0], "bird")
    assert has(boosted[1], "bird") and not has(boosted[1], "dog")
    # One list for every input; a batch's own lists ("boosts" of collate) replace it.
    both = model.decode_texts(batch, beam_size=beam_size, boost=["dog"], boost_weight=20.0)
    assert all(has(text, "dog") for text in both)
    own = model.decode_texts({**batch, "boosts": [None, ["bird"]]}, beam_size=beam_size, boost=["dog"],
                             boost_weight=20.0)
    assert has(own[0], "dog") and has(own[1], "bird") and not has(own[1], "dog")


def test_generate_refuses_boost_lists_of_the_wrong_shape(char_tokenizer):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    batch = waveform_batch([0.5, 0.6])
    with pytest.raises(InputError, match="3 lists for 2 inputs"):
        model.decode_texts(batch, boost=[["a"], ["b"], ["c"]], boost_weight=1.0)
    with pytest.raises(InputError, match="list of words"):
        model.decode_texts(batch, boost=[["a"], [1]], boost_weight=1.0)


@pytest.fixture
def boost_job(char_tokenizer, tmp_path):
    """A saved tiny model, two recordings and a manifest of them (the tones of ``waveform_batch``)."""
    model = make_model(char_tokenizer, ctc_weight=0.0)
    mmseq.save(model, tmp_path / "ckpt")
    for i, seconds in enumerate([0.5, 0.6]):
        soundfile.write(tmp_path / f"u{i}.wav", tone(seconds, 300 + 50 * i, i), SAMPLE_RATE, subtype="FLOAT")
    return tmp_path


def write_manifest(folder, boosts: list) -> str:
    lines = [{"id": f"u{i}", "audio": f"u{i}.wav", **({} if b is None else {"boost": b})} for i, b in enumerate(boosts)]
    (folder / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(folder / "m.jsonl")


def texts_of(path) -> dict:
    return {row["id"]: row["text"] for row in map(json.loads, path.read_text().splitlines())}


def test_manifest_lines_boost_their_own_words_in_a_batch_job(boost_job):
    manifest = write_manifest(boost_job, [["dog"], "bird"])  # a string is one phrase
    out = boost_job / "out.jsonl"
    args = ["transcribe", str(boost_job / "ckpt"), manifest, "--output", str(out), "--beam-size", "3"]
    assert main(args) == 0
    plain = texts_of(out)
    assert not has(plain["u0"], "dog") and not has(plain["u1"], "bird")
    assert main(args[:4] + [str(boost_job / "boosted.jsonl"), "--beam-size", "3", "--boost-weight", "20"]) == 0
    boosted = texts_of(boost_job / "boosted.jsonl")
    assert has(boosted["u0"], "dog") and has(boosted["u1"], "bird") and not has(boosted["u1"], "dog")


def test_boost_file_applies_to_every_input_unless_a_line_has_its_own(boost_job):
    words = boost_job / "words.txt"
    words.write_text("# names\n\ndog\n")
    manifest = write_manifest(boost_job, [None, ["bird"]])
    out = boost_job / "out.jsonl"
    assert main(["transcribe", str(boost_job / "ckpt"), manifest, "--output", str(out), "--beam-size", "3",
                 "--boost", str(words), "--boost-weight", "20"]) == 0
    boosted = texts_of(out)
    assert has(boosted["u0"], "dog") and has(boosted["u1"], "bird") and not has(boosted["u1"], "dog")
    # From Python: model.transcribe with a list for every input.
    model = mmseq.load(boost_job / "ckpt", "cpu")
    texts = model.transcribe([str(boost_job / "u0.wav"), str(boost_job / "u1.wav")], beam_size=3, boost=["dog"],
                             boost_weight=20.0)
    assert all(has(text, "dog") for text in texts)


def test_eval_boosts_the_manifest_lines_words(boost_job):
    lines = [{"id": "u0", "audio": "u0.wav", "text": "dog", "boost": ["dog"]},
             {"id": "u1", "audio": "u1.wav", "text": "bird", "boost": ["bird"]}]
    (boost_job / "e.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = boost_job / "eval"
    assert main(["eval", str(boost_job / "ckpt"), str(boost_job / "e.jsonl"), "--out", str(out),
                 "--beam-size", "3", "--boost-weight", "20"]) == 0
    rows = {row["id"]: row["hypothesis"] for row in map(json.loads, (out / "hypotheses.jsonl").read_text().splitlines())}
    assert has(rows["u0"], "dog") and has(rows["u1"], "bird")


def test_bad_boost_values_and_a_missing_boost_file_are_one_line_errors(boost_job, capsys):
    manifest = write_manifest(boost_job, [["dog"], [3]])
    out = boost_job / "out.jsonl"
    assert main(["transcribe", str(boost_job / "ckpt"), manifest, "--output", str(out), "--boost-weight", "20"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert f"mmseq: error: {manifest}:2: field 'boost' must be a list of words or phrases" in error[0]
    with pytest.raises(ManifestError, match=r"m.jsonl:2: field 'boost' must be a list"):
        read_manifest(manifest)
    missing = boost_job / "no-such-words.txt"
    for command in (["transcribe", str(boost_job / "no-checkpoint"), manifest, "--output", str(boost_job / "o.jsonl")],
                    ["eval", str(boost_job / "no-checkpoint"), manifest]):
        assert main(command + ["--boost", str(missing)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"mmseq: error: --boost {missing}: cannot read the word list" in error


def test_boost_weight_is_a_decoding_setting_with_a_range(char_tokenizer, boost_job, capsys):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    with pytest.raises(ConfigError, match="boost_weight"):
        model.decode_texts(waveform_batch([0.5]), boost=["dog"], boost_weight=-1.0)
    assert main(["transcribe", str(boost_job / "ckpt"), str(boost_job / "u0.wav"), "--boost-weight", "1000"]) == 2
    assert "--boost-weight 1000" in capsys.readouterr().err
