"""The data preparation of the speech recipes.

Each script runs once as a subprocess, as users run it; the other cases call its ``main(argv)`` in this process,
since every subprocess pays seconds to import torch again.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "recipes" / "synth_speech" / "prepare.py"
LIBRISPEECH = REPO / "recipes" / "librispeech" / "prepare.py"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def run(script, *arguments, **kwargs):
    return subprocess.run([sys.executable, str(script), *map(str, arguments)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, **kwargs)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def load_script(path, name):
    """Import a recipe script as a module, to call its functions and ``main(argv)`` in this process."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth():
    return load_script(SYNTH, "synth_prepare")


@pytest.fixture(scope="module")
def librispeech():
    return load_script(LIBRISPEECH, "librispeech_prepare")


# ---------------------------------------------------------------------------------------------------------
# synth_speech


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("synth")
    result = run(SYNTH, "--out", out, "--num-train", 12, "--num-valid", 4, "--num-test", 4, "--seed", 3, "--jobs", 2)
    assert result.returncode == 0, result.stderr
    return out


def test_synth_manifests_have_the_contract_fields_and_counts(synth_corpus):
    for split, count in (("train", 12), ("valid", 4), ("test", 4)):
        rows = read_jsonl(synth_corpus / f"{split}.jsonl")
        assert len(rows) == count
        for row in rows:
            assert set(row) == {"id", "audio", "text", "duration"}
            assert row["audio"] == f"wav/{row['id']}.wav"
            assert re.fullmatch(r"[a-z']+( [a-z']+){2,9}", row["text"]), row["text"]


def test_synth_splits_are_disjoint_and_sentences_unique(synth_corpus):
    texts = {split: [row["text"] for row in read_jsonl(synth_corpus / f"{split}.jsonl")]
             for split in ("train", "valid", "test")}
    every = texts["train"] + texts["valid"] + texts["test"]
    assert len(set(every)) == len(every)
    assert (synth_corpus / "text.txt").read_text().splitlines() == texts["train"]


def test_synth_audio_is_16k_mono_pcm_with_the_manifest_duration(synth_corpus):
    for split in ("train", "valid", "test"):
        for row in read_jsonl(synth_corpus / f"{split}.jsonl"):
            info = soundfile.info(str(synth_corpus / row["audio"]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert abs(info.duration - row["duration"]) < 1e-3
            samples, _ = soundfile.read(str(synth_corpus / row["audio"]))
            assert 0.5 < row["duration"] < 10 and 0.05 < np.abs(samples).max() < 1.0


def test_synth_rerun_with_same_settings_does_nothing(synth, synth_corpus, capsys):
    wav = synth_corpus / "wav" / "train_00000.wav"
    before = wav.stat().st_mtime_ns
    synth.main(["--out", str(synth_corpus), "--num-train", "12", "--num-valid", "4", "--num-test", "4", "--seed", "3"])
    assert "nothing to do" in capsys.readouterr().out
    assert wav.stat().st_mtime_ns == before


def test_synth_same_seed_gives_same_corpus(synth, synth_corpus, tmp_path):
    # One process here against two workers there: the result must not depend on the scheduling.
    synth.main(["--out", str(tmp_path), "--num-train", "12", "--num-valid", "4", "--num-test", "4", "--seed", "3",
                "--jobs", "1"])
    for split in ("train", "valid", "test"):
        assert read_jsonl(tmp_path / f"{split}.jsonl") == read_jsonl(synth_corpus / f"{split}.jsonl")
    for wav in (synth_corpus / "wav").iterdir():
        assert (tmp_path / "wav" / wav.name).read_bytes() == wav.read_bytes(), wav.name


@needs_espeak
def test_synth_say_writes_one_16k_wav(synth, tmp_path):
    wav = tmp_path / "hello.wav"
    synth.main(["--say", "hello there", "--wav", str(wav), "--voice", "en-gb-x-rp+f3"])
    samples, rate = soundfile.read(str(wav))
    assert rate == 16000 and samples.ndim == 1 and 0.3 < len(samples) / rate < 3


def test_synth_without_espeak_says_how_to_install_it(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--out", str(tmp_path / "corpus"), "--num-train", "2"])
    assert "apt-get install espeak-ng" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "corpus").exists()


def test_synth_grammar_held_out_sentences_use_train_words(synth):
    splits = synth.make_splits(500, 50, 50, seed=1)
    train_words = {word for sentence in splits["train"] for word in sentence.split()}
    held_out = [word for split in ("valid", "test") for sentence in splits[split] for word in sentence.split()]
    assert sum(word in train_words for word in held_out) / len(held_out) > 0.99
    assert not set(splits["train"]) & (set(splits["valid"]) | set(splits["test"]))
    assert not set(splits["valid"]) & set(splits["test"])
    assert splits == synth.make_splits(500, 50, 50, seed=1)
    assert splits != synth.make_splits(500, 50, 50, seed=2)


def test_synth_number_words(synth):
    assert synth.number_words(7) == "seven"
    assert synth.number_words(40) == "forty"
    assert synth.number_words(342) == "three hundred forty two"
    assert synth.number_words(900) == "nine hundred"


@pytest.mark.parametrize("color", ["white", "pink"])
def test_synth_add_noise_hits_the_requested_snr(synth, color):
    generator = np.random.default_rng(0)
    clean = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3
    noisy = synth.add_noise(clean, 20.0, color, generator)
    noise = noisy.astype(np.float64) - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert abs(snr - 20.0) < 0.1
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    low, high = spectrum[10:100].mean(), spectrum[4000:8000].mean()
    assert (low / high > 20) if color == "pink" else (0.5 < low / high < 2)


# ---------------------------------------------------------------------------------------------------------
# librispeech


def make_chapter(split_folder, speaker, chapter, texts, seconds=0.5):
    """A chapter folder with one flac per text and its transcript; returns the transcript path."""
    folder = split_folder / str(speaker) / str(chapter)
    folder.mkdir(parents=True)
    lines = []
    for index, text in enumerate(texts):
        utterance_id = f"{speaker}-{chapter}-{index:04d}"
        samples = np.full(int(16000 * (seconds + 0.25 * index)), 0.1, dtype=np.float32)
        soundfile.write(str(folder / f"{utterance_id}.flac"), samples, 16000)
        lines.append(f"{utterance_id} {text}\n")
    transcript = folder / f"{speaker}-{chapter}.trans.txt"
    transcript.write_text("".join(lines))
    return transcript


@pytest.fixture
def librispeech_root(tmp_path):
    corpus = tmp_path / "root" / "LibriSpeech"
    make_chapter(corpus / "dev-clean", 103, 1240, ["CHAPTER ONE MISSUS RACHEL LYNDE", "IS SURPRISED"])
    make_chapter(corpus / "dev-clean", 103, 1241, ["THAT'S ALL"])
    make_chapter(corpus / "dev-clean", 19, 198, ["NORTHANGER ABBEY", "CATHERINE MORLAND", "HAD BEEN"])
    make_chapter(corpus / "test-clean", 61, 70968, ["HE BEGAN A CONFUSED COMPLAINT"])
    (corpus / "README.TXT").write_text("not a split")
    return tmp_path / "root"


def test_librispeech_manifests(librispeech, librispeech_root, tmp_path):
    out = tmp_path / "manifests"
    librispeech.main(["--root", str(librispeech_root), "--out", str(out)])
    rows = read_jsonl(out / "dev-clean.jsonl")
    # Speakers and chapters in numeric order: 19 before 103.
    assert [row["id"] for row in rows] == ["19-198-0000", "19-198-0001", "19-198-0002",
                                           "103-1240-0000", "103-1240-0001", "103-1241-0000"]
    assert rows[3]["text"] == "chapter one missus rachel lynde"
    assert rows[5]["text"] == "that's all"
    assert [row["duration"] for row in rows[:3]] == [0.5, 0.75, 1.0]
    for row in rows:
        assert set(row) == {"id", "audio", "text", "duration"}
        assert Path(row["audio"]).is_absolute() and Path(row["audio"]).name == row["id"] + ".flac"
        assert Path(row["audio"]).is_file()
    assert [row["id"] for row in read_jsonl(out / "test-clean.jsonl")] == ["61-70968-0000"]
    assert not (out / "train_960.jsonl").exists()


def test_librispeech_chosen_splits_and_the_librispeech_folder_as_root(librispeech, librispeech_root, tmp_path):
    out = tmp_path / "manifests"
    librispeech.main(["--root", str(librispeech_root / "LibriSpeech"), "--out", str(out), "--splits", "test-clean"])
    assert sorted(path.name for path in out.iterdir()) == ["test-clean.jsonl"]


def test_librispeech_train_960_joins_the_three_train_splits(librispeech, tmp_path):
    corpus = tmp_path / "LibriSpeech"
    for number, split in enumerate(["train-clean-100", "train-clean-360", "train-other-500"]):
        make_chapter(corpus / split, 10 + number, 5, ["SOME WORDS", "MORE WORDS"])
    out = tmp_path / "manifests"
    librispeech.main(["--root", str(tmp_path), "--out", str(out)])
    combined = [row["id"] for row in read_jsonl(out / "train_960.jsonl")]
    assert combined == ["10-5-0000", "10-5-0001", "11-5-0000", "11-5-0001", "12-5-0000", "12-5-0001"]


def test_librispeech_broken_line_names_file_and_line(librispeech_root, tmp_path):
    transcript = librispeech_root / "LibriSpeech" / "dev-clean" / "19" / "198" / "19-198.trans.txt"
    lines = transcript.read_text().splitlines()
    lines[1] = "19-198-0001"  # the id without its text
    transcript.write_text("\n".join(lines) + "\n")
    result = run(LIBRISPEECH, "--root", librispeech_root, "--out", tmp_path / "out")
    assert result.returncode != 0
    assert f"{transcript}:2:" in result.stderr and "Traceback" not in result.stderr


def test_librispeech_missing_flac_names_file_and_line(librispeech, librispeech_root, tmp_path):
    folder = librispeech_root / "LibriSpeech" / "dev-clean" / "103" / "1240"
    (folder / "103-1240-0001.flac").unlink()
    with pytest.raises(SystemExit) as exit_info:
        librispeech.main(["--root", str(librispeech_root), "--out", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert f"{folder / '103-1240.trans.txt'}:2:" in message and "103-1240-0001.flac" in message
    assert not (tmp_path / "out" / "dev-clean.jsonl").exists()


def test_librispeech_unknown_split_is_a_one_line_error(librispeech, librispeech_root, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        librispeech.main(["--root", str(librispeech_root), "--out", str(tmp_path / "out"), "--splits", "dev-other"])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "dev-other" in message and "dev-clean" in message
    assert "\n" not in message
