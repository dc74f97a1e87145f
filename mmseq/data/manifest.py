"""JSON Lines manifests: one example a line, paths relative to the manifest's own folder; gzipped
(``.gz``) or not; Lhotse CutSets (``cuts.jsonl.gz``) too, their cuts read by :mod:`mmseq.data.lhotse`."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

from ..errors import InputError, ManifestError
from .files import open_regular
from .lhotse import cut_to_example, is_cut

# What each field must hold; ``path`` fields are resolved against the manifest's folder.
FIELD_TYPES = {
    "id": str, "audio": "path", "image": "path", "text": str, "source": str, "duration": (int, float),
    "captions": list, "task": str, "prompt": str,
}


def context_problem(value) -> str | None:
    """Why a line's ``"context"`` cannot be used (it is a string or a list of strings), or None."""
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        return None
    return f"field 'context' must be a string or a list of strings, got {type(value).__name__}"


def boost_problem(value) -> str | None:
    """Why a line's ``"boost"`` (words or phrases to favour, see
    :class:`mmseq.decoding.scorers.boost.ContextBoost`) cannot be used, or None: it is a list of
    strings, or a string for one phrase."""
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(w, str) for w in value)):
        return None
    return f"field 'boost' must be a list of words or phrases (strings), got {type(value).__name__}"


def boost_words(value) -> list[str] | None:
    """A line's ``"boost"`` as a list of words or phrases (a string is one phrase); None without one."""
    return [value] if isinstance(value, str) else value


def parse_line(line: str, path, number: int, required: tuple[str, ...], folder: Path) -> dict:
    """One manifest line to an example dict, or :class:`ManifestError` naming ``path:number``."""
    try:
        example = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(path, number, f"not valid JSON ({error.msg})") from None
    except (ValueError, RecursionError) as error:  # an integer of 4300+ digits, nesting too deep
        raise ManifestError(path, number, f"not usable JSON ({type(error).__name__}: {str(error)[:80]})") from None
    if not isinstance(example, dict):
        raise ManifestError(path, number, f"expected a JSON object, got {type(example).__name__}")
    if is_cut(example):
        example = cut_to_example(example, path, number, folder)
    for name in required:
        if name not in example:
            raise ManifestError(path, number, f"missing field {name!r}")
    if type(example.get("id")) is int:  # COCO's image ids are numbers; ids are compared as strings
        example["id"] = str(example["id"])
    for name, kind in FIELD_TYPES.items():
        if name not in example:
            continue
        value = example[name]
        if kind == "path":
            if not isinstance(value, str) or not value:
                raise ManifestError(path, number, f"field {name!r} must be a non-empty path string")
            example[name] = value if os.path.isabs(value) else str(folder / value)
        elif isinstance(value, bool) or not isinstance(value, kind):
            raise ManifestError(path, number, f"field {name!r} has the wrong type ({type(value).__name__})")
        if name == "duration" and not 0 <= value < float("inf"):  # JSON allows NaN, Infinity, -1
            raise ManifestError(path, number, f"field 'duration' must be a finite number >= 0, got {value}")
        if not _encodable(value):  # "\ud800" is valid JSON, but no tokenizer or file system takes it
            raise ManifestError(path, number, f"field {name!r} holds a lone surrogate (invalid Unicode)")
    if "captions" in example:
        captions = example["captions"]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ManifestError(path, number, "field 'captions' must be a non-empty list of non-empty strings")
    problem = context_problem(example.get("context")) or boost_problem(example.get("boost"))
    if problem:
        raise ManifestError(path, number, problem)
    if "text" in required and not example["text"].strip():
        raise ManifestError(path, number, "empty text")
    example.setdefault("id", f"{Path(path).stem}-{number}")
    example["_where"] = f"{path}:{number}"
    return example


def _encodable(value) -> bool:
    """Whether every string in ``value`` (a string or a list of them) is valid UTF-8."""
    try:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_manifest(path, required: tuple[str, ...] = (), skip_errors: bool = False):
    """Read a manifest; returns ``(examples, errors)``.

    Each example gets ``_where`` (``"file:line"``) so later errors can name it. A bad line raises
    :class:`ManifestError`, or with ``skip_errors`` is left out and its error returned.
    """
    path = Path(path)
    try:
        file = open_regular(path, "manifest")  # a FIFO or a device would block or never end
    except InputError as error:
        raise ManifestError(path, None, error.reason) from None
    examples, errors = [], []
    number = 0
    try:
        # A gzipped manifest (Lhotse's cuts.jsonl.gz) is read through gzip, line by line.
        lines = gzip.GzipFile(fileobj=file) if path.suffix == ".gz" else file
        with file, lines:
            for number, raw in enumerate(lines, 1):
                try:
                    # utf-8-sig on the first line: a byte-order mark (as Windows editors write) is not
                    # part of it. Strict: a line that is not UTF-8 is an error naming it, not U+FFFD.
                    try:
                        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    except UnicodeDecodeError as error:
                        raise ManifestError(path, number, f"not valid UTF-8 (byte {error.start + 1})") from None
                    if not line.strip():
                        continue
                    # Absolute folder: paths must not depend on the working folder of whoever reads them later.
                    examples.append(parse_line(line, path, number, required, path.parent.absolute()))
                except ManifestError as error:
                    if not skip_errors:
                        raise
                    errors.append(error)
    except (OSError, EOFError, zlib.error) as error:  # not gzip, or cut short: the lines before are kept
        if path.suffix != ".gz":
            raise
        error = ManifestError(path, number + 1, f"cannot read the compressed manifest ({error})")
        if not skip_errors:
            raise error from None
        errors.append(error)
    return examples, errors
