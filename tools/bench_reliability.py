"""Figures for docs/reliability.md, round two: cost of hostile headers, FIFOs, the YAML alias bomb.

Builds a speech checkpoint (random weights, the default Conformer's shape unless ``--tiny``), then
runs each case as a user would, ``python -m mmseq ...`` in its own process under
``/usr/bin/time -v``, and prints: the case, exit status, wall and CPU seconds, peak resident memory
(torch's import included) and the first line of stderr.

    python tools/bench_reliability.py            # all cases
    python tools/bench_reliability.py --tiny     # a tiny model: only the input handling's cost
"""

from __future__ import annotations

import mmseq
import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RATE = 16000
ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path, tiny: bool) -> Path:
    import torch

    from mmseq.model import ModelConfig, Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["red cat runs", "a big dog sits", "the blue bird sings now"],
                                    prompt_tokens=["<|asr|>"])
    encoder = {"name": "conformer"}
    decoder = {}
    if tiny:
        encoder.update(n_mels=16, dim=32, layers=1, heads=2, ffn_dim=64, subsampling_channels=8)
        decoder.update(dim=32, layers=2, heads=2, ffn_dim=64)
    model = Seq2Seq(ModelConfig(encoder=encoder, decoder=decoder), tokenizer, "asr").eval()
    return mmseq.save(model, folder / "checkpoint")


def wav_with_header_rate(path: Path, header_rate: int, samples: int = 19000) -> Path:
    """A 16-bit WAV of ``samples`` (38 KB) whose header says ``header_rate``."""
    import soundfile

    t = np.arange(samples) / RATE
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:32] = struct.pack("<II", header_rate, header_rate * 2)
    path.write_bytes(bytes(data))
    return path


def sparse_wav(path: Path, hours: float) -> Path:
    size = int(hours * 3600 * RATE) * 2
    header = (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
              + b"data" + struct.pack("<I", size))
    with open(path, "wb") as file:
        file.write(header)
        file.truncate(len(header) + size)
    return path


ONLY = None


def run(name: str, arguments: list[str], timeout: float = 120) -> None:
    if ONLY and ONLY not in name:
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "mmseq", *arguments]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name:<34} TIMEOUT after {timeout:.0f} s")
        return
    wall = time.monotonic() - start
    err = done.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", err))
    message = next((line for line in err.splitlines() if line.startswith("mmseq: ")), "")
    output = done.stdout.strip().splitlines()
    shown = message or (f"stdout: {output[0][:60]!r}" if output else "")
    print(f"{name:<34} exit {done.returncode:<3} wall {wall:6.2f} s  cpu {cpu:6.2f} s  peak {rss:7.0f} MB  {shown[:150]}")


def unblock_later(path: Path, after: float) -> threading.Thread:
    """Open the FIFO for writing after ``after`` s, so that a reader that did block is freed."""
    def go():
        time.sleep(after)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the default Conformer")
    parser.add_argument("--only", help="run only the cases whose name holds this text")
    args = parser.parse_args()
    global ONLY
    ONLY = args.only
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        checkpoint = str(make_checkpoint(folder, args.tiny))
        print(f"checkpoint: {'tiny' if args.tiny else 'default Conformer'} (random weights); "
              f"each line one `python -m mmseq` process under /usr/bin/time -v; other jobs share the CPUs")
        run("baseline: `mmseq encoders` (imports)", ["encoders"])
        for rate in (16000, 16001, 44101, 96001, 1):
            path = wav_with_header_rate(folder / f"r{rate}.wav", rate)
            run(f"transcribe 38 KB WAV, header {rate} Hz", ["transcribe", checkpoint, str(path), "--device", "cpu"])
        run("transcribe sparse 12-hour WAV", ["transcribe", checkpoint, str(sparse_wav(folder / "long.wav", 12)),
                                              "--device", "cpu"])
        fifo = folder / "pipe"
        os.mkfifo(fifo)
        manifest = folder / "fifo.jsonl"
        manifest.write_text(f'{{"audio": "{fifo}", "text": "a"}}\n')
        config = folder / "fifo_config.yaml"
        os.mkfifo(config)
        for case, arguments, pipe in [
            ("FIFO as audio (transcribe)", ["transcribe", checkpoint, str(fifo)], fifo),
            ("FIFO in a manifest (eval)", ["eval", checkpoint, str(manifest), "--out", str(folder / "ev")], fifo),
            ("FIFO as manifest (eval)", ["eval", checkpoint, str(fifo), "--out", str(folder / "ev2")], fifo),
            ("FIFO as config (train)", ["train", str(config)], config),
            ("/dev/urandom as audio", ["transcribe", checkpoint, "/dev/urandom"], None),
        ]:
            if pipe is not None:
                unblock_later(pipe, 100)
            run(case, arguments, timeout=150)
        os.remove(Path(checkpoint) / "config.json")
        os.mkfifo(Path(checkpoint) / "config.json")
        unblock_later(Path(checkpoint) / "config.json", 100)
        run("FIFO as checkpoint config.json", ["transcribe", checkpoint, str(folder / "r16000.wav")], timeout=150)

        from mmseq.config import load_config
        from mmseq.errors import ConfigError
        bomb = folder / "bomb.yaml"
        bomb.write_text("\n".join(["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
                                  + [f"{b}: &{b} [" + ",".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")]))
        start = time.perf_counter()
        try:
            load_config(bomb)
            outcome = "accepted"
        except ConfigError as error:
            outcome = f"refused: {error}"
        print(f"{'YAML alias bomb (load_config)':<34} {time.perf_counter() - start:.4f} s  {outcome[:120]}")


if __name__ == "__main__":
    main()
