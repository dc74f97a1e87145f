"""How close word timestamps come to the truth: long recordings made of single espeak-ng words with
known silences between them, so that every word's true start and end are known.

Each word is spoken alone (``espeak-ng -w out.wav WORD``, 22050 Hz, resampled to the model's rate),
trimmed to its sound (10 ms frames within 40 dB of the word's loudest), and laid down after a random
silence (50-150 ms within a phrase of 3-7 words, 0.6-1.5 s between phrases; windows end at pauses of
``--segment-pause``, so each phrase is decoded as one utterance, its times shifted by its start); the recording is transcribed with ``timestamps=True`` by CTC alignment and by attention DTW,
the hypothesis's words are matched to the reference words (difflib, same text), and the start and
end errors of the matched words are summarised. With ``--srt-minutes`` it also writes the SRT of a
recording that long and checks it against the truth: a cue is "in step" when its start and end are
within ``--tolerance`` seconds of the true start of its first word and the true end of its last.

    python tools/bench_timestamps.py CHECKPOINT --text data/synth_speech/text.txt --recordings 4 \
        --seconds 60 --srt-minutes 10 --out /tmp/ts

The silences between the words are digital zeros unless ``--noise-db`` adds white noise that many
dB below the speech; each method is measured with the boundaries moved to the sound (``refine``,
the default of ``timestamps=True``) and without.
"""

from __future__ import annotations

import argparse
import difflib
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmseq  # noqa: E402
from mmseq.inference.longform import LongformOptions  # noqa: E402
from mmseq.inference.writers import to_srt  # noqa: E402


def spoken_word(word: str, rate: int, cache: dict, voice: str) -> np.ndarray:
    """``word`` spoken by espeak-ng alone, at ``rate``, trimmed to its sound."""
    if word not in cache:
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["espeak-ng", "-v", voice, "-w", f.name, word], check=True, capture_output=True)
            audio, source_rate = soundfile.read(f.name, dtype="float32")
        audio = AF.resample(torch.from_numpy(audio), source_rate, rate).numpy()
        hop = rate // 100
        energy = np.array([np.sqrt(np.mean(audio[i:i + hop] ** 2) + 1e-12) for i in range(0, len(audio), hop)])
        loud = np.nonzero(20 * np.log10(energy / energy.max()) > -40)[0]
        cache[word] = audio[loud[0] * hop:(loud[-1] + 1) * hop]
    return cache[word]


def recording(phrases: list[list[str]], seconds: float, rate: int, rng: random.Random, cache: dict, voice: str):
    """A recording of about ``seconds``: random phrases (lines of ``--text``), their words spoken one
    by one and laid 50 to 150 ms apart, the phrases 0.6 to 1.5 s apart (the model was trained on
    sentences of a few seconds, not on words alone). Returns the waveform and
    ``[(word, start, end)]`` in seconds."""
    pieces, truth, now = [], [], 0.0
    while now < seconds:
        for k, word in enumerate(rng.choice(phrases)):
            gap = np.zeros(int((rng.uniform(0.6, 1.5) if k == 0 else rng.uniform(0.05, 0.15)) * rate), np.float32)
            sound = spoken_word(word, rate, cache, voice)
            pieces += [gap, sound]
            start = now + len(gap) / rate
            now = start + len(sound) / rate
            truth.append((word, start, now, len(pieces)))
    pieces.append(np.zeros(int(0.5 * rate), dtype=np.float32))
    return torch.from_numpy(np.concatenate(pieces)), truth


def noisy(wave: torch.Tensor, below_db: float, seed: int) -> torch.Tensor:
    """``wave`` with white noise ``below_db`` dB under the RMS of its speech (its non-zero samples)."""
    speech = wave[wave != 0]
    level = float(speech.pow(2).mean().sqrt()) * 10 ** (-below_db / 20)
    return wave + level * torch.randn(len(wave), generator=torch.Generator().manual_seed(seed))


def phrases_of(truth):
    """The truth's phrases: runs of words less than 0.5 s apart (phrases are 0.6 s apart or more)."""
    groups = []
    for item in truth:
        if groups and item[1] - groups[-1][-1][2] < 0.5:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def matched(truth, words, margin: float = 0.5):
    """``(true, hypothesis)`` word pairs of the same text, aligned in order (difflib) phrase by
    phrase: a phrase's words against the hypothesis words whose middles fall within ``margin``
    seconds of it (phrases are at least 0.6 s apart). With many misrecognised words, aligning the
    whole recording at once pairs a "the" with another "the" seconds away; this does not, but an
    error beyond ``margin`` at a phrase's edge goes uncounted (the unmatched words are reported)."""
    pairs = []
    for phrase in phrases_of(truth):
        low, high = phrase[0][1] - margin, phrase[-1][2] + margin
        near = [w for w in words if low <= (w.start + w.end) / 2 <= high]
        matcher = difflib.SequenceMatcher(a=[t[0] for t in phrase], b=[w.text for w in near], autojunk=False)
        pairs += [(phrase[block.a + k], near[block.b + k]) for block in matcher.get_matching_blocks()
                  for k in range(block.size)]
    return pairs


def oracle_words(model, wave, truth, method: str, rate: int, refine: bool = True, task: str | None = None):
    """Alignment alone, recognition left out: each phrase's own text (not the model's hypothesis)
    aligned to its window (the phrase with 0.2 s of silence each side), times shifted by the window's
    start, by the same :func:`mmseq.inference.timestamps.align` that ``timestamps=True`` uses."""
    from mmseq.decoding.options import Hypothesis
    from mmseq.inference.timestamps import Word, align

    task = model.route(task, "asr").task
    words = []
    for phrase in phrases_of(truth):
        start = max(0, int((phrase[0][1] - 0.2) * rate))
        end = min(len(wave), int((phrase[-1][2] + 0.2) * rate))
        hypothesis = Hypothesis(model.tokenizer.encode(" ".join(t[0] for t in phrase)), 0.0, 0.0, task.prompt())
        words += [Word(w.text, w.start + start / rate, w.end + start / rate, w.confidence)
                  for w in align(model, wave[start:end], hypothesis, method, task, refine=refine)]
    return words


def summary(errors: list[float]) -> str:
    if not errors:
        return "no words matched"
    errors = np.abs(np.array(errors)) * 1000
    return f"median {np.median(errors):5.0f} ms  p90 {np.percentile(errors, 90):5.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--text", required=True, help="sentences to speak, one a line (e.g. the recipe's text.txt)")
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording")
    parser.add_argument("--srt-minutes", type=float, default=0.0, help="also check the SRT of one recording this long")
    parser.add_argument("--tolerance", type=float, default=0.2, help="SRT check: seconds a cue may be off")
    parser.add_argument("--voice", default="en-us")
    parser.add_argument("--segment-pause", type=float, default=0.4, help="long audio: a window ends at pauses this long")
    parser.add_argument("--window", type=float, default=8.0, help="long audio: recordings longer are split")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--ctc-weight", type=float, default=0.3)
    parser.add_argument("--methods", default="ctc,attention")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default=None, help="the speech route of a model of several routes")
    parser.add_argument("--noise-db", type=float, default=None,
                        help="add white noise this many dB below the speech (default: none, digital silence)")
    parser.add_argument("--out", type=Path, default=Path("bench_timestamps"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    model = mmseq.load(args.checkpoint, "cpu")
    rate = model.route(args.task, "asr").encoder.sample_rate
    vocabulary = [line.split() for line in open(args.text, encoding="utf-8") if line.split()]
    cache: dict = {}
    recordings = [recording(vocabulary, args.seconds, rate, rng, cache, args.voice) for _ in range(args.recordings)]
    if args.noise_db is not None:
        recordings = [(noisy(w, args.noise_db, args.seed + i), t) for i, (w, t) in enumerate(recordings)]
    args.out.mkdir(parents=True, exist_ok=True)
    windows = LongformOptions(window=args.window, segment_pause=args.segment_pause)  # one phrase a window
    print(f"{len(recordings)} recordings of {args.seconds:.0f} s, {sum(len(t) for _, t in recordings)} words "
          f"(other jobs were running: wall times are inflated)")
    for method in args.methods.split(","):
        for refine in (False, True):
            starts, ends, found, total = [], [], 0, 0
            clock, cpu = time.perf_counter(), time.process_time()
            timed = model.transcribe([w for w, _ in recordings], timestamps=True, method=method, beam_size=args.beam_size,
                                     ctc_weight=args.ctc_weight, longform=windows, refine=refine, task=args.task)
            wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
            for (_, truth), result in zip(recordings, timed):
                pairs = matched(truth, result.words)
                starts += [w.start - t[1] for t, w in pairs]
                ends += [w.end - t[2] for t, w in pairs]
                found, total = found + len(pairs), total + len(truth)
            import jiwer
            wer = 100 * jiwer.wer([" ".join(t[0] for t in truth) for _, truth in recordings], [r.text for r in timed])
            bias = np.median(starts) * 1000 if starts else float("nan")
            name = f"{method}{'+refine' if refine else ''}"
            print(f"{name:16s} hypothesis: WER {wer:.1f} %, matched {found}/{total} words;  start {summary(starts)};  "
                  f"end {summary(ends)};  median start bias {bias:+.0f} ms;  {wall:.1f} s wall, {cpu:.1f} s CPU")
            starts, ends, found = [], [], 0
            for wave, truth in recordings:
                pairs = matched(truth, oracle_words(model, wave, truth, method, rate, refine, args.task))
                starts += [w.start - t[1] for t, w in pairs]
                ends += [w.end - t[2] for t, w in pairs]
                found += len(pairs)
            print(f"{name:16s} reference text aligned: {found}/{total} words;  start {summary(starts)};  "
                  f"end {summary(ends)};  median start bias {np.median(starts) * 1000:+.0f} ms, "
                  f"end bias {np.median(ends) * 1000:+.0f} ms")
    if args.srt_minutes:
        wave, truth = recording(vocabulary, args.srt_minutes * 60, rate, rng, cache, args.voice)
        if args.noise_db is not None:
            wave = noisy(wave, args.noise_db, args.seed + 99)
        soundfile.write(args.out / "long.wav", wave.numpy(), rate)
        [result] = model.transcribe([wave], timestamps=True, beam_size=args.beam_size, ctc_weight=args.ctc_weight,
                                    longform=windows, task=args.task)
        (args.out / "long.srt").write_text(to_srt(result.segments), encoding="utf-8")
        (args.out / "long.truth.tsv").write_text("".join(f"{w}\t{s:.3f}\t{e:.3f}\n" for w, s, e, _ in truth))
        truth_of = {id(w): t for t, w in matched(truth, result.words)}
        in_step = checked = 0
        for segment in result.segments:
            first, last = truth_of.get(id(segment.words[0])), truth_of.get(id(segment.words[-1]))
            if first is None or last is None:
                continue
            checked += 1
            in_step += abs(segment.start - first[1]) <= args.tolerance and abs(segment.end - last[2]) <= args.tolerance
        drift = [w.start - t[1] for t, w in matched(truth, result.words)]
        third = max(1, len(drift) // 3)
        print(f"SRT of {len(wave) / rate / 60:.1f} min: {len(result.segments)} cues, {checked} with both ends "
              f"matched, {in_step} of them in step (within {args.tolerance * 1000:.0f} ms); median start error "
              f"first third {np.median(drift[:third]) * 1000:+.0f} ms, last third "
              f"{np.median(drift[-third:]) * 1000:+.0f} ms -> {args.out / 'long.srt'}")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
