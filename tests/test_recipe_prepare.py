"""The data preparation of the speech recipes.

Each script runs once as a subprocess, as users run it; the other cases call its ``main(argv)`` in this process,
since every subprocess pays seconds to import torch again.
"""

import gzip
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


ADJECTIVES = ["red", "quiet", "heavy", "bright", "small", "old"]
NOUNS = ["river", "garden", "teacher", "window", "market", "engine"]


def fake_sources(cache):
    """Tiny stand-ins for the three Debian packages, in their real layouts, marked as unpacked."""
    wordnet = cache / "wordnet-base" / "usr/share/wordnet"
    wordnet.mkdir(parents=True)
    (wordnet / "data.noun").write_text(
        "  1 This software and database is being provided | under licence\n"
        + "".join(f"0000{i:04d} 03 n 01 word 0 000 | a {a} {n} beside the road; a place of {n}s; "
                  f'"the {a} {n} was near the house"\n'
                  for i, (a, n) in enumerate((a, n) for a in ADJECTIVES for n in NOUNS)))
    for part in ("verb", "adj", "adv"):
        (wordnet / f"data.{part}").write_text(f'00000001 00 v 01 run 0 000 | move fast on foot; "she ran to the {part}"\n')
    devil = "\n\n".join(f"{n.upper()}, n.  A {a} thing that nobody wants.  Seen from far away it looks like a {n}.\n"
                        f"    A verse line about the {n}\n    that rhymes with nothing"
                        for a in ADJECTIVES[:3] for n in NOUNS)
    gcide = "\n\n".join(f"Word \\Wo*rd\\, n. [AS. word.]\n   A {a} {n} of the old kind.\n   [1913 Webster]"
                        for a in ADJECTIVES for n in NOUNS)
    for package, name, text in (("dict-devil", "devil", "00-database-short\n\n" + devil), ("dict-gcide", "gcide", gcide)):
        folder = cache / package / "usr/share/dictd"
        folder.mkdir(parents=True)
        with gzip.open(folder / f"{name}.dict.dz", "wt") as handle:
            handle.write(text)
    for package in ("wordnet-base", "dict-devil", "dict-gcide"):
        (cache / package / ".done").write_text("")


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("synth")
    fake_sources(out / "sources")
    result = run(SYNTH, "--out", out, "--num-train", 12, "--num-valid", 4, "--num-test", 4, "--num-test-other", 4,
                 "--seed", 3, "--jobs", 2)
    assert result.returncode == 0, result.stderr
    return out


def test_synth_manifests_have_the_contract_fields_and_counts(synth_corpus):
    for split, count in (("train", 12), ("valid", 4), ("test", 4), ("test_other", 4)):
        rows = read_jsonl(synth_corpus / f"{split}.jsonl")
        assert len(rows) == count
        for row in rows:
            assert set(row) == {"id", "audio", "text", "duration"}
            assert row["audio"] == f"wav/{row['id']}.wav"
            assert re.fullmatch(r"[a-z']+( [a-z']+){3,15}", row["text"]), row["text"]


def test_synth_splits_are_disjoint_and_sentences_unique(synth_corpus):
    texts = {split: [row["text"] for row in read_jsonl(synth_corpus / f"{split}.jsonl")]
             for split in ("train", "valid", "test", "test_other")}
    every = [text for split_texts in texts.values() for text in split_texts]
    assert len(set(every)) == len(every)
    assert (synth_corpus / "text.txt").read_text().splitlines() == texts["train"]
    lm_text = {row["text"] for row in read_jsonl(synth_corpus / "lm.jsonl")}
    assert set(texts["train"]) <= lm_text
    assert not lm_text & set(texts["valid"] + texts["test"] + texts["test_other"])


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
    synth.main(["--out", str(synth_corpus), "--num-train", "12", "--num-valid", "4", "--num-test", "4",
                "--num-test-other", "4", "--seed", "3"])
    assert "nothing to do" in capsys.readouterr().out
    assert wav.stat().st_mtime_ns == before


def test_synth_same_seed_gives_same_corpus(synth, synth_corpus, tmp_path):
    # One process here against two workers there: the result must not depend on the scheduling.
    fake_sources(tmp_path / "sources")
    synth.main(["--out", str(tmp_path), "--num-train", "12", "--num-valid", "4", "--num-test", "4",
                "--num-test-other", "4", "--seed", "3", "--jobs", "1"])
    for split in ("train", "valid", "test", "test_other"):
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


@pytest.mark.parametrize("text, expected", [
    ("Don't leave the well-known 'dog' outside!", "don't leave the well known dog outside"),
    ("The Caf\u00e9 na\u00efve owner\u2019s rules; (usually) kept", "the cafe naive owner's rules usually kept"),
    ("  Rock  and roll -- loudly,\tall night ", "rock and roll loudly all night"),
    ("salt & pepper on the table", "salt and pepper on the table"),
    ("He paid $5 for it", None),                     # symbols and digits: dropped, never spelled out
    ("it happened in 1906 or so", None),
    ("see the notes, e.g. the first one", None),     # abbreviations and acronyms are read letter by letter
    ("Mr. Smith went to town", None),
    ("the NATO forces moved north", None),
    ("a word in \u03b1\u03b2 Greek letters", None),
    ("too short", None),
    (" ".join(["word"] * 17), None),
])
def test_synth_normalise(synth, text, expected):
    assert synth.normalise(text) == expected


def test_synth_normalised_text_is_what_the_scorer_keeps(synth):
    from mmseq.metrics import normalize_text
    for text in ("It's the dogs' home -- isn't it?", "An 'odd' old-fashioned round table"):
        clean = synth.normalise(text, 1, 40)
        assert clean is not None and normalize_text(clean) == clean


def test_synth_splits_are_disjoint_and_come_from_their_sources(synth):
    wordnet = [f"the {a} {n} stood by the {m}" for a in ADJECTIVES for n in NOUNS for m in NOUNS]
    devil = [f"a {a} {n} is a kind of trouble" for a in ADJECTIVES for n in NOUNS]
    gcide = [f"one {a} {n} of the old sort" for a in ADJECTIVES for n in NOUNS] + wordnet[:5] + devil[:5]
    sources = {"wordnet": wordnet, "devil": devil, "gcide": gcide}
    splits = synth.make_splits(sources, 100, 20, 20, 10, seed=1)
    assert [len(splits[name]) for name in ("train", "valid", "test", "test_other")] == [100, 20, 20, 10]
    held = [set(splits[name]) for name in ("train", "valid", "test", "test_other")]
    assert sum(map(len, held)) == len(set().union(*held))                 # no sentence in two splits
    assert set(splits["train"]) | held[1] | held[2] <= set(wordnet)
    assert held[3] <= set(devil)
    lm = set(splits["lm"])
    assert held[0] <= lm and not lm & (held[1] | held[2] | set(devil))
    assert set(gcide) - set(devil) - held[1] - held[2] <= lm
    assert splits == synth.make_splits(sources, 100, 20, 20, 10, seed=1)
    assert splits["train"] != synth.make_splits(sources, 100, 20, 20, 10, seed=2)["train"]
    with pytest.raises(RuntimeError, match="fewer than asked"):
        synth.make_splits(sources, 200, 20, 20, 10, seed=1)


def test_synth_held_out_splits_have_voices_train_never_heard(synth):
    splits = {"train": ["x"] * 400, "valid": ["x"] * 100, "test": ["x"] * 100}
    plans = synth.utterance_plans(splits, seed=0, noise_fraction=0.5)

    def unheard(voice):
        base, _, variant = voice.partition("+")
        return base in synth.UNHEARD_VOICES or variant in synth.UNHEARD_VARIANTS
    train = [plan["voice"] for plan in plans if plan["split"] == "train"]
    test = [plan["voice"] for plan in plans if plan["split"] == "test"]
    assert not any(map(unheard, train))
    assert 0.3 < sum(map(unheard, test)) / len(test) < 0.7
    assert len({voice.partition("+")[0] for voice in train}) >= 6


def test_synth_reads_the_package_layouts(synth, tmp_path):
    fake_sources(tmp_path)
    sources = synth.read_sources(tmp_path)
    assert "the red river was near the house" in sources["wordnet"]
    assert {"a red river beside the road", "a place of rivers"} <= set(sources["wordnet"])  # split at ";"
    assert "she ran to the verb" in sources["wordnet"] and not any("licence" in text for text in sources["wordnet"])
    assert "a red thing that nobody wants" in sources["devil"]
    assert "seen from far away it looks like a river" in sources["devil"]
    assert not any("verse" in text or "rhymes" in text or text.startswith("river") for text in sources["devil"])
    assert "a red river of the old kind" in sources["gcide"]
    assert not any("webster" in text or "wo rd" in text for text in sources["gcide"])


def test_synth_missing_package_is_a_one_line_error(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(SystemExit) as exit_info:
        synth.fetch_package("wordnet-base", tmp_path / "cache")
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "wordnet-base" in message and "\n" not in message


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
