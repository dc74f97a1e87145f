"""Long audio: windows from pauses (or forced cuts with overlap) and texts joined without doubled or
lost words, on synthetic recordings of known sentences decoded by an exact fake decoder."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import make_model, sentences
from mmseq.inference.longform import (LongformOptions, Window, energy_pauses, join_texts, merge_overlap,
                            split_audio)

RATE = 16000


def recording(texts: list[str], seed: int = 0, word_gap=(0.03, 0.08), pause=(0.35, 0.9)):
    """Words as enveloped noise bursts, short gaps between words, longer pauses between sentences,
    over a little background noise. Returns the waveform and ``[(word, start, end)]`` in samples."""
    rng = np.random.default_rng(seed)
    parts, words, position = [np.zeros(int(0.3 * RATE), np.float32)], [], int(0.3 * RATE)
    for text in texts:
        sentence = text.split()
        for k, word in enumerate(sentence):
            length = int((0.12 + 0.04 * len(word)) * RATE)
            burst = rng.standard_normal(length) * np.hanning(length) ** 0.3 * rng.uniform(0.1, 0.4)
            parts.append(burst.astype(np.float32))
            words.append((word, position, position + length))
            gap = int(rng.uniform(*(pause if k == len(sentence) - 1 else word_gap)) * RATE)
            parts.append(np.zeros(gap, np.float32))
            position += length + gap
    waveform = np.concatenate(parts)
    waveform += 0.003 * rng.standard_normal(len(waveform)).astype(np.float32)
    return torch.from_numpy(waveform), words


def fake_decoder(words):
    """The words a perfect model hears in ``[start, end)``: whole words, and a garbled token
    (different each time) for a word the window cuts."""
    counter = iter(range(10 ** 6))

    def decode(start: int, end: int) -> str:
        heard = []
        for word, word_start, word_end in words:
            if word_start >= start and word_end <= end:
                heard.append(word)
            elif word_start < end and word_end > start:
                heard.append(f"#{next(counter)}")
        return " ".join(heard)

    return decode


def transcribe(waveform, words, options):
    windows = split_audio(waveform, RATE, options)
    decode = fake_decoder(words)
    return join_texts([decode(w.start, w.end) for w in windows], windows), windows


@pytest.mark.parametrize("window", [4.0, 20.0])
def test_pauses_split_a_long_recording_and_join_exactly(window):
    texts = sentences(120, seed=3)  # about three and a half minutes
    waveform, words = recording(texts)
    assert len(waveform) / RATE > 180
    text, windows = transcribe(waveform, words, LongformOptions(window=window))
    assert text.split() == [w for w, _, _ in words]
    assert all(w.end - w.start <= window * RATE for w in windows)
    assert {w.joins_previous for w in windows[1:]} == {"pause"}
    assert all(a.end < b.start for a, b in zip(windows, windows[1:]))  # the silence between is left out
    assert windows[0].start > 0.15 * RATE and windows[-1].end < len(waveform) - 0.15 * RATE  # and at the ends
    for piece in windows:  # a margin of silence on each side of the sound
        inside = [(s, e) for _, s, e in words if piece.start <= s and e <= piece.end]
        assert 0 < inside[0][0] - piece.start <= 0.15 * RATE and 0 < piece.end - inside[-1][1] <= 0.15 * RATE
    assert len(windows) >= len(waveform) / RATE / window


def test_segment_pause_gives_each_sentence_its_window():
    texts = sentences(40, seed=9)
    waveform, words = recording(texts, seed=4)  # sentence pauses of 0.35 s or more, word gaps under 0.1 s
    text, windows = transcribe(waveform, words, LongformOptions(window=20.0, segment_pause=0.3))
    assert text.split() == [w for w, _, _ in words]
    assert len(windows) == len(texts)
    decode = fake_decoder(words)
    assert [decode(w.start, w.end) for w in windows] == texts


def test_continuous_speech_is_cut_with_overlap_and_merged():
    texts = sentences(30, seed=4)
    # no pause long enough for a clean cut anywhere: sentences follow each other closely
    waveform, words = recording(texts, seed=1, pause=(0.03, 0.08))
    text, windows = transcribe(waveform, words, LongformOptions(window=10.0, overlap=2.0))
    assert {w.joins_previous for w in windows[1:]} == {"overlap"}
    assert text.split() == [w for w, _, _ in words]


def test_mixed_pauses_and_long_sentences():
    rng = random.Random(5)
    texts = [" ".join(rng.choice(["red", "blue", "dog", "cat", "sings", "the"]) for _ in range(rng.randint(2, 30)))
             for _ in range(25)]
    waveform, words = recording(texts, seed=2)
    text, windows = transcribe(waveform, words, LongformOptions(window=6.0, overlap=2.0))
    assert {"pause", "overlap"} <= {w.joins_previous for w in windows}
    assert text.split() == [w for w, _, _ in words]


def test_energy_pauses_find_the_sentence_breaks():
    waveform, words = recording(sentences(10, seed=6))
    pauses, _ = energy_pauses(waveform, RATE, LongformOptions())
    breaks = [(words[i][2], words[i + 1][1]) for i in range(len(words) - 1)
              if words[i + 1][1] - words[i][2] > 0.3 * RATE]
    for end, start in breaks:  # every sentence break holds a detected pause
        assert any(end <= p0 * 160 + 800 and p1 * 160 <= start + 800 and p1 > p0 for p0, p1 in pauses)
    for p0, p1 in pauses:  # and no pause cuts through a word
        assert not any(s + 800 < p0 * 160 < e - 800 or s + 800 < p1 * 160 < e - 800 for _, s, e in words)


def test_short_audio_is_one_window():
    waveform = torch.randn(RATE * 5)
    assert split_audio(waveform, RATE, LongformOptions(window=30.0)) == [Window(0, len(waveform))]


def test_merge_overlap():
    left = "a b c d e f #1".split()
    right = "#2 d e f g h".split()
    assert merge_overlap(left, right) == "a b c d e f g h".split()
    # a single coincidental word does not outweigh a real overlap of several
    assert merge_overlap("x the c d e".split(), "c d e the y".split()) == "x the c d e the y".split()
    assert merge_overlap(["a"], ["b"]) == ["a", "b"]
    assert merge_overlap([], ["b"]) == ["b"]


def test_model_decodes_long_and_short_recordings_in_order(char_tokenizer):
    model = make_model(char_tokenizer)
    long_wave, _ = recording(sentences(8, seed=7))
    short_wave = long_wave[: RATE // 2]
    calls = []
    original = model.decode_texts

    def counting(batch, **options):
        calls.append(batch["inputs"].shape[0])
        return original(batch, **options)

    model.decode_texts = counting
    windows = split_audio(long_wave, RATE, LongformOptions(window=3.0))
    texts = model.transcribe([long_wave, short_wave, long_wave], window=3.0, batch_size=64, beam_size=1, max_length=5)
    assert len(texts) == 3 and texts[0] == texts[2]
    assert sum(calls) == 2 * len(windows) + 1 and len(calls) <= 2  # all windows in one batch per prompt
    joined = model.transcribe([long_wave], longform=LongformOptions(window=3.0), batch_size=64, beam_size=1,
                              max_length=5)
    assert joined == [texts[0]]


class FakeCTCModel:
    """A CTC head that spikes each word's characters across the word's frames and a space just
    after it (25 frames a second), blank elsewhere: what a good CTC model emits."""

    hop = 640

    def __init__(self, words, tokenizer, samples: int):
        from types import SimpleNamespace

        self.encoder, self.tokenizer = SimpleNamespace(sample_rate=RATE), tokenizer
        self.device, self.ctc_head = torch.device("cpu"), object()
        labels = torch.full((samples // self.hop + 1,), tokenizer.pad_id)
        for word, start, end in words:
            first, last = start // self.hop, end // self.hop
            for k, char in enumerate(word):
                labels[first + k * (last - first) // len(word)] = tokenizer.encode(char)[0]
            labels[last] = tokenizer.encode(" ")[0]
        self.log_probs = (10.0 * torch.nn.functional.one_hot(labels, tokenizer.vocab_size)).log_softmax(-1)

    def route(self, name=None, kind=None):
        from types import SimpleNamespace

        model = self

        class Encoder:
            sample_rate = RATE

            def __call__(self, part, lengths):
                return model.encode(part, lengths)

        return SimpleNamespace(name="asr", encoder=Encoder(), ctc_head=self.ctc_head)

    def encode(self, part, lengths):
        first = part.storage_offset() // self.hop  # the test's pieces are views of one recording
        frames = torch.arange(first, first + -(-part.shape[1] // self.hop)).clamp(max=len(self.log_probs) - 1)
        return frames[None, :, None].float(), torch.ones(1, len(frames), dtype=torch.bool)

    def ctc_log_probs(self, memory, head=None):
        return self.log_probs[memory[..., 0].long()]


def test_ctc_split_points_in_loud_noise(char_tokenizer):
    texts = sentences(40, seed=8)
    waveform, words = recording(texts, seed=3)
    waveform = waveform + 0.3 * torch.randn(len(waveform), generator=torch.Generator().manual_seed(0))
    model = FakeCTCModel(words, char_tokenizer, len(waveform))
    options = LongformOptions(window=6.0, split="ctc")
    windows = split_audio(waveform, RATE, options, model)
    decode = fake_decoder(words)
    text = join_texts([decode(w.start, w.end) for w in windows], windows)
    assert text.split() == [w for w, _, _ in words]
    assert {w.joins_previous for w in windows[1:]} == {"pause"} and len(windows) > 10


def test_ctc_split_needs_a_ctc_head(char_tokenizer):
    from mmseq.errors import ConfigError

    model = make_model(char_tokenizer, ctc_weight=0.0)
    with pytest.raises(ConfigError, match="CTC head"):
        split_audio(torch.randn(RATE * 40), RATE, LongformOptions(split="ctc"), model)


def test_a_window_too_short_to_cut_is_a_one_line_error(char_tokenizer, tmp_path, capsys):
    """``--window 1e-9`` ended in an IndexError deep in the planning of windows; now the setting
    is refused where it enters: the dataclass, the Python API and the command line."""
    import soundfile

    import mmseq
    from mmseq.cli import main
    from mmseq.errors import ConfigError

    with pytest.raises(ConfigError, match="window=1e-09"):
        LongformOptions(window=1e-9)
    model = make_model(char_tokenizer)
    waveform, _ = recording(sentences(2, seed=1))
    with pytest.raises(ConfigError, match="window"):
        model.transcribe([waveform], window=1e-9)
    folder = mmseq.save(model, tmp_path / "ckpt")
    soundfile.write(tmp_path / "a.wav", waveform.numpy(), RATE)
    assert main(["transcribe", str(folder), str(tmp_path / "a.wav"), "--window", "1e-9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmseq: error: --window 1e-09: must be")
