"""Where results go: a JSONL, CSV or TSV file (:class:`ResultWriter`, resumable), the terminal
(:class:`TerminalWriter`), and SRT / WebVTT / JSON renderings of timed transcripts.

A results file is chosen by its extension, one line per input, written and flushed as results
come, so a killed job keeps every result it printed; ``resume`` drops a last line cut by the kill
and skips every input already there. Failed inputs get a line with their ``error`` too; a resumed
job tries them again.

Every writer is called as ``write(item, result)``: an :class:`~mmseq.inference.sources.Item` and
its :class:`~mmseq.inference.run.Result`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ..data.files import escape
from ..errors import MmseqError
from .timestamps import Segment, TimedTranscript


class OutputError(MmseqError):
    """An output file that cannot be written or resumed: ``path[:line]: reason``."""


def columns(nbest: int | None, paths: bool, segments: bool = False) -> list[str]:
    """CSV/TSV header: ``id``, ``path`` (file inputs), ``text``; with n-best, ``score`` and then
    ``text_K``, ``score_K`` for K = 2..N (one row per input, the best first); with ``segments``
    (timestamps) a ``segments`` column of JSON; ``error`` last."""
    names = ["id"] + (["path"] if paths else []) + ["text"]
    if nbest:
        names.append("score")
        for k in range(2, nbest + 1):
            names += [f"text_{k}", f"score_{k}"]
    return names + (["segments"] if segments else []) + ["error"]


def one_line(text: str) -> str:
    """A field that keeps one result on one line of the file (so a cut line is only ever the last)."""
    return " ".join(str(text).splitlines()).replace("\t", " ")


class ResultWriter:
    """Results of a batch job into ``path``: JSONL (``.jsonl``/``.json``), CSV (``.csv``) or TSV
    (``.tsv``), one line per input, flushed after each.

    JSONL lines: ``{"id", "path"?, "text", "nbest"?: [{"text", "score"}, ...], "segments"?: [...]}``
    or ``{"id", "path"?, "text": null, "error": "..."}``. CSV/TSV: the :func:`columns` header (with
    ``segments``, a column of the segments as JSON). ``segments``: each line carries the input's
    timed segments and their words (``--timestamps``).

    ``resume``: keep the results already in the file and set :attr:`done` to their ids; a last
    line without its newline (a job killed while writing it) and the lines of failed inputs are
    dropped, so those inputs are done again and every input ends up in the file exactly once.
    Without ``resume`` a file that already holds results is an error (nothing is overwritten).
    The file is opened here, before any work, so an unwritable output fails at once.
    """

    def __init__(self, path: str | os.PathLike, nbest: int | None = None, paths: bool = True,
                 resume: bool = False, segments: bool = False):
        self.path, self.nbest, self.paths, self.segments = Path(path), nbest, paths, segments
        suffix = self.path.suffix.lower()
        formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
        if suffix not in formats:
            raise OutputError(f"{self.path}: unknown output format {suffix or '(no extension)'!r}; "
                              f"use .jsonl, .csv or .tsv")
        self.format = formats[suffix]
        self.columns = columns(nbest, paths, segments)
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

    def write(self, item, result) -> None:
        """One input's result (its text, n-best list and segments) or its error, as one line; flushed."""
        path = item.source if self.paths else None
        if self.format == "jsonl":
            self.file.write(json.dumps(self._record(item.id, path, result), ensure_ascii=False) + "\n")
        else:
            self._write_row(self._fields(item.id, path, result))
        self.file.flush()

    def _record(self, key: str, path: str | None, result) -> dict:
        row = {"id": key}
        if path is not None and path != key:
            row["path"] = path
        if result.error is not None:
            return {**row, "text": None, "error": one_line(result.error)}
        row["text"] = result.text
        if self.nbest:
            row["nbest"] = [{"text": t, "score": s} for t, s in (result.nbest or [(result.text, None)])]
        if self.segments:
            row["segments"] = [asdict(s) for s in result.segments or []]
        return row

    def _fields(self, key: str, path: str | None, result) -> list[str]:
        fields = [key] + ([path] if self.paths else [])
        if result.error is not None:
            return fields + [""] * (len(self.columns) - len(fields) - 1) + [one_line(result.error)]
        fields.append(one_line(result.text))
        if self.nbest:
            hyps = list(result.nbest or [(result.text, None)])[: self.nbest]
            fields.append(_score(hyps[0][1]))
            for text, score in hyps[1:]:
                fields += [one_line(text), _score(score)]
            fields += [""] * (len(self.columns) - len(fields) - 1 - self.segments)
        if self.segments:
            fields.append(json.dumps([asdict(s) for s in result.segments or []], ensure_ascii=False))
        return fields + [""]

    def close(self) -> None:
        self.file.close()


def _score(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"


class TerminalWriter:
    """Results to stdout as the commands always printed them: ``ID<TAB>TEXT``, or just the text
    (``bare``: one file, or text lines); with n-best, ``ID<TAB>SCORE<TAB>TEXT`` per hypothesis;
    with ``timestamps="json"`` one JSON line per input (:func:`to_json`), with "srt" or "vtt" the
    subtitles (``bare``) or a subtitle file beside each input (its path on stderr).
    ``lines``: an empty line for a failed input (one output line per input line, for translate).
    ``ordered``: printed in input order at the end instead of as they come."""

    def __init__(self, bare: bool, lines: bool, ordered: bool, nbest: int | None, timestamps: str | None = None):
        self.bare, self.lines, self.ordered, self.nbest = bare, lines, ordered, nbest
        self.timestamps, self.held = timestamps, []
        self.done: frozenset = frozenset()  # nothing to resume

    def __call__(self, item, result) -> None:
        if result.error is not None:
            out = [""] if self.lines else []
        elif self.timestamps == "json":
            out = [to_json(result.transcript(), item.source)]
        elif self.timestamps and self.bare:
            subtitles = render(result.transcript(), self.timestamps)
            out = [subtitles[:-1]] if subtitles else []  # print adds the last newline back
        elif self.timestamps:
            print(f"{item.source}: {write_subtitles(item.source, result, self.timestamps)}", file=sys.stderr)
            out = []
        elif self.nbest:
            out = [f"{escape(item.id)}\t{_score(s)}\t{t}" for t, s in (result.nbest or [(result.text, None)])]
        else:
            out = [result.text if self.bare else f"{escape(item.id)}\t{result.text}"]
        if self.ordered:
            self.held.extend(out)
        else:
            for line in out:
                print(line, flush=True)

    def close(self) -> None:
        for line in self.held:
            print(line)


# -- timed transcripts ---------------------------------------------------------------------------------
def _clock(seconds: float, separator: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[Segment]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                   for i, s in enumerate(segments, 1))


def to_vtt(segments: list[Segment]) -> str:
    """WebVTT: a ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n"
                                  for s in segments)


def to_json(transcript: TimedTranscript, source=None) -> str:
    """One JSON line: ``{"audio", "text", "segments": [{"text", "start", "end", "words": [...]}]}``."""
    record = {"audio": str(source)} if source is not None else {}
    return json.dumps({**record, **transcript.to_dict()}, ensure_ascii=False)


SUBTITLES = {"srt": to_srt, "vtt": to_vtt}


def render(transcript: TimedTranscript, fmt: str, source=None) -> str:
    """``transcript`` as ``fmt``: "json", "srt" or "vtt"."""
    if fmt == "json":
        return to_json(transcript, source) + "\n"
    return SUBTITLES[fmt](transcript.segments)


def write_subtitles(source: str, result, fmt: str) -> Path:
    """Write ``result``'s segments as ``fmt`` ("srt" or "vtt") beside the audio ``source``
    (``talk.wav`` -> ``talk.srt``); returns that path."""
    path = Path(source).with_suffix(f".{fmt}")
    try:
        path.write_text(render(result.transcript(), fmt), encoding="utf-8")
    except OSError as error:
        raise OutputError(f"{path}: cannot write the subtitles ({error.strerror or error})") from None
    return path
