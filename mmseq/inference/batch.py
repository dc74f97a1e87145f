"""Batch jobs for ``mmseq transcribe``, ``caption`` and ``translate``: many inputs in, one file of
results out, resumable after a kill.

Inputs (:class:`Inputs`) are files, folders (searched recursively by the task's extensions), globs,
JSONL manifests (the task's input field, paths relative to the manifest, ids from its ``id``) and
``-`` for standard input (paths, or for ``translate`` the texts themselves). They are expanded
lazily: a job over 50,000 files holds them as a stream of paths, never as loaded inputs.

Results (:func:`open_output`) go to a JSONL, CSV or TSV file chosen by its extension, one line per
input, written and flushed as they come, so a killed job keeps every result it printed; ``resume``
drops a last line cut by the kill and skips every input already there. Failed inputs get a line
with their ``error`` too (and a one-line message on stderr); a resumed job tries them again.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..data.files import escape
from ..data.manifest import context_problem
from ..decoding.lm import with_lm
from ..errors import InputError, ManifestError, MmseqError

# What the tasks' loaders read: libsndfile's formats (mp3 since libsndfile 1.1) and PIL's.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEXT_EXTENSIONS = (".txt",)
EXTENSIONS = {"asr": AUDIO_EXTENSIONS, "caption": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS}
INPUT_FIELDS = {"asr": "audio", "caption": "image", "text": "source"}
MANIFEST_SUFFIXES = (".jsonl",)


class OutputError(MmseqError):
    """An output file that cannot be written or resumed: ``path[:line]: reason``."""


@dataclass(frozen=True)
class Item:
    """One input of a batch job: its ``id`` (the manifest's id, a path, or ``FILE:LINE`` for a
    text line), its ``source`` (a path, or the text itself for the text task), and ``error``
    when it cannot even be named (a broken manifest line, a glob that matches nothing). A
    manifest line's ``prompt`` and ``context`` fields, when it has them, are the input's own."""
    id: str
    source: str
    error: MmseqError | None = None
    prompt: str | None = None
    context: str | list | None = None


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
                problem = context_problem(context) if prompt is None or isinstance(prompt, str) else \
                    f"field 'prompt' has the wrong type ({type(prompt).__name__})"
                if problem:
                    yield Item(where, "", ManifestError(manifest, number, problem))
                    continue
                yield Item(str(entry.get("id", where if self.task == "text" else source)), source,
                           prompt=prompt, context=context)


# -- output files -----------------------------------------------------------------------------------
def columns(nbest: int | None, paths: bool) -> list[str]:
    """CSV/TSV header: ``id``, ``path`` (file inputs), ``text``; with n-best, ``score`` and then
    ``text_K``, ``score_K`` for K = 2..N (one row per input, the best first); ``error`` last."""
    names = ["id"] + (["path"] if paths else []) + ["text"]
    if nbest:
        names.append("score")
        for k in range(2, nbest + 1):
            names += [f"text_{k}", f"score_{k}"]
    return names + ["error"]


def _one_line(text: str) -> str:
    """A field that keeps one result on one line of the file (so a cut line is only ever the last)."""
    return " ".join(str(text).splitlines()).replace("\t", " ")


class ResultWriter:
    """Results of a batch job into ``path``: JSONL (``.jsonl``/``.json``), CSV (``.csv``) or TSV
    (``.tsv``), one line per input, flushed after each.

    JSONL lines: ``{"id", "path"?, "text", "nbest"?: [{"text", "score"}, ...]}`` or
    ``{"id", "path"?, "text": null, "error": "..."}``. CSV/TSV: the :func:`columns` header.

    ``resume``: keep the results already in the file and set :attr:`done` to their ids; a last
    line without its newline (a job killed while writing it) and the lines of failed inputs are
    dropped, so those inputs are done again and every input ends up in the file exactly once.
    Without ``resume`` a file that already holds results is an error (nothing is overwritten).
    The file is opened here, before any work, so an unwritable output fails at once.
    """

    def __init__(self, path: str | os.PathLike, nbest: int | None = None, paths: bool = True,
                 resume: bool = False):
        self.path, self.nbest, self.paths = Path(path), nbest, paths
        suffix = self.path.suffix.lower()
        formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
        if suffix not in formats:
            raise OutputError(f"{self.path}: unknown output format {suffix or '(no extension)'!r}; "
                              f"use .jsonl, .csv or .tsv")
        self.format = formats[suffix]
        self.columns = columns(nbest, paths)
        self.done: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            exists = self.path.exists() and self.path.stat().st_size > 0
            if exists and not resume:
                raise OutputError(f"{self.path}: already holds results; pass --resume to continue it, "
                                  f"or remove it")
            if exists:
                self._resume()
            self.file = open(self.path, "a", encoding="utf-8", newline="")
            if self.format != "jsonl" and self.file.tell() == 0:
                self._write_row(self.columns)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write the output ({error.strerror or error})") from None

    def _write_row(self, fields: list) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter="," if self.format == "csv" else "\t", lineterminator="\n").writerow(fields)
        self.file.write(buffer.getvalue())

    def _parse(self, line: str, number: int) -> tuple[str, bool]:
        """``(id, failed)`` of one complete line of the file (``("", False)`` for the header)."""
        where = f"{self.path}:{number}"
        if self.format == "jsonl":
            try:
                row = json.loads(line)
                return str(row["id"]), bool(row.get("error"))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise OutputError(f"{where}: not a result line of mmseq; cannot resume this file") from None
        fields = next(csv.reader([line], delimiter="," if self.format == "csv" else "\t"))
        if number == 1:
            if fields != self.columns:
                raise OutputError(f"{where}: written with the columns {fields}, this job writes {self.columns} "
                                  f"(another --nbest?); use the same options or another file")
            return "", False
        if len(fields) != len(self.columns):
            raise OutputError(f"{where}: {len(fields)} fields, expected {len(self.columns)}; cannot resume this file")
        return fields[0], bool(fields[-1])

    def _resume(self) -> None:
        """Read the ids already done; rewrite the file without a cut last line and failed lines."""
        kept, dropped = [], 0
        with open(self.path, encoding="utf-8", errors="replace", newline="") as lines:
            for number, line in enumerate(lines, 1):
                if not line.endswith("\n"):  # cut by a kill: that input is done again
                    print(f"mmseq: {self.path}:{number}: dropped an unfinished last line; its input is redone",
                          file=sys.stderr)
                    dropped += 1
                    continue
                key, failed = self._parse(line.rstrip("\n"), number)
                if failed:
                    dropped += 1
                    continue
                if key:
                    self.done.add(key)
                kept.append(number)
        if not dropped:
            return
        keep = set(kept)  # line numbers only; the lines are streamed again into the new file
        tmp = self.path.with_name(f".{self.path.name}.resume-tmp")
        with open(self.path, encoding="utf-8", errors="replace", newline="") as lines, \
                open(tmp, "w", encoding="utf-8", newline="") as out:
            for number, line in enumerate(lines, 1):
                if number in keep:
                    out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def write(self, item: Item, text: str | None = None, nbest: list[tuple[str, float | None]] | None = None,
              error: Exception | None = None) -> None:
        """One input's result (``text`` and, with n-best, ``[(text, score), ...]`` best first) or
        its ``error``; written as one line and flushed."""
        path = item.source if self.paths else None
        message = _one_line(error) if error is not None else ""
        if self.format == "jsonl":
            row = {"id": item.id}
            if path is not None and path != item.id:
                row["path"] = path
            row["text"] = None if error is not None else text
            if self.nbest and error is None:
                row["nbest"] = [{"text": t, "score": s} for t, s in (nbest or [(text, None)])]
            if error is not None:
                row["error"] = message
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            fields = [item.id] + ([path] if self.paths else [])
            if error is not None:
                fields += [""] * (len(self.columns) - len(fields) - 1)
            else:
                fields.append(_one_line(text))
                if self.nbest:
                    hyps = list(nbest or [(text, None)])[: self.nbest]
                    fields.append("" if hyps[0][1] is None else f"{hyps[0][1]:.4f}")
                    for t, s in hyps[1:]:
                        fields += [_one_line(t), "" if s is None else f"{s:.4f}"]
                    fields += [""] * (len(self.columns) - len(fields) - 1)
            self._write_row(fields + [message])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results file (JSONL, CSV or TSV) as dicts; for reading results back in scripts
    and tests."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as lines:
        if path.suffix.lower() in (".jsonl", ".json"):
            return [json.loads(line) for line in lines if line.strip()]
        return list(csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


# -- decoding -----------------------------------------------------------------------------------------
class _Texts(str):
    """The best text, carrying the n-best list ``[(text, score), ...]`` through
    :func:`mmseq.inference.run.iter_decode` (which passes texts on untouched; only the several
    windows of a long recording are joined into a plain ``str``, which then has no n-best)."""
    nbest: list[tuple[str, float]]


class _NBestModel:
    """A model whose ``decode_texts`` keeps the scored n-best list of each input."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def decode_texts(self, batch: dict, **options) -> list[str]:
        texts = []
        for hyps in self._model.generate(batch, **options):
            scored = [(self._model.tokenizer.decode(h.output), float(h.score)) for h in hyps] or [("", None)]
            text = _Texts(scored[0][0])
            text.nbest = scored
            texts.append(text)
        return texts


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def line(self, output: str | None = None) -> str:
        """``mmseq: 998 done, 2 failed, 1000 skipped (already in OUT), 41.3 s, 24.2 inputs/s``: the
        seconds are those of decoding (model loading excluded); skipped only when some were."""
        rate = (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0
        skipped = f", {self.skipped} skipped (already in {output})" if self.skipped else ""
        return (f"mmseq: {self.done} done, {self.failed} failed{skipped}, {self.seconds:.1f} s, "
                f"{rate:.1f} inputs/s")


def run_batch(model, inputs: Inputs, write, task: str | None = None, batch_size: int = 16,
              skip: set[str] | frozenset = frozenset(), progress: bool = False, nbest: int | None = None,
              **options) -> Summary:
    """Decode every input of ``inputs`` not in ``skip`` (ids) and call
    ``write(item, text, nbest, error)`` for each in input order, as results come (a chunk of
    :func:`mmseq.inference.run.iter_decode` at a time). An empty line of text gives an empty text.

    ``nbest``: keep the N best hypotheses with their scores (the beam is widened to N when
    narrower). ``progress``: a tqdm bar with ETA on stderr (its total counted from ``inputs``
    unless they read standard input). ``options`` go to ``iter_decode``.
    """
    from tqdm import tqdm

    from .run import iter_decode

    if nbest:
        beam = options.get("beam_size") or model.decoding.beam_size
        options.update(nbest=nbest, beam_size=max(beam, nbest))
        model = _NBestModel(model)
    total = inputs.count() if progress else None
    bar = tqdm(total=total, initial=min(len(skip), total or 0) if total else 0, unit="input", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    summary = Summary()
    # Results are passed on in input order: an unreadable input fails at once, before the chunk
    # around it is decoded, so it waits (at most a chunk) in ``ready`` for the ones before it.
    numbers: dict[int, int] = {}  # iter_decode's index -> the input's number in this job
    items: dict[int, Item] = {}  # inputs given to iter_decode whose result has not come yet
    ready: dict[int, tuple] = {}
    counter = {"next": 0, "given": 0}
    start = time.perf_counter()

    def finish(number: int, item: Item, text=None, hyps=None, error=None) -> None:
        ready[number] = (item, text, hyps, error)
        while counter["next"] in ready:
            item, text, hyps, error = ready.pop(counter["next"])
            counter["next"] += 1
            if error is not None:
                summary.failed += 1
                bar.write(f"mmseq: error: {_one_line(error)}", file=sys.stderr)
            else:
                summary.done += 1
            write(item, text, hyps, error)
            bar.update()

    def sources() -> Iterator[str]:
        index = 0
        for item in inputs:
            if item.id in skip:
                summary.skipped += 1
                continue
            number = counter["given"]
            counter["given"] += 1
            if item.error is not None:
                finish(number, item, error=item.error)
            elif inputs.task == "text" and not item.source.strip():  # an empty line: an empty output line
                finish(number, item, "", [("", None)])
            else:
                numbers[index] = number
                items[number] = item
                index += 1
                yield item.source

    # A manifest line's own prompt and context, else the job's (--prompt, --context).
    prompt, context = options.pop("prompt", None), options.pop("context", None)

    def own(field: str, default):
        def of(index: int):
            value = getattr(items[numbers[index]], field)
            return default if value is None else value
        return of

    try:
        for index, result in iter_decode(model, sources(), batch_size, task=task, prompt=own("prompt", prompt),
                                         context=own("context", context), **options):
            number = numbers.pop(index)
            item = items.pop(number)
            if isinstance(result, InputError):
                finish(number, item, error=result)
            else:
                finish(number, item, str(result), getattr(result, "nbest", None))
    finally:
        summary.seconds = time.perf_counter() - start
        bar.close()
    return summary


class _Terminal:
    """Results to stdout as the commands always printed them: ``ID<TAB>TEXT``, or just the text
    (``bare``: one file, or text lines); with n-best, ``ID<TAB>SCORE<TAB>TEXT`` per hypothesis.
    ``lines``: an empty line for a failed input (one output line per input line, for translate).
    ``ordered``: printed in input order at the end instead of as they come."""

    def __init__(self, bare: bool, lines: bool, ordered: bool, nbest: int | None):
        self.bare, self.lines, self.ordered, self.nbest, self.held = bare, lines, ordered, nbest, []

    def __call__(self, item: Item, text, nbest, error) -> None:
        if error is not None:
            out = [""] if self.lines else []
        elif self.nbest:
            out = [f"{escape(item.id)}\t{'' if s is None else f'{s:.4f}'}\t{t}" for t, s in (nbest or [(text, None)])]
        else:
            out = [text if self.bare else f"{escape(item.id)}\t{text}"]
        if self.ordered:
            self.held.extend(out)
        else:
            for line in out:
                print(line, flush=True)

    def close(self) -> None:
        for line in self.held:
            print(line)


def add_arguments(parser, task: str) -> None:
    """The batch options of ``transcribe`` / ``caption`` / ``translate``."""
    noun = "text lines" if task == "text" else "results"
    parser.add_argument("--output", "-o", metavar="FILE",
                        help=f"write {noun} to FILE as they come: .jsonl, .csv or .tsv (default: print them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue --output FILE: skip inputs already there (failed ones are tried again)")
    parser.add_argument("--nbest", type=int, metavar="N", help="also write the N best hypotheses with their scores")
    parser.add_argument("--progress", action=__import__("argparse").BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


def command(args, load_model, options: dict, task: str) -> int:
    """``mmseq transcribe | caption | translate``: expand the inputs, decode, write, summarise.
    Exit status 1 when any input failed (each failure is a line of the output with its error and
    a one-line message on stderr)."""
    if args.resume and not args.output:
        raise OutputError("--resume needs --output FILE")
    if args.nbest is not None and args.nbest < 1:
        raise OutputError(f"--nbest must be at least 1, got {args.nbest}")
    inputs = Inputs(args.inputs, task, sys.stdin)
    if args.output:
        writer = ResultWriter(args.output, args.nbest, paths=task != "text", resume=args.resume)
    else:
        plain_file = len(args.inputs) == 1 and args.inputs[0] != "-" and os.path.isfile(args.inputs[0]) \
            and not args.inputs[0].lower().endswith(MANIFEST_SUFFIXES)
        writer = _Terminal(bare=task == "text" or plain_file, lines=task == "text",
                           ordered=getattr(args, "ordered", False), nbest=args.nbest)
    try:
        model = load_model(args)
        options = with_lm(options, model)
        # The route: --task, or the model's only route of this command's kind.
        name = model.route(getattr(args, "task", None), task).name
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        summary = run_batch(model, inputs, writer.write if args.output else writer, task=name,
                            batch_size=args.batch_size, skip=writer.done if args.output else frozenset(),
                            progress=progress, nbest=args.nbest, prompt=args.prompt, **options)
    finally:
        writer.close()
    print(summary.line(args.output), file=sys.stderr)
    if getattr(args, "attention", None):
        from ..plots import plot_attention
        first = next(iter(inputs), None)
        if first is not None and first.error is None:
            plot_attention(model, first.source, args.attention, prompt=args.prompt, task=name)
            print(f"attention plot: {args.attention}", file=sys.stderr)
    return 1 if summary.failed else 0
