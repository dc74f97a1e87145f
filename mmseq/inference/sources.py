"""Inputs of the batch commands (``mmseq transcribe | caption | translate``) and of the Python API.

:class:`Inputs` are files, folders (searched recursively by the task's extensions), globs, JSONL
manifests (the task's input field, paths relative to the manifest, ids from its ``id``) and ``-``
for standard input (paths, or for ``translate`` the texts themselves). They are expanded lazily:
a job over 50,000 files holds them as a stream of paths, never as loaded inputs.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.manifest import boost_problem, boost_words, context_problem
from ..errors import InputError, ManifestError, MmseqError

# What the tasks' loaders read: libsndfile's formats (mp3 since libsndfile 1.1) and PIL's.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEXT_EXTENSIONS = (".txt",)
EXTENSIONS = {"asr": AUDIO_EXTENSIONS, "caption": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS}
INPUT_FIELDS = {"asr": "audio", "caption": "image", "text": "source"}
MANIFEST_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class Item:
    """One input of a batch job: its ``id`` (the manifest's id, a path, or ``FILE:LINE`` for a
    text line), its ``source`` (a path, or the text itself for the text task), and ``error``
    when it cannot even be named (a broken manifest line, a glob that matches nothing). A
    manifest line's ``prompt``, ``context`` and ``boost`` fields (its words to favour, a list),
    when it has them, are the input's own."""
    id: str
    source: str
    error: MmseqError | None = None
    prompt: str | None = None
    context: str | list | None = None
    boost: list | None = None


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk(folder: str, extensions: tuple[str, ...]) -> Iterator[str]:
    """Files under ``folder`` (recursively, sorted, one folder listing at a time) whose name ends
    with one of ``extensions`` (case-insensitive)."""
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            if name.lower().endswith(extensions):
                yield os.path.join(root, name)


class Inputs:
    """The inputs of a batch job for ``task`` ("asr", "caption" or "text"), as a lazy stream of
    :class:`Item`. ``len()`` is not offered; :meth:`count` walks the arguments once without
    loading anything (``None`` when one of them is ``-``: standard input is read once only).

    For "asr" and "caption" an argument is a file, a folder, a glob, a ``.jsonl`` manifest, or
    ``-`` (one path, folder, glob or manifest per line of ``stdin``). For "text" the sources are
    lines: of a text file, of the ``.txt`` files of a folder or glob, of ``stdin`` for ``-``;
    or the ``source`` field of a manifest.
    """

    def __init__(self, arguments: Iterable[str], task: str, stdin=None):
        if task not in EXTENSIONS:
            raise ValueError(f"task {task!r}: batch inputs know {sorted(EXTENSIONS)}")
        self.arguments, self.task, self.stdin = list(arguments), task, stdin
        self.extensions, self.field = EXTENSIONS[task], INPUT_FIELDS[task]

    def count(self) -> int | None:
        if "-" in self.arguments:
            return None
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[Item]:
        for argument in self.arguments:
            if argument == "-":
                yield from self._stdin()
            else:
                yield from self._expand(argument)

    def _stdin(self) -> Iterator[Item]:
        stream = self.stdin if self.stdin is not None else sys.stdin
        for number, line in enumerate(stream, 1):
            line = line.rstrip("\r\n")
            if self.task == "text":
                yield Item(f"-:{number}", line)
            elif line.strip():
                yield from self._expand(line.strip())

    def _expand(self, argument: str) -> Iterator[Item]:
        if argument.lower().endswith(MANIFEST_SUFFIXES) and os.path.isfile(argument):
            yield from self._manifest(argument)
        elif os.path.isdir(argument):
            for path in _walk(argument, self.extensions):
                yield from self._file(path)
        elif _has_magic(argument) and not os.path.exists(argument):
            matched = False
            for path in glob.iglob(argument, recursive=True):
                if os.path.isfile(path):
                    matched = True
                    yield from self._file(path)
            if not matched:
                yield Item(argument, argument, InputError(f"{argument}: no file matches this pattern"))
        else:
            yield from self._file(argument)

    def _file(self, path: str) -> Iterator[Item]:
        if self.task != "text":
            yield Item(path, path)
            return
        try:
            with open(path, encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    yield Item(f"{path}:{number}", line.rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as error:
            yield Item(path, path, InputError(f"{path}: cannot read text ({getattr(error, 'strerror', None) or error})"))

    def _manifest(self, manifest: str) -> Iterator[Item]:
        folder = os.path.dirname(manifest)
        with open(manifest, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{manifest}:{number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    yield Item(where, "", ManifestError(manifest, number, f"not JSON ({error.msg})"))
                    continue
                value = entry.get(self.field) if isinstance(entry, dict) else None
                if not isinstance(value, str):
                    yield Item(where, "", ManifestError(manifest, number, f"no {self.field!r} field (a string)"))
                    continue
                source = value if self.task == "text" or os.path.isabs(value) else os.path.join(folder, value)
                prompt, context = entry.get("prompt"), entry.get("context")
                problem = context_problem(context) or boost_problem(entry.get("boost"))
                if prompt is not None and not isinstance(prompt, str):
                    problem = f"field 'prompt' has the wrong type ({type(prompt).__name__})"
                if problem:
                    yield Item(where, "", ManifestError(manifest, number, problem))
                    continue
                yield Item(str(entry.get("id", where if self.task == "text" else source)), source,
                           prompt=prompt, context=context, boost=boost_words(entry.get("boost")))


# -- the Python API's sources ---------------------------------------------------------------------------
NOT_INPUTS = (type(None), bytes, bytearray, dict, set, frozenset, bool, int, float, complex)


def one_input(sources) -> bool:
    """Whether ``sources`` is one input rather than a list of them: a path (not its letters), an
    array or tensor (not its samples), an image."""
    if isinstance(sources, (str, os.PathLike, np.ndarray, torch.Tensor)):
        return True
    try:
        from PIL import Image
        return isinstance(sources, Image.Image)
    except ImportError:  # pragma: no cover
        return False
