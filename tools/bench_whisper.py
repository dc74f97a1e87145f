"""Whisper baselines on a real-speech manifest: WER (two normalisations) and RTFx, clip by clip.

Every system is one function ``run_<system>(clips, settings) -> Run`` that loads its model,
decodes the clips already in memory (16-kHz float32 waveforms) and returns the hypotheses in clip
order with the seconds the decoding took. Loading the model and reading the audio are not timed;
one warm-up decode of the first clip runs before the clock starts (``--warmup 0`` to skip).
RTFx = audio seconds / decoding seconds. ``os.getloadavg()`` is recorded when the clock starts
and stops, and the process's CPU seconds (all its threads) while the clock ran: another job on
the machine slows a run's wall clock far more than its CPU seconds, and these timings are
indicative only.

Systems (``--systems``, comma-separated):

- ``faster-whisper-f32`` / ``faster-whisper-int8``: ``WhisperModel(folder, device="cpu",
  compute_type=..., cpu_threads=N)``; each clip decoded alone by ``transcribe(audio,
  language="en", task="transcribe", beam_size=B, without_timestamps=True,
  condition_on_previous_text=False, vad_filter=False, temperature=0.0)`` (one temperature: no
  fallback; faster-whisper's other defaults kept, e.g. ``no_speech_threshold=0.6``).
- ``faster-whisper-batched-f32`` / ``-int8``: ``BatchedInferencePipeline``. Its ``transcribe``
  batches the chunks of *one* audio, so a short clip alone is a batch of one. To batch clips,
  they are joined into one array (before the clock) and passed with ``clip_timestamps`` giving
  each clip's start and end: every clip is then one chunk, ``batch_size`` chunks are decoded
  together, and VAD does not run (it is skipped whenever clip_timestamps is given). Differences
  from the one-clip path: the pipeline computes each chunk's log-mel alone and pads the *features*
  with zeros to 3000 frames (the one-clip path pads the audio with 30 s of silence), drops the
  last feature frame, and sets ``max_initial_timestamp=0``.
- ``mmseq``: ``mmseq.load(--mmseq-model).transcribe(list_of_waveforms, beam_size=B,
  batch_size=N)`` (not yet run: needs an mmseq Whisper checkpoint from ``mmseq import whisper``).
- ``transformers``: ``WhisperForConditionalGeneration`` from a transformers-form folder
  (``--hf-model``); greedy or beam ``B``, ``batch_size`` clips at a time. Not run yet: the
  CTranslate2 folder is the only copy of the weights here and ctranslate2's Python API does not
  expose them; the transformers export is being written.

Output: one line per system on stdout (system, settings, WER basic and whisper, RTFx, clips,
load averages); per clip ``<out>/<set>.<system>.<settings>.jsonl`` (``id, ref, hyp, duration``
and each normalisation's ``ref``, ``hyp`` and word errors) and one summary line appended to
``<out>/summary.jsonl``::

    python tools/bench_whisper.py --manifest data/real/cv100/manifest.jsonl \\
        --systems faster-whisper-f32,faster-whisper-int8 --beam 1 --threads 2 --out data/real/results/

Adding a system: write ``run_x(clips, settings) -> Run`` and add it to ``SYSTEMS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from whisper_wer import KINDS, counts  # noqa: E402

RATE = 16_000
DEFAULT_CT2 = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmseq" / "whisper-base-ct2"


@dataclasses.dataclass
class Clip:
    id: str
    text: str
    audio: np.ndarray  # float32, 16 kHz, mono

    @property
    def seconds(self) -> float:
        return self.audio.size / RATE


@dataclasses.dataclass
class Settings:
    beam: int = 1
    threads: int = 2
    batch_size: int = 16  # batched systems only
    warmup: int = 1  # clips decoded before the clock starts
    ct2_model: Path = DEFAULT_CT2
    mmseq_model: Path | None = None
    hf_model: Path | None = None


@dataclasses.dataclass
class Run:
    hyps: list[str]
    decode_s: float
    audio_s: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    settings: dict  # what the system ran with, as reported
    cpu_s: float = float("nan")  # CPU seconds of this process (all threads) while the clock ran

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.decode_s


def load_clips(manifest: Path, limit: int | None = None) -> list[Clip]:
    """The manifest's clips, audio read into memory (paths relative to the manifest's folder)."""
    from mmseq.data.manifest import read_manifest

    examples, _ = read_manifest(manifest, required=("audio", "text"))
    clips = []
    for example in examples[:limit]:
        audio, rate = sf.read(example["audio"], dtype="float32", always_2d=True)
        if rate != RATE:
            raise SystemExit(f"{example['audio']}: {rate} Hz; the real-speech sets are {RATE} Hz")
        clips.append(Clip(example["id"], example["text"], np.ascontiguousarray(audio.mean(axis=1))))
    return clips


def timed(decode, clips: list[Clip], settings: Settings, reported: dict, prepare=lambda batch: batch) -> Run:
    """Warm up on the first clip(s), then time ``decode(prepare(clips)) -> hyps``; ``prepare``
    (whatever a system's API needs done to the audio beforehand) is not timed."""
    if settings.warmup:
        decode(prepare(clips[: settings.warmup]))
    ready = prepare(clips)
    load_start = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    hyps = decode(ready)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    load_end = os.getloadavg()
    if len(hyps) != len(clips):
        raise RuntimeError(f"{len(hyps)} hypotheses for {len(clips)} clips")
    return Run([h.strip() for h in hyps], seconds, sum(c.seconds for c in clips), load_start, load_end, reported,
               cpu_seconds)


# -- systems ---------------------------------------------------------------------------------

def _faster_whisper_model(settings: Settings, compute_type: str):
    from faster_whisper import WhisperModel

    return WhisperModel(str(settings.ct2_model), device="cpu", compute_type=compute_type,
                        cpu_threads=settings.threads, num_workers=1)


FW_OPTIONS = dict(language="en", task="transcribe", without_timestamps=True,
                  condition_on_previous_text=False, vad_filter=False, temperature=0.0)


def run_faster_whisper(clips: list[Clip], settings: Settings, compute_type: str = "float32") -> Run:
    """faster-whisper, one clip at a time."""
    model = _faster_whisper_model(settings, compute_type)

    def decode(batch):
        hyps = []
        for clip in batch:
            segments, _ = model.transcribe(clip.audio, beam_size=settings.beam, **FW_OPTIONS)
            hyps.append("".join(segment.text for segment in segments))  # the generator decodes
        return hyps

    return timed(decode, clips, settings, {"compute_type": compute_type, "beam": settings.beam,
                                           "threads": settings.threads, **FW_OPTIONS})


def run_faster_whisper_batched(clips: list[Clip], settings: Settings, compute_type: str = "float32") -> Run:
    """faster-whisper's BatchedInferencePipeline, the clips joined and cut by clip_timestamps."""
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(_faster_whisper_model(settings, compute_type))
    options = {key: value for key, value in FW_OPTIONS.items() if key != "condition_on_previous_text"}

    def join(batch):  # not timed: only the API needs the clips as one array
        starts = np.cumsum([0] + [clip.audio.size for clip in batch])
        # Half a sample past each boundary: the pipeline takes int(seconds * 16000).
        stamps = [{"start": (starts[i] + 0.5) / RATE, "end": (starts[i + 1] + 0.5) / RATE}
                  for i in range(len(batch))]
        return np.concatenate([clip.audio for clip in batch]), stamps

    def decode(joined):
        audio, stamps = joined
        segments, _ = pipeline.transcribe(audio, clip_timestamps=stamps, batch_size=settings.batch_size,
                                          beam_size=settings.beam, **options)
        return [segment.text for segment in segments]  # one segment per chunk without timestamps

    return timed(decode, clips, settings, {"compute_type": compute_type, "beam": settings.beam,
                                           "threads": settings.threads, "batch_size": settings.batch_size,
                                           "clip_timestamps": "one chunk per clip, no VAD", **options},
                 prepare=join)


def run_mmseq(clips: list[Clip], settings: Settings, compute_type: str = "float32") -> Run:
    """mmseq: a checkpoint folder (e.g. from ``mmseq import whisper``), batched transcription."""
    import torch

    import mmseq

    if settings.mmseq_model is None:
        raise SystemExit("the mmseq system needs --mmseq-model FOLDER")
    torch.set_num_threads(settings.threads)
    model = mmseq.load(settings.mmseq_model, device="cpu", compute_type=compute_type)

    def decode(batch):
        return model.transcribe([torch.from_numpy(clip.audio) for clip in batch],
                                beam_size=settings.beam, batch_size=settings.batch_size)

    return timed(decode, clips, settings, {"model": str(settings.mmseq_model), "beam": settings.beam,
                                           "threads": settings.threads, "batch_size": settings.batch_size,
                                           "compute_type": compute_type,
                                           "tail": model.route("asr").encoder.tail_samples / RATE})


def run_transformers(clips: list[Clip], settings: Settings) -> Run:
    """transformers' WhisperForConditionalGeneration (float32, CPU), ``batch_size`` clips a batch."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if settings.hf_model is None:
        raise SystemExit("the transformers system needs --hf-model FOLDER (a transformers-form Whisper)")
    torch.set_num_threads(settings.threads)
    processor = WhisperProcessor.from_pretrained(settings.hf_model)
    model = WhisperForConditionalGeneration.from_pretrained(settings.hf_model, torch_dtype=torch.float32).eval()

    def decode(batch):
        hyps = []
        for first in range(0, len(batch), settings.batch_size):
            part = batch[first:first + settings.batch_size]
            features = processor([clip.audio for clip in part], sampling_rate=RATE, return_tensors="pt").input_features
            with torch.inference_mode():
                tokens = model.generate(features, language="en", task="transcribe", num_beams=settings.beam,
                                        do_sample=False, return_timestamps=False)
            hyps += processor.batch_decode(tokens, skip_special_tokens=True)
        return hyps

    return timed(decode, clips, settings, {"model": str(settings.hf_model), "beam": settings.beam,
                                           "threads": settings.threads, "batch_size": settings.batch_size})


SYSTEMS = {
    "faster-whisper-f32": lambda clips, s: run_faster_whisper(clips, s, "float32"),
    "faster-whisper-int8": lambda clips, s: run_faster_whisper(clips, s, "int8"),
    "faster-whisper-batched-f32": lambda clips, s: run_faster_whisper_batched(clips, s, "float32"),
    "faster-whisper-batched-int8": lambda clips, s: run_faster_whisper_batched(clips, s, "int8"),
    "mmseq": run_mmseq,
    "mmseq-int8": lambda clips, s: run_mmseq(clips, s, "int8"),
    "transformers": run_transformers,
}
BATCHED = {"faster-whisper-batched-f32", "faster-whisper-batched-int8", "mmseq", "mmseq-int8", "transformers"}


# -- scoring and records ---------------------------------------------------------------------

def score(clips: list[Clip], run: Run) -> tuple[dict, list[dict]]:
    totals = {kind: {"edits": 0, "words": 0} for kind in KINDS}
    rows = []
    for clip, hyp in zip(clips, run.hyps):
        row = {"id": clip.id, "ref": clip.text, "hyp": hyp, "duration": round(clip.seconds, 4)}
        for kind in KINDS:
            c = counts(clip.text, hyp, kind)
            errors = c["sub"] + c["del"] + c["ins"]
            totals[kind]["edits"] += errors
            totals[kind]["words"] += c["words"]
            row[kind] = {"ref": c["ref"], "hyp": c["hyp"], "errors": errors, "words": c["words"],
                         "sub": c["sub"], "del": c["del"], "ins": c["ins"]}
        rows.append(row)
    wers = {kind: t["edits"] / t["words"] for kind, t in totals.items()}
    return wers, rows


def label(system: str, settings: Settings) -> str:
    text = f"beam{settings.beam}.t{settings.threads}"
    if system.startswith("mmseq") and settings.mmseq_model is not None:
        text = f"{settings.mmseq_model.name}.{text}"
    return text + (f".bs{settings.batch_size}" if system in BATCHED else "")


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("faster-whisper", "ctranslate2", "transformers", "torch", "jiwer", "openai-whisper"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--systems", default="faster-whisper-f32", help=f"comma-separated: {', '.join(SYSTEMS)}")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="batched systems (default 16)")
    parser.add_argument("--warmup", type=int, default=1, help="clips decoded before timing (default 1)")
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--ct2-model", type=Path, default=DEFAULT_CT2, help=f"default {DEFAULT_CT2}")
    parser.add_argument("--mmseq-model", type=Path)
    parser.add_argument("--hf-model", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/real/results"))
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    settings = Settings(beam=args.beam, threads=args.threads, batch_size=args.batch_size, warmup=args.warmup,
                        ct2_model=args.ct2_model, mmseq_model=args.mmseq_model, hf_model=args.hf_model)
    clips = load_clips(args.manifest, args.limit)
    set_name = args.manifest.parent.name
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{set_name}: {len(clips)} clips, {sum(c.seconds for c in clips):.1f} s of audio; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; timings are indicative "
          f"(other jobs may share this machine: see the load averages)", flush=True)
    for system in systems:
        run = SYSTEMS[system](clips, settings)
        wers, rows = score(clips, run)
        name = f"{set_name}.{system}.{label(system, settings)}"
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        summary = {"set": set_name, "manifest": str(args.manifest), "system": system, "settings": run.settings,
                   "clips": len(clips), "audio_s": round(run.audio_s, 3), "decode_s": round(run.decode_s, 3),
                   "rtfx": round(run.rtfx, 3), "cpu_s": round(run.cpu_s, 3), "wer_basic": round(wers["basic"], 5),
                   "wer_whisper": round(wers["whisper"], 5), "loadavg_start": run.load_start,
                   "loadavg_end": run.load_end, "warmup_clips": settings.warmup, "cpus": os.cpu_count(),
                   "versions": versions(), "per_clip": str(args.out / f"{name}.jsonl"),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(args.out / "summary.jsonl", "a", encoding="utf-8") as file:
            file.write(json.dumps(summary) + "\n")
        load = lambda avg: "/".join(f"{x:.2f}" for x in avg)  # noqa: E731
        print(f"{system:28} {label(system, settings):14} WER basic {100 * wers['basic']:6.2f} %  "
              f"whisper {100 * wers['whisper']:6.2f} %  RTFx {run.rtfx:6.2f}  clips {len(clips)}  "
              f"({run.decode_s:.1f} s, {run.cpu_s:.1f} CPU s, for {run.audio_s:.1f} s; load {load(run.load_start)} -> {load(run.load_end)})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
