"""Peak memory of ``mmseq transcribe`` and ``mmseq caption`` on many files at once.

Makes N audio files and N images (a few of each broken on purpose), a tiny random speech
checkpoint and a tiny random caption checkpoint, then runs each command once on all the files, as
a user would, in its own process. Prints, for each run, the files given, the results printed, the
errors reported, the wall time and the process's peak resident memory (``ru_maxrss``). With
``--compare`` it first runs on N/10 files: streamed decoding should need about the same memory.

    python tools/bench_load.py --files 1000
    python tools/bench_load.py --files 1000 --compare --seconds 4 --image-size 128
"""

from __future__ import annotations

import mmseq
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16000
BROKEN_AUDIO = ("broken.wav", "missing.wav", "nan.wav")
BROKEN_IMAGES = ("broken.jpg", "missing.png", "empty.png")
TEXTS = ["red cat runs", "a big dog sits", "the blue bird sings now", "small green cat"]


def make_audio_files(folder: Path, count: int, seconds: float = 2.0, seed: int = 0) -> list[Path]:
    """``count`` files in all: 16-bit WAVs of 0.5 to 1.5 times ``seconds`` (tones and noise) and,
    spread among them, one unreadable, one missing and one all-NaN file."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count - len(BROKEN_AUDIO)):
        length = int(rng.uniform(0.5, 1.5) * seconds * RATE)
        t = np.arange(length) / RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + 0.02 * rng.standard_normal(length)
        paths.append(folder / f"u{i:05d}.wav")
        soundfile.write(paths[-1], wave.astype(np.float32), RATE, subtype="PCM_16")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    soundfile.write(folder / "nan.wav", np.full(RATE, np.nan, np.float32), RATE, subtype="FLOAT")
    for k, name in enumerate(BROKEN_AUDIO):
        paths.insert((k + 1) * len(paths) // (len(BROKEN_AUDIO) + 1), folder / name)
    return paths


def make_image_files(folder: Path, count: int, size: int = 96, seed: int = 0) -> list[Path]:
    """``count`` files in all: JPEG and PNG images around ``size`` pixels and, spread among them,
    one truncated, one missing and one empty file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count - len(BROKEN_IMAGES)):
        height, width = rng.integers(size // 2, size * 3 // 2, 2)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        paths.append(folder / f"i{i:05d}.{'jpg' if i % 2 else 'png'}")
        Image.fromarray(pixels).save(paths[-1])
    data = paths[0].read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    for k, name in enumerate(BROKEN_IMAGES):
        paths.insert((k + 1) * len(paths) // (len(BROKEN_IMAGES) + 1), folder / name)
    return paths


def make_checkpoints(folder: Path, image_model: str = "resnet18", image_size: int = 64) -> tuple[Path, Path]:
    """A tiny random speech checkpoint (Conformer, dim 32, 1 layer) and caption checkpoint (a timm
    backbone, dim 32); their decoding stops after 16 tokens, as a trained model's would."""
    import torch

    from mmseq.model import ModelConfig, Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(TEXTS)
    decoder = dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0, max_length=64)
    decoding = dict(beam_size=1, ctc_weight=0.0, max_length=16)
    speech = ModelConfig(encoder=dict(name="conformer", n_mels=40, dim=32, layers=1, heads=2, ffn_dim=64,
                                      conv_kernel=3, subsampling=4, dropout=0.0), decoder=decoder, ctc_weight=0.3)
    caption = ModelConfig(encoder=dict(name="timm", model_name=image_model, dim=32, image_size=image_size),
                          decoder=decoder, ctc_weight=0.0)
    speech_folder = mmseq.save(Seq2Seq(speech, tokenizer, "asr", decoding), folder / "speech")
    caption_folder = mmseq.save(Seq2Seq(caption, tokenizer, "caption", decoding), folder / "caption")
    return speech_folder, caption_folder


def run_measured(argv: list[str], threads: int = 1) -> dict:
    """Run a command; returns its exit code, stdout, stderr, wall seconds and peak RSS in MiB."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=environment, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr,
            "seconds": time.time() - start, "peak_mib": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def decode_command(kind: str, checkpoint: Path, files: list[Path], batch_size: int = 16) -> list[str]:
    return [sys.executable, "-m", "mmseq", kind, str(checkpoint), *map(str, files),
            "--batch-size", str(batch_size), "--device", "cpu"]


def check_outputs(run: dict, files: list[Path], broken: tuple[str, ...]) -> dict:
    """Counts of a run's results and errors; each good file must have exactly one result line and
    each broken one exactly one error line naming it."""
    printed = [line.split("\t", 1)[0] for line in run["stdout"].splitlines() if "\t" in line]
    errors = [line for line in run["stderr"].splitlines() if line.startswith("mmseq: error: ")]
    good = [str(f) for f in files if f.name not in broken]
    bad = [str(f) for f in files if f.name in broken]
    return {"results": len(printed), "errors": len(errors),
            "all_results_kept": sorted(printed) == sorted(good),
            "every_error_named": len(errors) == len(bad) and all(any(b in e for e in errors) for b in bad),
            "exit_code": run["returncode"]}


def bench(count: int, folder: Path, seconds: float, image_size: int, image_model: str, batch_size: int) -> list[dict]:
    audio = make_audio_files(folder / f"audio-{count}", count, seconds)
    images = make_image_files(folder / f"images-{count}", count, image_size)
    speech, caption = make_checkpoints(folder / "checkpoints", image_model, image_size)
    rows = []
    for kind, checkpoint, files, broken in (("transcribe", speech, audio, BROKEN_AUDIO),
                                            ("caption", caption, images, BROKEN_IMAGES)):
        run = run_measured(decode_command(kind, checkpoint, files, batch_size))
        rows.append({"command": kind, "files": len(files), **check_outputs(run, files, broken),
                     "seconds": round(run["seconds"], 1), "peak_mib": round(run["peak_mib"], 1)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="files per command (default 1000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="mean audio length in seconds (default 2)")
    parser.add_argument("--image-size", type=int, default=96, help="mean image side in pixels (default 96)")
    parser.add_argument("--image-model", default="resnet18", help="timm backbone of the caption model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compare", action="store_true", help="also run on a tenth of the files first")
    parser.add_argument("--json", help="write the rows to this file too")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmseq-bench-load-") as tmp:
        for count in ([max(10, args.files // 10)] if args.compare else []) + [args.files]:
            rows += bench(count, Path(tmp), args.seconds, args.image_size, args.image_model, args.batch_size)
    header = ["command", "files", "results", "errors", "all_results_kept", "every_error_named", "exit_code",
              "seconds", "peak_mib"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[name]) for name in header))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["all_results_kept"] and r["every_error_named"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
