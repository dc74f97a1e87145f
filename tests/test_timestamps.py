"""Word timestamps: CTC forced alignment and attention DTW on inputs whose answer is known, the
SRT / VTT / JSON writers, and absolute times across the windows of long audio."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_model
from mmseq.inference.longform import LongformOptions
from mmseq.inference.timestamps import Segment, TimedTranscript, Word, ctc_words, dtw, segments_of
from mmseq.inference.writers import render, to_srt, to_vtt
from mmseq.tokenizer import CharTokenizer


@pytest.fixture
def abc_tokenizer():
    return CharTokenizer(["a", "b", "c", " "], prompt_tokens=["<|asr|>"])


def peaked(frames: int, vocab: int, spikes: dict[int, int], blank: int = 0) -> torch.Tensor:
    """CTC log-posteriors ``(frames, vocab)``: blank everywhere except ``{frame: token}``."""
    probs = torch.full((frames, vocab), 0.01)
    probs[:, blank] = 1.0
    for frame, token in spikes.items():
        probs[frame] = 0.01
        probs[frame, token] = 1.0
    return (probs / probs.sum(1, keepdim=True)).log()


def test_ctc_words_are_placed_at_their_frames(abc_tokenizer):
    tokens = abc_tokenizer.encode("ab ca")  # two words: "ab" at frames 3-5, "ca" at 12-13
    a, b, space, c = (abc_tokenizer.encode(ch)[0] for ch in "ab c")
    spikes = {3: a, 4: b, 5: b, 8: space, 12: c, 13: a}
    log_probs = peaked(20, abc_tokenizer.vocab_size, spikes, abc_tokenizer.pad_id)
    model = SimpleNamespace(tokenizer=abc_tokenizer)
    words = ctc_words(model, log_probs, tokens, frame_rate=25.0)
    assert [w.text for w in words] == ["ab", "ca"]
    assert [t for w in words for t in (w.start, w.end)] == pytest.approx([3 / 25, 6 / 25, 12 / 25, 14 / 25])
    assert all(0.9 < w.confidence <= 1.0 for w in words)
    # A hypothesis the frames cannot hold (more labels than frames) gets no words, not an error.
    assert ctc_words(model, log_probs[:3], tokens, 25.0) == []


def test_dtw_follows_the_cheap_diagonal_band():
    # Three tokens over ten frames: token 0 owns frames 0-2, token 1 frames 3-6, token 2 frames 7-9.
    owner = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    cost = np.ones((3, 10))
    cost[owner, np.arange(10)] = 0.0
    assert dtw(cost).tolist() == owner.tolist()


def test_segments_split_at_pauses_and_length():
    words = [Word("one", 0.0, 0.4, 1.0), Word("two", 0.5, 0.9, 1.0), Word("three", 2.0, 2.5, 0.9),
             Word("four", 2.6, 9.8, 0.9)]
    segments = segments_of(words, max_pause=0.6, max_seconds=7.0)
    assert [s.text for s in segments] == ["one two", "three", "four"]
    assert [(s.start, s.end) for s in segments] == [(0.0, 0.9), (2.0, 2.5), (2.6, 9.8)]


def test_srt_vtt_and_json_writers():
    segments = [Segment("hello there", 1.5, 3.25, [Word("hello", 1.5, 2.0, 0.9), Word("there", 2.1, 3.25, 0.8)]),
                Segment("bye", 3661.0, 3662.004, [Word("bye", 3661.0, 3662.004, 1.0)])]
    assert to_srt(segments) == ("1\n00:00:01,500 --> 00:00:03,250\nhello there\n\n"
                                "2\n01:01:01,000 --> 01:01:02,004\nbye\n\n")
    assert to_vtt(segments) == ("WEBVTT\n\n00:00:01.500 --> 00:00:03.250\nhello there\n\n"
                                "01:01:01.000 --> 01:01:02.004\nbye\n\n")
    record = json.loads(render(TimedTranscript("hello there bye", segments), "json", "a.wav"))
    assert record["audio"] == "a.wav" and record["text"] == "hello there bye"
    assert record["segments"][0]["words"][1] == {"text": "there", "start": 2.1, "end": 3.25, "confidence": 0.8}


@pytest.mark.parametrize("method", ["ctc", "attention"])
def test_long_audio_keeps_absolute_times(char_tokenizer, method):
    """A recording split into windows: each window's words are shifted by the window's start, so
    the words of a tone 20 s into the recording are placed around it."""
    model = make_model(char_tokenizer, seed=1)
    rate = model.encoder.sample_rate
    t = torch.arange(int(0.6 * rate)) / rate
    burst = 0.5 * torch.sin(2 * math.pi * 440 * t)
    long = torch.cat([torch.zeros(20 * rate), burst, torch.zeros(rate), burst, torch.zeros(rate)])
    options = dict(beam_size=1, max_length=8, ctc_weight=0.0, length_penalty=0.0)
    windows = LongformOptions(window=3.0, min_pause=0.3, segment_pause=0.5)  # one window per tone
    [timed] = model.transcribe([long], timestamps=True, method=method, longform=windows, **options)
    assert timed.words and timed.text == " ".join(w.text for w in timed.words)
    # Both windows hold a tone (plus 0.1 s of silence each side): every word lies within one.
    tones = [(20.0 - 0.1, 20.6 + 0.1), (21.6 - 0.1, 22.2 + 0.1)]
    for word in timed.words:
        assert any(start - 0.05 <= word.start <= word.end <= end + 0.05 for start, end in tones), word
    assert {any(s - 0.05 <= w.start <= e for w in timed.words) for s, e in tones} == {True}


def test_transcribe_timestamps_command_and_api(trained, tmp_path, capsys):
    import re

    import mmseq
    from mmseq.cli import main

    _, out, manifest = trained
    files = sorted((manifest.parent / "wav").glob("*.wav"))[:2]
    model = mmseq.load(out / "best")
    timed = model.transcribe([str(f) for f in files], timestamps=True, beam_size=1)
    texts = model.transcribe([str(f) for f in files], beam_size=1)
    assert [t.text.split() for t in timed] == [t.split() for t in texts]  # the same words, now timed
    assert main(["transcribe", str(out / "best"), *map(str, files), "--timestamps", "json", "--beam-size", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["audio"] for r in records] == list(map(str, files))
    assert [r["text"] for r in records] == [t.text for t in timed]
    assert main(["transcribe", str(out / "best"), str(files[0]), "--timestamps", "srt", "--beam-size", "1"]) == 0
    srt = capsys.readouterr().out
    cues = re.findall(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)\n$", srt, re.M)
    assert len(cues) == len(timed[0].segments) and [c[3] for c in cues] == [s.text for s in timed[0].segments]
    assert main(["transcribe", str(out / "best"), str(files[0]), "--timestamps", "vtt", "--beam-size", "1"]) == 0
    assert capsys.readouterr().out.startswith("WEBVTT\n\n")


def test_timestamps_srt_over_a_folder_with_output_and_resume(char_tokenizer, tmp_path, capsys):
    """``--timestamps srt --output FILE`` over a folder: each line of FILE carries its input's text
    and segments (those of ``model.transcribe(timestamps=True)``), each input gets its .srt beside
    it, and ``--resume`` after a kill does only the inputs missing from FILE."""
    from pathlib import Path

    import soundfile

    import mmseq
    from mmseq.cli import main

    model = make_model(char_tokenizer, seed=1)
    model.decoding.max_length = 8  # a random model never ends: keep its texts short
    checkpoint = mmseq.save(model, tmp_path / "ckpt")
    rate = model.encoder.sample_rate
    folder = tmp_path / "audio"
    folder.mkdir()
    for k in range(3):
        t = torch.arange(int((0.4 + 0.2 * k) * rate)) / rate
        burst = 0.5 * torch.sin(2 * math.pi * (300 + 100 * k) * t)
        soundfile.write(folder / f"a{k}.wav", torch.cat([torch.zeros(rate // 2), burst, torch.zeros(rate // 2)]).numpy(),
                        rate)
    files = sorted(str(p) for p in folder.glob("*.wav"))
    options = dict(beam_size=1, ctc_weight=0.0, length_penalty=0.0)
    timed = model.transcribe(files, timestamps=True, **options)
    assert all(t.words for t in timed)
    results = tmp_path / "t.jsonl"
    command = ["transcribe", str(checkpoint), str(folder), "--timestamps", "srt", "--output", str(results),
               "--beam-size", "1", "--ctc-weight", "0", "--length-penalty", "0"]
    assert main(command) == 0
    assert capsys.readouterr().out == ""  # results and subtitles went to files

    def check():
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        assert [row["id"] for row in rows] == files  # each input once, in input order
        for row, transcript in zip(rows, timed):
            assert row["text"] == transcript.text and row["segments"] == transcript.to_dict()["segments"]
            srt = Path(row["id"]).with_suffix(".srt").read_text(encoding="utf-8")
            assert srt == to_srt(transcript.segments) and srt.startswith("1\n00:00:0")

    check()
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a kill while writing the second line
    Path(files[1]).with_suffix(".srt").unlink()
    assert main(command + ["--resume"]) == 0
    assert f"{len(files) - 1} done, 0 failed, 1 skipped" in capsys.readouterr().err
    check()


def test_energy_refinement_moves_boundaries_to_the_sound_and_not_past_a_neighbour():
    from mmseq.inference.timestamps import Word, refine_by_energy

    rate = 16000
    rng = np.random.default_rng(0)
    wave = 0.001 * rng.standard_normal(rate * 3).astype(np.float32)  # a noise floor 50 dB down
    truth = [(0.50, 0.90), (1.20, 1.45), (1.45, 1.80)]  # the last two words run together
    for start, end in truth:
        t = np.arange(int(start * rate), int(end * rate))
        wave[t] += 0.3 * np.sin(2 * np.pi * 220 * t / rate).astype(np.float32)
    # As a CTC alignment gives them: starts a frame late, ends early by the word's last sounds.
    model_times = [Word("a", 0.54, 0.62, 1.0), Word("b", 1.24, 1.30, 1.0), Word("c", 1.48, 1.56, 1.0)]
    refined = refine_by_energy(model_times, torch.from_numpy(wave), rate)
    assert [w.text for w in refined] == ["a", "b", "c"]
    for word, (start, end) in zip(refined[:2], truth):
        assert abs(word.start - start) <= 0.025
    assert abs(refined[0].end - 0.90) <= 0.025 and abs(refined[2].end - 1.80) <= 0.025
    # Between "b" and "c" there is no pause: their boundary stays where the model put it.
    assert refined[1].end <= model_times[2].start + 1e-9 and refined[2].start == model_times[2].start
    # Without contrast (all noise) nothing moves.
    flat = torch.from_numpy(0.01 * rng.standard_normal(rate).astype(np.float32))
    assert refine_by_energy(model_times[:1], flat, rate) == model_times[:1]
