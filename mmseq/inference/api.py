"""The Python API bound to the model: ``model.transcribe``, ``model.caption`` and
``model.translate`` decode many inputs (files, folders' files, waveforms, images, texts) in
length-sorted batches and return their texts in input order."""

from __future__ import annotations

from .run import decode_sources


def _run(model, sources, batch_size: int, kind: str, task: str | None = None, **options) -> list:
    """Decode many inputs by route ``task`` (default: the model's only route of ``kind``). Every
    readable input is decoded; then a bad one raises :class:`mmseq.inference.run.UnreadableInputsError`
    (its ``.results`` keep the others), or with ``errors="report"`` its error takes its place. See
    :func:`mmseq.inference.run.decode_sources`."""
    return decode_sources(model, sources, batch_size=batch_size, task=model.route(task, kind).name, **options)


def transcribe(model, audio, batch_size: int = 16, task: str | None = None, timestamps: bool = False,
               method: str = "auto", **options) -> list:
    """Transcripts of audio files, waveforms (at the encoder's sample rate) or both; ``task``
    picks the route of a model with several speech routes. With ``timestamps=True``:
    :class:`mmseq.inference.timestamps.TimedTranscript` objects (``.text``, ``.segments``, ``.words``
    with start and end seconds and a confidence), the words placed by ``method`` ("auto", "ctc"
    or "attention"; ``refine=False`` keeps the model's own boundaries). Long audio: ``window``,
    ``longform`` (see :func:`mmseq.inference.run.iter_results`)."""
    return _run(model, audio, batch_size, "asr", task, timestamps=method if timestamps else None, **options)


def caption(model, images, batch_size: int = 16, task: str | None = None, **options) -> list[str]:
    """Captions of image files, PIL images or both."""
    return _run(model, images, batch_size, "caption", task, **options)


def translate(model, texts, batch_size: int = 16, task: str | None = None, **options) -> list[str]:
    """Target texts of source texts (text-to-text routes)."""
    return _run(model, texts, batch_size, "text", task, **options)
