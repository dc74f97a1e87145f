"""Inverse real-time factor (RTFx: seconds of audio transcribed per second) of a checkpoint on a
manifest, measured as the Open ASR Leaderboard measures it.

The leaderboard's rules, kept here: the utterances are sorted by duration (longest first) and
decoded in batches; one warm-up pass over the first batches runs before timing; decoding is greedy
unless told otherwise; the model runs in the device's fastest dtype (bf16 autocast on a GPU that
has it, fp16 on one that does not, fp32 on CPU); the clock covers feature extraction, encoding and
decoding of every batch (reading the audio files does not count), and a GPU is synchronised
before the clock is read. RTFx = total audio seconds / total timed seconds. WER is printed too
when the manifest has texts (jiwer, lower-cased, punctuation kept as is).

    python tools/bench_rtf.py exp/synth_speech/best data/synth_speech/test.jsonl
    python tools/bench_rtf.py CHECKPOINT MANIFEST --beam-size 4 --ctc-weight 0.3 --batch-size 32 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmseq  # noqa: E402


def fastest_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def read_manifest(path: Path, limit: int | None) -> list[dict]:
    """Manifest lines (audio paths made absolute: they are relative to the manifest's folder)."""
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            audio = Path(record["audio"])
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}:{number}: not a manifest line with an 'audio' field ({error})")
        record["audio"] = str(audio if audio.is_absolute() else path.parent / audio)
        lines.append(record)
    return lines[:limit] if limit else lines


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model, task, waveforms, batches, options, device, dtype) -> tuple[float, list[str]]:
    """Decode every batch; returns the seconds it took and the texts in waveform order."""
    texts = [""] * len(waveforms)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in batches:
            inputs, lengths = task.collate_inputs([waveforms[i] for i in batch])
            got = model.decode_texts({"inputs": inputs, "lengths": lengths, "task": task.name}, **options)
            for i, text in zip(batch, got):
                texts[i] = text
    synchronize(device)
    return time.perf_counter() - start, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=1, help="1 (default): greedy, as the leaderboard")
    parser.add_argument("--ctc-weight", type=float, default=0.0)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances of the manifest")
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = fastest_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    model = mmseq.load(args.checkpoint, device)
    task = model.route().task
    records = read_manifest(args.manifest, args.limit)
    waveforms = [task.load_input(r["audio"]) for r in records]  # read before timing
    rate = task.encoder.sample_rate
    seconds = [len(w) / rate for w in waveforms]
    order = sorted(range(len(waveforms)), key=lambda i: -seconds[i])
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    options = dict(beam_size=args.beam_size, ctc_weight=args.ctc_weight)
    run(model, task, waveforms, batches[: args.warmup_batches], options, device, dtype)  # warm-up
    cpu = time.process_time()
    elapsed, texts = run(model, task, waveforms, batches, options, device, dtype)
    cpu = time.process_time() - cpu
    audio = sum(seconds)
    result = {"checkpoint": str(args.checkpoint), "manifest": str(args.manifest), "utterances": len(waveforms),
              "audio_seconds": round(audio, 2), "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
              "rtfx": round(audio / elapsed, 2), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "batch_size": args.batch_size, "beam_size": args.beam_size, "ctc_weight": args.ctc_weight,
              "threads": torch.get_num_threads()}
    references = [r.get("text") for r in records]
    if all(isinstance(r, str) and r.strip() for r in references):
        import jiwer

        result["wer"] = round(100 * jiwer.wer([r.lower() for r in references], [t.lower() for t in texts]), 2)
    print(" ".join(f"{k}={v}" for k, v in result.items() if k not in ("checkpoint", "manifest")))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
