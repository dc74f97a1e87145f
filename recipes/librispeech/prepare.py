"""Turn an unpacked LibriSpeech into mmseq manifests, one JSON line an utterance.

Reads ROOT/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and the
<speaker>-<chapter>-<utterance>.flac files beside it (ROOT may also be the LibriSpeech folder itself), and writes

    OUT/<split>.jsonl   {"id": "103-1240-0000", "audio": "/abs/.../103-1240-0000.flac", "text": "...", "duration": 14.085}
    OUT/train_960.jsonl train-clean-100, train-clean-360 and train-other-500 together, once all three manifests exist

Audio paths are absolute, so the manifests stay valid wherever OUT lives; text is lowercased; the duration
comes from the flac header. A transcript line that cannot be read, or that names a missing flac, stops the
run with an error naming the transcript and line.

    python recipes/librispeech/prepare.py --root /data --out data/librispeech
    python recipes/librispeech/prepare.py --root /data --out data/librispeech --splits dev-clean test-clean
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import soundfile
from tqdm import tqdm

try:
    from mmseq.errors import InputError, ManifestError, MmseqError
except ImportError:  # run from a checkout where mmseq is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mmseq.errors import InputError, ManifestError, MmseqError

TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")


def find_corpus(root: Path) -> Path:
    """The folder that holds the split folders: ROOT/LibriSpeech, or ROOT itself."""
    if (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    if root.is_dir():
        return root
    raise InputError(f"{root}: no such folder (expected the folder that holds LibriSpeech/)")


def find_splits(corpus: Path) -> list[str]:
    """Every split folder under ``corpus`` (dev-clean, train-clean-100, ...), sorted by name."""
    return sorted(path.name for path in corpus.iterdir() if path.is_dir() and not path.name.startswith("."))


def read_transcript(path: Path) -> list[dict]:
    """The utterances of one ``<speaker>-<chapter>.trans.txt``: ``{"id", "audio", "text", "duration"}`` each.

    Raises ManifestError naming ``path`` and the line for a line without text, an id from another chapter,
    or an id whose flac is missing or unreadable.
    """
    chapter_prefix = path.name.removesuffix(".trans.txt") + "-"
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            text = " ".join(text.split()).lower()
            if not text:
                raise ManifestError(path, line_number, f"expected '<utterance id> <TRANSCRIPT>', got {line.strip()!r}")
            if not utterance_id.startswith(chapter_prefix):
                reason = f"utterance id {utterance_id!r} does not start with {chapter_prefix!r}"
                raise ManifestError(path, line_number, reason)
            audio = path.parent / f"{utterance_id}.flac"
            if not audio.is_file():
                raise ManifestError(path, line_number, f"audio file {audio} does not exist")
            try:
                duration = soundfile.info(str(audio)).duration
            except RuntimeError as error:  # soundfile raises a RuntimeError subclass for a bad file
                raise ManifestError(path, line_number, f"cannot read {audio}: {error}") from error
            rows.append({"id": utterance_id, "audio": str(audio.resolve()), "text": text,
                         "duration": round(duration, 3)})
    return rows


def numeric_order(path: Path) -> tuple:
    """Sort speakers and chapters as numbers (19 before 103), as LibriSpeech lists them."""
    return tuple(int(part) if part.isdigit() else part for part in path.name.removesuffix(".trans.txt").split("-"))


def prepare_split(corpus: Path, split: str) -> list[dict]:
    """All utterances of one split, by speaker, chapter and utterance."""
    folder = corpus / split
    if not folder.is_dir():
        raise InputError(f"{folder}: split folder not found (found: {', '.join(find_splits(corpus)) or 'none'})")
    transcripts = sorted(folder.glob("*/*/*.trans.txt"), key=numeric_order)
    if not transcripts:
        raise InputError(f"{folder}: no <speaker>/<chapter>/*.trans.txt files")
    rows = []
    for transcript in tqdm(transcripts, desc=split, unit="chapter"):
        rows.extend(read_transcript(transcript))
    return rows


def write_manifest(path: Path, rows: list[dict]) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a manifest."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(partial, path)


def combine(out: Path, splits: tuple[str, ...], name: str) -> bool:
    """Concatenate ``OUT/<split>.jsonl`` of ``splits`` into ``OUT/<name>``; False when one is missing."""
    parts = [out / f"{split}.jsonl" for split in splits]
    if not all(part.is_file() for part in parts):
        return False
    partial = out / (name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for part in parts:
            handle.write(part.read_text(encoding="utf-8"))
    os.replace(partial, out / name)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--root", type=Path, required=True,
                        help="folder that holds LibriSpeech/ (or LibriSpeech/ itself)")
    parser.add_argument("--out", type=Path, default=Path("data/librispeech"),
                        help="manifest folder (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", metavar="SPLIT",
                        help="splits to prepare, such as dev-clean train-clean-100 (default: every split found)")
    arguments = parser.parse_args(argv)
    try:
        corpus = find_corpus(arguments.root)
        splits = arguments.splits or find_splits(corpus)
        if not splits:
            raise InputError(f"{corpus}: no split folders (such as dev-clean) inside")
        arguments.out.mkdir(parents=True, exist_ok=True)
        for split in splits:
            rows = prepare_split(corpus, split)
            write_manifest(arguments.out / f"{split}.jsonl", rows)
            hours = sum(row["duration"] for row in rows) / 3600
            print(f"{split}: {len(rows)} utterances, {hours:.1f} h -> {arguments.out / (split + '.jsonl')}")
        if any(split in TRAIN_960 for split in splits) and combine(arguments.out, TRAIN_960, "train_960.jsonl"):
            print(f"train_960: {' + '.join(TRAIN_960)} -> {arguments.out / 'train_960.jsonl'}")
    except MmseqError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
