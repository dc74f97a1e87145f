"""A caption batch job killed halfway and resumed; peak memory against the number of files.

    python tools/bench_batch.py                     # 2,000 images killed halfway; memory at 500 and 2,000
    python tools/bench_batch.py --images 2000 --small 500 --work /tmp/bench_batch

It writes ``--images`` tiny PNGs (PIL, 32 px, in folders of 250) and a tiny random caption model
(timm ``test_vit`` encoder, 2-layer decoder, greedy, at most 8 tokens), then:

1. ``mmseq caption CKPT FOLDER --output run.jsonl``, sent SIGKILL once the file holds half the
   images (the kill usually lands while a line is being written, or between two);
2. the same command with ``--resume``: prints its summary line; the file is then checked to hold
   every image exactly once, with the same text as an uninterrupted run;
3. uninterrupted runs over ``--small`` and ``--images`` files under ``/usr/bin/time -v``: peak
   resident memory and CPU seconds of each, so memory can be seen to stay flat in the number of files;
4. the expansion alone of a folder of ``--paths`` empty ``.png`` files (and of ``--small``):
   the Python heap's peak (tracemalloc) while counting and streaming them, as a job does.

Every command runs as its own process with ``OMP_NUM_THREADS=1``. On a shared machine the
seconds are inflated by the other jobs; the ratios within one run are what to compare.
"""

from __future__ import annotations

import mmseq
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"part{i // 250:03d}" / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (32, 32, 3))
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)


def make_model(folder: Path) -> Path:
    import torch

    from mmseq.model import ModelConfig, Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["a red square", "a green box", "the blue square", "a yellow box"],
                                    prompt_tokens=["<|caption|>"])
    config = ModelConfig(encoder=dict(name="timm", model_name="test_vit", image_size=32, dim=32, position="learned",
                                      augment=False),
                         decoder=dict(dim=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, max_length=32),
                         ctc_weight=0.0, label_smoothing=0.0)
    return mmseq.save(Seq2Seq(config, tokenizer, "caption", {"beam_size": 1, "max_length": 8}).eval(), folder)


def command(checkpoint: Path, images: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmseq", "caption", str(checkpoint), str(images), "--output", str(output),
            "--batch-size", "32", "--device", "cpu", "--no-progress", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def lines_in(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def timed(cmd: list[str]) -> dict:
    """Run under ``/usr/bin/time -v``: exit status, peak RSS (MiB), CPU and wall seconds, stderr."""
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=ENV)
    figures = dict(re.findall(r"^\s*(.+?): (.+)$", done.stderr, re.M))
    return {"rc": done.returncode, "peak_mib": int(figures["Maximum resident set size (kbytes)"]) / 1024,
            "cpu_s": float(figures["User time (seconds)"]) + float(figures["System time (seconds)"]),
            "stderr": done.stderr}


def summary_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if re.match(r"mmseq: \d+ done, ", line)), "(none)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500, help="the smaller job of the memory comparison")
    parser.add_argument("--paths", type=int, default=50000,
                        help="empty files whose expansion alone is measured (0: skip)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmseq_bench_batch"))
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    big, small = args.work / "images", args.work / "images_small"
    make_images(big, args.images)
    make_images(small, args.small)
    checkpoint = make_model(args.work / "ckpt")
    print(f"images: {args.images} (and {args.small}) under {args.work}")

    # 1. Killed halfway.
    output = args.work / "run.jsonl"
    job = subprocess.Popen(command(checkpoint, big, output), env=ENV, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    start = time.perf_counter()
    while lines_in(output) < args.images // 2 and job.poll() is None:
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    raw, newline = output.read_bytes(), b"\n"
    cut = "cut" if raw and not raw.endswith(newline) else "whole"
    print(f"killed (SIGKILL) after {time.perf_counter() - start:.1f} s: {raw.count(newline)} whole lines in the "
          f"file, last line {cut}")

    # 2. Resumed.
    resumed = timed(command(checkpoint, big, output, "--resume"))
    print(f"resume: exit {resumed['rc']}, {resumed['cpu_s']:.1f} CPU s; its summary line:")
    print("  " + summary_line(resumed["stderr"]))
    for line in resumed["stderr"].splitlines():
        if "unfinished last line" in line:
            print("  " + line)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    counts = Counter(row["id"] for row in rows)
    wanted = {str(p) for p in big.rglob("*.png")}
    print(f"output: {len(rows)} lines, {len(counts)} distinct images; missing {len(wanted - set(counts))}, "
          f"extra {len(set(counts) - wanted)}, more than once {sum(c > 1 for c in counts.values())}")

    # 3. Uninterrupted runs: the same texts, and peak memory against the number of files.
    full = {}
    for name, folder, count in (("small", small, args.small), ("big", big, args.images)):
        out = args.work / f"full_{name}.jsonl"
        full[name] = timed(command(checkpoint, folder, out))
        full[name]["count"] = count
        full[name]["texts"] = {row["id"]: row["text"] for row in map(json.loads, out.read_text().splitlines())}
    same = sum(full["big"]["texts"].get(row["id"]) == row["text"] for row in rows)
    print(f"resumed texts equal to an uninterrupted run's: {same} of {len(rows)}")
    print(f"{'files':>6} {'peak RSS MiB':>13} {'CPU s':>7}  summary")
    for name in ("small", "big"):
        run = full[name]
        print(f"{run['count']:>6} {run['peak_mib']:>13.1f} {run['cpu_s']:>7.1f}  {summary_line(run['stderr'])}")
    print(f"peak RSS ratio {args.images} / {args.small} files: {full['big']['peak_mib'] / full['small']['peak_mib']:.3f}"
          f" (files ratio {args.images / args.small:.1f})")

    # 4. Expansion alone, at a scale too large to decode here.
    if args.paths:
        few = expansion_peak(args.work / "paths_small", args.small)
        many = expansion_peak(args.work / "paths_many", args.paths)
        print(f"expansion (count, then stream) heap peak: {few[0]} paths {few[1]:.0f} KiB, "
              f"{many[0]} paths {many[1]:.0f} KiB")


def expansion_peak(folder: Path, count: int) -> tuple[int, float]:
    """``(inputs seen, tracemalloc peak in KiB)`` of counting and then streaming ``folder``'s files."""
    import tracemalloc

    from mmseq.inference.sources import Inputs

    for i in range(count):
        path = folder / f"part{i // 250:03d}" / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    tracemalloc.start()
    inputs = Inputs([str(folder)], "caption")
    total = inputs.count()
    seen = sum(1 for _ in inputs)
    peak = tracemalloc.get_traced_memory()[1] / 1024
    tracemalloc.stop()
    assert seen == total == count
    return seen, peak


if __name__ == "__main__":
    main()
