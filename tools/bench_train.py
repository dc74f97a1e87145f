"""Training throughput, padding, peak memory and model FLOPs utilization (MFU) of the shared trainer.

Runs real optimizer steps of :class:`mmseq.training.trainer.Trainer` (its data loader, length-bucketed
batches, mixed precision, clipping, AdamW) and reports:

- throughput: audio seconds per second for speech (examples per second for every task), over the
  timed steps, data loading included;
- padding: the share of the padded batch area that is padding, with the trainer's length buckets
  and with random batches filled to the same budget;
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; the process's peak resident memory
  (``ru_maxrss``) on a CPU, and how much it grew during the steps;
- MFU: the model's training FLOPs per second (forward and backward of each timed batch, counted by
  ``torch.utils.flop_counter.FlopCounterMode``, over the timed steps' wall time) divided by the
  device's peak matrix-multiply rate, measured in the same run with large matmuls in the training
  dtype (bf16 on GPUs that have it, fp32 on CPU).

    # a config of your own, with its manifests (any key=value override)
    python tools/bench_train.py recipes/synth_speech/config.yaml data.train=/tmp/ss/train.jsonl
    # recipes/librispeech/conformer_100h.yaml's Conformer on synthetic random-length audio
    python tools/bench_train.py --preset librispeech --utterances 48
    python tools/bench_train.py --preset librispeech --json bench.json data.batch_size=400

On a GPU the defaults are cuda and bf16 (``trainer.precision=auto``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mmseq.config import load_config  # noqa: E402
from mmseq.data.batching import padding_fraction  # noqa: E402
from mmseq.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The LibriSpeech recipe's Conformer (ESPnet's LibriSpeech-100 size, about 30 M parameters).
LIBRISPEECH = ROOT / "recipes" / "librispeech" / "conformer_100h.yaml"
WORDS = "the of and to a in he was that it his her with as had for you not but be is she at on by".split()


def librispeech_durations(count: int, seed: int = 0) -> np.ndarray:
    """Log-normal utterance durations, median 12 s, clipped to 1 to 30 s (LibriSpeech-like)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(math.log(12.0), 0.35, size=count), 1.0, 30.0)


def write_synthetic_corpus(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` noise utterances with LibriSpeech-like durations (log-normal, median about 12 s,
    1 to 30 s) and random targets of about 3 characters a second (the token rate of a 5000-piece
    BPE on LibriSpeech); returns the manifest."""
    import soundfile

    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, seconds in enumerate(librispeech_durations(count, seed).tolist()):
        audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        soundfile.write(folder / "wav" / f"u{i}.wav", audio, 16000, subtype="PCM_16")
        text = ""
        while len(text) < 3 * seconds:
            text = f"{text} {words.choice(WORDS)}".strip()
        lines.append(json.dumps({"id": f"u{i}", "audio": f"wav/u{i}.wav", "text": text, "duration": seconds}))
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def random_batches(lengths: list[float], max_size: float, seed: int = 0) -> list[list[int]]:
    """Batches filled in random order to the same padded budget: batching without buckets."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches, current, longest = [], [], 0.0
    for i in order:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_size:
            batches.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, lengths[i])
    return batches + ([current] if current else [])


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """The best rate of large square matmuls in ``dtype`` on ``device`` (FLOP/s)."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    for attempt in range(100):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, (10 if device.type == "cuda" else 1) * 2 * size ** 3 / elapsed)
        if attempt >= 3 and time.perf_counter() > deadline:
            break
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad, query, key, value)


def training_flops(trainer: Trainer, batch: dict) -> float:
    """FLOPs of the forward and backward of one batch (the gradients are thrown away). Matmuls,
    convolutions and attention count; the log-mel front end and elementwise work do not."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten  # the CPU attention kernels have no formula of their own in torch 2.11
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward})
    with counter:
        trainer.forward_backward(batch)
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def endless(trainer: Trainer):
    """The trainer's batches, epoch after epoch."""
    for epoch in range(10 ** 6):
        trainer.sampler.set_epoch(epoch)
        yield from trainer.loader


def rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench(config, steps: int, warmup: int, count_flops: bool = True) -> dict:
    trainer = Trainer(config)
    trainer.setup()
    device, task = trainer.device, trainer.task
    speech = task.input_field == "audio"
    lengths = [task.length(e) for e in trainer.train_examples]
    budget = config.data.batch_size
    bucketed = padding_fraction(lengths, trainer.sampler.batches)
    shuffled = padding_fraction(lengths, random_batches(lengths, budget))

    dtype = trainer.dtype or torch.float32
    peak_rate = peak_matmul_flops(device, dtype)
    batches = endless(trainer)
    for _ in range(warmup):  # first steps: allocator, kernels, compile
        batch = next(batches)
        trainer.forward_backward(batch)
        trainer.optimizer_step(batch["size"])
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_bytes()

    timed, wall, compute = [], 0.0, 0.0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        trainer.forward_backward(batch)
        trainer.optimizer_step(batch["size"])
        _synchronize(device)
        end = time.perf_counter()
        wall, compute = wall + end - start, compute + end - loaded
        timed.append(batch)
    examples = sum(b["size"] for b in timed)
    real = sum(float(l) for b in timed for l in b["lengths"]) / task.encoder.sample_rate if speech else examples
    padded = sum(b["inputs"].shape[0] * b["inputs"].shape[1] for b in timed) / task.encoder.sample_rate \
        if speech else examples
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "steps": steps, "examples": examples, "batch_budget": budget,
        "seconds_per_step": wall / steps, "data_wait_share": 1 - compute / wall,
        "examples_per_second": examples / wall,
        "padding_bucketed": bucketed, "padding_random": shuffled,
        "peak_matmul_tflops": peak_rate / 1e12,
    }
    if speech:
        result.update(audio_seconds=real, padded_audio_seconds=padded, audio_seconds_per_second=real / wall)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:
        result["peak_rss_gib"] = rss_bytes() / 2 ** 30
        result["rss_growth_during_steps_gib"] = (rss_bytes() - rss_before) / 2 ** 30
    if count_flops:
        flops = sum(training_flops(trainer, batch) for batch in timed)
        result.update(model_tflops_per_step=flops / steps / 1e12, model_tflops_per_second=flops / wall / 1e12,
                      mfu=flops / wall / peak_rate)
    return result


def print_table(result: dict) -> None:
    for name, value in result.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{name:<28} {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="a training config (YAML); or use --preset")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.train=/tmp/ss/train.jsonl")
    parser.add_argument("--preset", choices=["librispeech"], help="a built-in model size on synthetic audio")
    parser.add_argument("--utterances", type=int, default=48, help="synthetic utterances for --preset (default 48)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 5 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (no MFU)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.preset is None):
        parser.error("give a config or --preset")
    gpu = torch.cuda.is_available()
    steps = args.steps or (20 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        scratch = Path(scratch)
        overrides = [f"output_dir={scratch / 'out'}", "data.valid=null", "trainer.checkpoint_every=0"]
        if args.preset:  # the recipe's model on synthetic audio; characters (no tokenizer to train)
            manifest = write_synthetic_corpus(scratch / "corpus", args.utterances)
            config_path = LIBRISPEECH
            overrides += [f"data.train={manifest}", "tokenizer.type=char"]
            if not gpu:  # the recipe's 800 s batches and 6 loader processes are for GPUs
                overrides += ["data.batch_size=60", "data.num_workers=1"]
        else:
            config_path = args.config
        config = load_config(config_path, overrides + args.overrides)
        result = bench(config, steps, warmup, count_flops=not args.no_flops)
    result = {"config": args.preset or args.config, **result}
    if args.preset:  # padding over a corpus-sized sample of the same durations, not just the few written
        from mmseq.data.batching import bucket_batches
        lengths = librispeech_durations(20000, seed=1).tolist()
        result["padding_bucketed_20k"] = padding_fraction(lengths, bucket_batches(lengths, config.data.batch_size))
        result["padding_random_20k"] = padding_fraction(lengths, random_batches(lengths, config.data.batch_size))
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
