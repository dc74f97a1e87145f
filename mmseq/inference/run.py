"""The run loop: ``model.transcribe`` / ``caption`` / ``translate`` and the batch commands decode
many inputs through :func:`iter_results`, which yields one :class:`Result` per input.

Inputs are loaded in chunks (bounded memory), batched by length, and their results come in input
order; an unreadable input gets a result with its error without losing the others. Recordings
longer than a window are split at pauses and their windows decoded in the same batches (see
:mod:`mmseq.inference.longform`). With ``nbest`` each result keeps the scored n-best list; with
``timestamps`` its words are placed in time (:mod:`mmseq.inference.timestamps`), window by window.
:func:`run_job` drives the loop over the :class:`~mmseq.inference.sources.Inputs` of a batch command.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import torch

from ..errors import ConfigError, InputError
from .longform import LongformOptions, Window, continuation_prompt, decode_windows, fit_window, join_texts, split_audio
from .sources import NOT_INPUTS, Inputs, Item, one_input
from .timestamps import Segment, TimedTranscript, Word, align, check_method, segments_of
from .writers import one_line

# Audio whose peak stays within 2 steps of 16-bit audio is digital silence: it gets an empty text
# without decoding (a model asked to transcribe ten minutes of zeros invented about sixty words).
SILENCE_PEAK = 2 / 32768


@dataclass
class Result:
    """What the run loop gives for one input: its ``index`` among the sources, its ``text`` (a long
    recording's windows joined), the scored n-best list ``[(text, score), ...]`` best first (with
    ``nbest``; for an input decoded in one window), its timed ``segments`` (with ``timestamps``), or
    the ``error`` of an input that could not be read (then ``text`` is None)."""
    index: int
    text: str | None = None
    nbest: list[tuple[str, float | None]] | None = None
    segments: list[Segment] | None = None
    error: InputError | None = None

    def transcript(self) -> TimedTranscript:
        """The text and segments as a :class:`TimedTranscript` (``.words`` with their times)."""
        return TimedTranscript(self.text or "", self.segments or [])


@dataclass
class Decoded:
    """One window decoded with its hypotheses: the best ``text``, the scored ``nbest`` list and,
    when timed, its ``words`` (seconds from the window's start)."""
    text: str
    nbest: list[tuple[str, float | None]]
    words: list[Word] | None = None


def _is_silent(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 1 and x.numel() > 0 and float(x.abs().max()) <= SILENCE_PEAK


def _length(x: torch.Tensor) -> int:
    return x.shape[-1] if x.dim() == 1 else 0


def decode_batched(model, inputs: list[torch.Tensor], prompts: list, batch_size: int = 16, task=None,
                   contexts: list | None = None, hypotheses: bool = False, boosts: list | None = None,
                   **options) -> list:
    """Texts of loaded inputs, in their order (``hypotheses``: each input's hypotheses from
    ``model.generate`` instead). Inputs with the same prompt and similar lengths share a batch
    (``batch_size`` inputs at most), each with its own context and words to boost (``contexts``,
    ``boosts``: one per input, or None); ``options`` go to ``model.decode_texts`` / ``generate``. ``task``: the :class:`Task` the
    inputs belong to (default: the model's)."""
    task = task or model.route().task
    decode = model.generate if hypotheses else model.decode_texts
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    outputs: list = [""] * len(inputs)
    for members in groups.values():
        members.sort(key=lambda i: _length(inputs[i]))
        for start in range(0, len(members), batch_size):
            part = members[start:start + batch_size]
            batch_inputs, lengths = task.collate_inputs([inputs[i] for i in part])
            context = None if contexts is None else [contexts[i] for i in part]
            boost = None if boosts is None else [[boosts[i]] if isinstance(boosts[i], str) else boosts[i] for i in part]
            decoded = decode({"inputs": batch_inputs, "lengths": lengths, "task": task.name},
                             prompt=prompts[part[0]], context=context, boost=boost, **options)
            for i, output in zip(part, decoded):
                outputs[i] = output
    return outputs


class WindowDecoder:
    """How the run loop decodes windows and joins them into a :class:`Result`: plain texts
    (``model.decode_texts``), or with ``nbest`` or ``timestamps`` (an alignment method, see
    :func:`~mmseq.inference.timestamps.check_method`) each window's hypotheses, and its words."""

    def __init__(self, model, task, batch_size: int, nbest: int | None = None, timestamps: str | None = None,
                 refine: bool = True, **options):
        if nbest:  # the beam is widened to N when narrower
            beam = options.get("beam_size") or model.decoding.beam_size
            options.update(nbest=nbest, beam_size=max(beam, nbest))
        self.model, self.task, self.batch_size, self.options = model, task, batch_size, options
        self.method = check_method(model, timestamps, task) if timestamps else None
        self.hypotheses, self.refine = bool(nbest or timestamps), refine

    def __call__(self, pieces: list, prompts: list, contexts: list, boosts: list | None = None) -> list:
        """``decode(pieces, prompts, contexts, boosts)`` of :func:`~mmseq.inference.longform.decode_windows`."""
        found = decode_batched(self.model, pieces, prompts, self.batch_size, self.task, contexts, self.hypotheses,
                               boosts, **self.options)
        if not self.hypotheses:
            return found
        decoded = []
        for piece, context, hyps in zip(pieces, contexts, found):
            scored = [(self.model.tokenizer.decode(h.output), float(h.score)) for h in hyps] or [("", None)]
            words = None
            if self.method:
                words = align(self.model, piece, hyps[0], self.method, self.task, self.task.context_ids(context),
                              self.refine) if hyps else []
            decoded.append(Decoded(scored[0][0], scored, words))
        return decoded

    def join(self, outputs: list, windows: list[Window]) -> Result:
        """One recording's result from its windows' outputs (its ``index`` is set by the loop)."""
        if not self.hypotheses:
            return Result(-1, join_texts(outputs, windows))
        text = join_texts([output.text for output in outputs], windows)
        nbest = outputs[0].nbest if len(outputs) == 1 else None
        if not self.method:
            return Result(-1, text, nbest)
        words: list[Word] = []
        for window, output in zip(windows, outputs):
            offset = window.start / self.task.encoder.sample_rate
            found = [Word(w.text, round(w.start + offset, 3), round(w.end + offset, 3), round(w.confidence, 4))
                     for w in output.words]
            if window.joins_previous == "overlap" and words:  # cut inside speech: keep the words once
                found = [w for w in found if w.start >= words[-1].end]
            words.extend(found)
        return Result(-1, " ".join(w.text for w in words), nbest, segments_of(words))


def iter_results(model, sources: Iterable, batch_size: int = 16, chunk_size: int = 256, prompt=None, context=None,
                 boost=None,
                 window: float = 30.0, split: str = "energy", segment_pause: float | None = None,
                 longform: LongformOptions | None = None, task: str | None = None, previous_text: bool = False,
                 nbest: int | None = None, timestamps: str | None = None, refine: bool = True,
                 **options) -> Iterator[Result]:
    """Yield a :class:`Result` for each source, in input order within a chunk (a source that
    cannot be read yields its error at once). At most about ``chunk_size`` inputs (or windows) are
    held in memory at once; within a chunk, inputs of similar length share a batch.

    Audio longer than ``window`` seconds is split at pauses found by ``split`` ("energy" or "ctc"),
    and also at every pause of ``segment_pause`` seconds or more when given (one sentence per window,
    for models trained on single sentences); its windows are decoded with the others and their
    texts joined. ``longform`` gives every long-audio setting at once (it overrides those three).
    ``task`` names the task of a multitask model ("asr", "caption", "text"); a single-task model
    needs none.

    ``prompt`` and ``context`` (see :meth:`~mmseq.model.Seq2Seq.generate`): one value for every
    source, a list of one per source, or a function of the source's index; ``boost`` (words to
    favour, fused with ``boost_weight``) likewise: a list of strings for every source, a list of
    one list per source, or a function of the index. ``previous_text``: each
    later window of a long recording gets the text of the window before as its context.
    ``nbest``: keep the N best hypotheses with their scores. ``timestamps``: place the words in
    time by "auto", "ctc" or "attention" (``refine``: boundaries moved to the sound). ``options``
    go to ``model.decode_texts`` / ``generate``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        # 0 raised deep inside, -1 gave every input an empty text
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
    task = model.route(task).task
    longform = fit_window(longform or LongformOptions(window=window, split=split, segment_pause=segment_pause),
                          task.encoder)  # an encoder with a fixed window (Whisper's 30 s) caps it
    decoder = WindowDecoder(model, task, batch_size, nbest, timestamps, refine, **options)
    sources = [sources] if one_input(sources) else sources
    sources = list(sources) if any(isinstance(v, list) for v in (prompt, context, boost)) else sources
    prompt_of, context_of = _per_source(prompt, sources, "prompt"), _per_source(context, sources, "context")
    boost_of = _per_source(boost, sources, "boost")
    pending: list[tuple[int, torch.Tensor, list[Window]]] = []
    held = 0
    for index, source in enumerate(sources):
        x = _load(task, index, source)
        if isinstance(x, InputError):
            yield Result(index, error=x)
            continue
        pending.append((index, x, _plan(model, task, x, longform)))
        held += len(pending[-1][2])
        if held >= chunk_size:
            yield from _decode_chunk(model, decoder, pending, prompt_of, context_of, boost_of, previous_text)
            pending, held = [], 0
    yield from _decode_chunk(model, decoder, pending, prompt_of, context_of, boost_of, previous_text)


def _load(task, index: int, source):
    """The loaded input, or its :class:`InputError` (each bad input its own; the others go on)."""
    if isinstance(source, NOT_INPUTS):
        return InputError(f"input {index}: expected a file path, array, tensor or image, got {type(source).__name__}")
    try:
        return task.load_input(source)
    except InputError as error:
        return error
    except (TypeError, AttributeError) as error:  # an object the task cannot take
        return InputError(f"input {index}: cannot use a {type(source).__name__} as input ({error})")


def _plan(model, task, x, longform: LongformOptions) -> list[Window]:
    """The windows of a loaded input: none for digital silence (its text is empty), several for
    audio longer than the window, else the whole input."""
    sample_rate = getattr(task.encoder, "sample_rate", None)
    if sample_rate and _is_silent(x):
        return []
    if sample_rate and x.dim() == 1 and len(x) > longform.window * sample_rate:
        return split_audio(x, sample_rate, longform, model, task.name)
    return [Window(0, _length(x))]


def _decode_chunk(model, decoder: WindowDecoder, pending: list, prompt_of, context_of, boost_of,
                  previous_text: bool) -> Iterator[Result]:
    indices = [index for index, _, _ in pending]
    prompts = [prompt_of(i) for i in indices]
    results = decode_windows([x for _, x, _ in pending], [plan for _, _, plan in pending], prompts,
                             [continuation_prompt(model.tokenizer, p) for p in prompts], decoder,
                             [context_of(i) for i in indices], previous_text, decoder.join,
                             [boost_of(i) for i in indices])
    for index, result in zip(indices, results):
        yield replace(result, index=index)


def _per_source(value, sources, name: str):
    """``index -> value`` of a ``prompt=``, ``context=`` or ``boost=``: one value for every source
    (a string, ids, for a boost a list of strings), a list of one per source (each a string, ids,
    or for a context or a boost a list of words), or already a function of the source's index
    (batch jobs: a manifest line's own)."""
    if callable(value):
        return value
    one = str if name == "boost" else int  # what a list that is one value for every source holds
    if not isinstance(value, list) or (value and all(isinstance(v, one) for v in value)):
        return lambda index: value
    if len(value) != len(sources):
        raise InputError(f"{name}= holds {len(value)} values for {len(sources)} inputs: give one value "
                         "(a string), or a list of one per input")
    return lambda index: value[index]


# -- the Python API ----------------------------------------------------------------------------------
class UnreadableInputsError(InputError):
    """Some inputs of ``transcribe`` / ``caption`` / ``translate`` could not be read; raised once
    every other input was decoded, so nothing is lost.

    ``results``: one entry per input, in input order: its text, or the :class:`InputError` of an
    input that could not be read. ``errors``: ``{index: InputError}`` of the bad ones. The message
    is the bad input's own one-line error (naming its file), or, for several, all of them in one
    line.
    """

    def __init__(self, message: str, results: list, errors: dict[int, InputError]):
        super().__init__(message)
        self.results, self.errors = results, errors


def decode_sources(model, sources, batch_size: int = 16, errors: str = "raise", **options) -> list:
    """Texts for all sources, in input order (what ``model.transcribe`` / ``caption`` /
    ``translate`` return); with ``timestamps``, :class:`TimedTranscript` objects. Every readable
    input is decoded, whatever the others hold. ``options`` go to :func:`iter_results`.

    ``errors`` says what an unreadable input (a missing, empty or corrupt file, a NaN waveform)
    does:

    - ``"raise"`` (default): the list holds only results, as when every input reads; if some
      cannot be read, an :class:`UnreadableInputsError` (an :class:`InputError`) naming them is
      raised after the others were decoded, and its ``.results`` holds every text.
    - ``"report"``: no exception; the list holds, in a bad input's place, its :class:`InputError`
      (like ``asyncio.gather(..., return_exceptions=True)``).

    >>> texts = model.transcribe(["a.wav", "broken.wav", "c.wav"], errors="report")
    >>> [t if isinstance(t, str) else f"failed: {t}" for t in texts]  # doctest: +SKIP
    ['red cat', 'failed: broken.wav: cannot read audio (...)', 'blue dog']
    """
    if errors not in ("raise", "report"):
        raise ValueError(f"errors={errors!r}: must be 'raise' or 'report'")
    sources = [sources] if one_input(sources) else list(sources)  # a path is one input, not letters
    timed = options.get("timestamps") is not None
    results: list = [None] * len(sources)
    failed: dict[int, InputError] = {}
    for result in iter_results(model, sources, batch_size, **options):
        if result.error is not None:
            results[result.index] = failed[result.index] = result.error
        else:
            results[result.index] = result.transcript() if timed else result.text
    if failed and errors == "raise":
        bad = [failed[index] for index in sorted(failed)]
        message = str(bad[0]) if len(bad) == 1 else (
            f"{len(bad)} of {len(sources)} inputs cannot be read: " + "; ".join(map(str, bad[:5]))
            + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""))
        if len(bad) < len(sources):
            message += " (the other inputs' texts are in this error's .results)"
        raise UnreadableInputsError(message, results, failed)
    return results


# -- batch jobs ----------------------------------------------------------------------------------------
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


class _Job:
    """The bookkeeping of :func:`run_job`: numbers the inputs it does, and hands their results to
    ``write`` in input order. An unreadable input fails at once, before the chunk around it is
    decoded, so it waits (at most a chunk) in ``ready`` for the ones before it."""

    def __init__(self, inputs: Inputs, write, skip, bar):
        self.inputs, self.write, self.skip, self.bar = inputs, write, skip, bar
        self.summary = Summary()
        self.given: dict[int, tuple[int, Item]] = {}  # iter_results' index -> (number in the job, item)
        self.ready: dict[int, tuple[Item, Result]] = {}
        self.numbered = self.indexed = self.next = 0  # inputs numbered, given to iter_results, written

    def sources(self) -> Iterator[str]:
        """The sources to decode: inputs not skipped, not failed already, not empty lines of text."""
        for item in self.inputs:
            if item.id in self.skip:
                self.summary.skipped += 1
                continue
            number, self.numbered = self.numbered, self.numbered + 1
            if item.error is not None:
                self.finish(number, item, Result(number, error=item.error))
            elif self.inputs.task == "text" and not item.source.strip():  # an empty line: an empty output line
                self.finish(number, item, Result(number, "", [("", None)]))
            else:
                self.given[self.indexed] = (number, item)
                self.indexed += 1
                yield item.source

    def own(self, field: str, default):
        """``index -> value`` of a manifest line's own ``prompt``, ``context`` or ``boost``, else ``default``."""
        def of(index: int):
            value = getattr(self.given[index][1], field)
            return default if value is None else value
        return of

    def take(self, result: Result) -> None:
        number, item = self.given.pop(result.index)
        self.finish(number, item, replace(result, index=number))

    def finish(self, number: int, item: Item, result: Result) -> None:
        self.ready[number] = (item, result)
        while self.next in self.ready:
            item, result = self.ready.pop(self.next)
            self.next += 1
            if result.error is not None:
                self.summary.failed += 1
                self.bar.write(f"mmseq: error: {one_line(result.error)}", file=sys.stderr)
            else:
                self.summary.done += 1
            self.write(item, result)
            self.bar.update()


def run_job(model, inputs: Inputs, write, task: str | None = None, batch_size: int = 16,
            skip: set[str] | frozenset = frozenset(), progress: bool = False, prompt=None, context=None,
            boost=None, **options) -> Summary:
    """Decode every input of ``inputs`` not in ``skip`` (ids) and call ``write(item, result)``
    for each in input order, as results come (a chunk of :func:`iter_results` at a time). An
    empty line of text gives an empty text. A manifest line's own prompt, context and boost take
    the place of ``prompt``, ``context`` and ``boost``. ``progress``: a tqdm bar with ETA on stderr (its total
    counted from ``inputs`` unless they read standard input). ``options`` go to ``iter_results``
    (``nbest``, ``timestamps``, ...)."""
    from tqdm import tqdm

    total = inputs.count() if progress else None
    bar = tqdm(total=total, initial=min(len(skip), total or 0) if total else 0, unit="input", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    job = _Job(inputs, write, skip, bar)
    start = time.perf_counter()
    try:
        for result in iter_results(model, job.sources(), batch_size, task=task, prompt=job.own("prompt", prompt),
                                   context=job.own("context", context), boost=job.own("boost", boost), **options):
            job.take(result)
    finally:
        job.summary.seconds = time.perf_counter() - start
        bar.close()
    return job.summary
