"""Lhotse CutSet manifests (``cuts.jsonl.gz``, as NeMo, icefall and Lhotse's corpus recipes write
them) read as mmseq examples, so any corpus Lhotse prepares trains and evaluates mmseq models:

    mmseq train config.yaml data.train=data/cuts_train.jsonl.gz data.valid=data/cuts_dev.jsonl.gz
    mmseq eval exp/run/best data/cuts_test.jsonl.gz

One cut line becomes one example::

    {"id": cut id, "audio": AudioSpan(file, offset=cut start, duration=cut duration, channels=[...]),
     "text": the texts of its supervisions in time order, joined by spaces, "duration": cut duration}

The lines are read as JSON here, without importing ``lhotse`` (needed only to make CutSets), and
only what can be read without running anything is accepted: a ``MonoCut`` or ``MultiCut`` whose
recording's sources are files. Cuts of other kinds (``MixedCut``, ``PaddingCut``), sources of type
``url``, ``command`` (a shell command Lhotse would run), ``memory`` or ``shar``, and recording
transforms other than resampling (mmseq resamples to its encoder's rate itself) are refused with
the manifest's file and line. Relative paths are taken from the manifest's folder when the file is
there, else from the working folder (Lhotse's own rule). Texts are kept as written (LibriSpeech's
are upper case; ``recipes/librispeech/prepare.py`` lowercases its own manifests).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ManifestError
from .audio import AudioSpan

CUT_TYPES = ("MonoCut", "MultiCut", "MixedCut", "PaddingCut", "DataCut")
READABLE_TYPES = ("MonoCut", "MultiCut")


def is_cut(line: dict) -> bool:
    """Whether a manifest line is a Lhotse cut (and not an mmseq example)."""
    return line.get("type") in CUT_TYPES or ("recording" in line and "supervisions" in line)


def cut_to_example(cut: dict, path, number: int, folder: Path) -> dict:
    """One cut (a line of a CutSet manifest, as a dict) to an mmseq example; :class:`ManifestError`
    naming ``path:number`` when mmseq cannot read it."""
    def fail(reason: str):
        return ManifestError(path, number, f"Lhotse cut {cut.get('id', '?')!r}: {reason}")

    kind = cut.get("type", "MonoCut")
    if kind not in READABLE_TYPES:
        raise fail(f"type {kind!r} is not supported (only MonoCut and MultiCut: a span of one recording)")
    recording = cut.get("recording")
    if not isinstance(recording, dict) or not isinstance(recording.get("sources"), list):
        raise fail("no recording with sources (mmseq reads cuts of audio recordings)")
    transforms = [t.get("name", "?") if isinstance(t, dict) else "?" for t in recording.get("transforms") or []]
    unsupported = [name for name in transforms if name != "Resample"]
    if unsupported:
        raise fail(f"recording transforms {unsupported} are not supported (only Resample)")
    start, duration = cut.get("start", 0.0), cut.get("duration")
    if not _seconds(start) or not _seconds(duration) or duration <= 0:
        raise fail(f"start {start!r} and duration {duration!r} must be numbers of seconds (duration > 0)")
    wanted = cut.get("channel", 0)
    wanted = wanted if isinstance(wanted, list) else [wanted]
    source = _source_with(recording["sources"], wanted)
    if source is None:
        raise fail(f"no single file source holds channel(s) {wanted}")
    if source.get("type") != "file":
        raise fail(f"audio source type {source.get('type')!r} is not supported (only 'file')")
    audio = source.get("source")
    if not isinstance(audio, str) or not audio:
        raise fail("its audio source names no file")
    if not os.path.isabs(audio):
        audio = str(folder / audio) if (folder / audio).exists() else os.path.abspath(audio)
    channels = [source["channels"].index(channel) for channel in wanted]
    supervisions = [s for s in cut.get("supervisions") or [] if isinstance(s, dict)]
    texts = [s["text"].strip() for s in sorted(supervisions, key=lambda s: s.get("start", 0.0))
             if isinstance(s.get("text"), str) and s["text"].strip()]
    if not texts:
        raise fail("no supervision with text")
    example = {"id": str(cut.get("id", f"{Path(path).stem}-{number}")), "text": " ".join(texts),
               "audio": AudioSpan(audio, offset=start, duration=duration,
                                  channels=None if len(source["channels"]) == len(channels) == 1 else channels),
               "duration": float(duration)}
    return example


def _seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _source_with(sources: list, channels: list) -> dict | None:
    """The source whose channels hold every one of ``channels`` (Lhotse keeps one source per file)."""
    for source in sources:
        if isinstance(source, dict) and isinstance(source.get("channels"), list) \
                and all(channel in source["channels"] for channel in channels):
            return source
    return None
