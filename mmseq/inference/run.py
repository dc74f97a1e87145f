"""Batched inference over many files: loaded in chunks (bounded memory), batched by length,
results returned in input order; an unreadable file is reported without losing the others.
Recordings longer than a window are split at pauses and their windows decoded in the same batches
(see :mod:`mmseq.inference.longform`)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .longform import LongformOptions, Window, continuation_prompt, decode_windows, fit_window, split_audio


# Audio whose peak stays within 2 steps of 16-bit audio is digital silence: it gets an empty text
# without decoding (a model asked to transcribe ten minutes of zeros invented about sixty words).
SILENCE_PEAK = 2 / 32768
NOT_INPUTS = (type(None), bytes, bytearray, dict, set, frozenset, bool, int, float, complex)


def _one_input(sources) -> bool:
    """Whether ``sources`` is one input rather than a list of them: a path (not its letters), an
    array or tensor (not its samples), an image."""
    if isinstance(sources, (str, os.PathLike, np.ndarray, torch.Tensor)):
        return True
    try:
        from PIL import Image
        return isinstance(sources, Image.Image)
    except ImportError:  # pragma: no cover
        return False


def _is_silent(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 1 and x.numel() > 0 and float(x.abs().max()) <= SILENCE_PEAK


def _length(x: torch.Tensor) -> int:
    return x.shape[-1] if x.dim() == 1 else 0


def decode_batched(model, inputs: list[torch.Tensor], prompts: list, batch_size: int = 16, task=None,
                   contexts: list | None = None, **options) -> list[str]:
    """Texts of loaded inputs, in their order. Inputs with the same prompt and similar lengths
    share a batch (``batch_size`` inputs at most), each with its own context (``contexts``: one
    per input, or None); ``options`` go to ``model.decode_texts``. ``task``: the :class:`Task` the
    inputs belong to (default: the model's)."""
    task = task or model.route().task
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    texts = [""] * len(inputs)
    for members in groups.values():
        members.sort(key=lambda i: _length(inputs[i]))
        for start in range(0, len(members), batch_size):
            part = members[start:start + batch_size]
            batch_inputs, lengths = task.collate_inputs([inputs[i] for i in part])
            context = None if contexts is None else [contexts[i] for i in part]
            decoded = model.decode_texts({"inputs": batch_inputs, "lengths": lengths, "task": task.name},
                                         prompt=prompts[part[0]], context=context, **options)
            for i, text in zip(part, decoded):
                texts[i] = text
    return texts


def iter_decode(model, sources: Iterable, batch_size: int = 16, chunk_size: int = 256, prompt=None,
                window: float = 30.0, split: str = "energy", segment_pause: float | None = None,
                longform: LongformOptions | None = None, task: str | None = None, context=None,
                previous_text: bool = False, **options) -> Iterator[tuple[int, str | InputError]]:
    """Yield ``(index, text)`` for each source, or ``(index, InputError)`` for one that cannot be
    read. At most about ``chunk_size`` inputs (or windows) are held in memory at once; within a
    chunk, inputs of similar length share a batch, and the results of a chunk come in input order.

    Audio longer than ``window`` seconds is split at pauses found by ``split`` ("energy" or "ctc"),
    and also at every pause of ``segment_pause`` seconds or more when given (one sentence per window,
    for models trained on single sentences); its windows are decoded with the others and their
    texts joined. ``longform`` gives every long-audio setting at once (it overrides those three).
    ``task`` names the task of a multitask model ("asr", "caption", "text"); a single-task model
    needs none.

    ``prompt`` and ``context`` (see :meth:`~mmseq.model.Seq2Seq.generate`): one value for every
    source, or a list of one per source. ``previous_text``: each later window of a long recording
    gets the text of the window before as its context (a model trained with contexts).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        # 0 raised deep inside, -1 gave every input an empty text
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
    task = model.route(task).task
    longform = fit_window(longform or LongformOptions(window=window, split=split, segment_pause=segment_pause),
                          task.encoder)  # an encoder with a fixed window (Whisper's 30 s) caps it
    window = longform.window
    sample_rate = getattr(task.encoder, "sample_rate", None)
    pending: list[tuple[int, torch.Tensor, list[Window]]] = []
    held = 0

    def decode(pieces, prompts, contexts):
        return decode_batched(model, pieces, prompts, batch_size, task, contexts, **options)

    def flush():
        indices = [index for index, _, _ in pending]
        prompts = [prompt_of(i) for i in indices]
        texts = decode_windows([x for _, x, _ in pending], [plan for _, _, plan in pending], prompts,
                               [continuation_prompt(model.tokenizer, p) for p in prompts], decode,
                               [context_of(i) for i in indices], previous_text)
        yield from zip(indices, texts)
        pending.clear()

    if _one_input(sources):
        sources = [sources]
    sources = list(sources) if isinstance(prompt, list) or isinstance(context, list) else sources
    prompt_of = _per_source(prompt, sources, "prompt")
    context_of = _per_source(context, sources, "context")
    for index, source in enumerate(sources):
        if isinstance(source, NOT_INPUTS):  # each becomes its own error; the other inputs go on
            yield index, InputError(f"input {index}: expected a file path, array, tensor or image, "
                                    f"got {type(source).__name__}")
            continue
        try:
            x = task.load_input(source)
        except InputError as error:
            yield index, error
            continue
        except (TypeError, AttributeError) as error:  # an object the task cannot take
            yield index, InputError(f"input {index}: cannot use a {type(source).__name__} as input ({error})")
            continue
        if sample_rate and _is_silent(x):
            plan = []  # no window to decode: the text is empty
        elif sample_rate and x.dim() == 1 and len(x) > window * sample_rate:
            plan = split_audio(x, sample_rate, longform, model, task.name)
        else:
            plan = [Window(0, _length(x))]
        pending.append((index, x, plan))
        held += len(plan)
        if held >= chunk_size:
            yield from flush()
            held = 0
    yield from flush()


def _per_source(value, sources, name: str):
    """``index -> value`` of a ``prompt=`` or ``context=``: one value for every source (a string,
    ids), a list of one per source (each a string, ids, or for a context a list of words), or
    already a function of the source's index (batch jobs: a manifest line's own)."""
    if callable(value):
        return value
    if not isinstance(value, list) or (value and all(isinstance(v, int) for v in value)):
        return lambda index: value
    if len(value) != len(sources):
        raise InputError(f"{name}= holds {len(value)} values for {len(sources)} inputs: give one value "
                         "(a string), or a list of one per input")
    return lambda index: value[index]


def decode_long(model, waveforms: list[torch.Tensor], options: LongformOptions | None = None,
                batch_size: int = 16, prompt=None, decode=None, task: str | None = None, **decoding) -> list[str]:
    """Texts of recordings ``(samples,)`` of any length, at the model's sample rate: every window
    of every recording is decoded in batches of similar length, then each recording's texts are
    joined.

    ``decode(pieces, prompts) -> texts`` may replace the model's batched decoding (tests use a fake
    one); by default it is :func:`mmseq.inference.run.decode_batched` with ``decoding`` options.
    """
    options, route = options or LongformOptions(), model.route(task, "asr")
    plans = [split_audio(w, route.encoder.sample_rate, options, model, route.name) for w in waveforms]
    if decode is None:
        def decode(pieces, prompts, contexts):
            return decode_batched(model, pieces, prompts, batch_size, route.task, contexts, **decoding)
    prompts = [prompt] * len(waveforms)
    return decode_windows(waveforms, plans, prompts, [continuation_prompt(model.tokenizer, prompt)] * len(waveforms),
                          decode)


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


def decode_sources(model, sources, batch_size: int = 16, errors: str = "raise",
                   **options) -> list[str] | list[str | InputError]:
    """Texts for all sources, in input order (what ``model.transcribe`` / ``caption`` /
    ``translate`` return). Every readable input is decoded, whatever the others hold.

    ``errors`` says what an unreadable input (a missing, empty or corrupt file, a NaN waveform)
    does:

    - ``"raise"`` (default): the list is ``list[str]``, as when every input reads; if some cannot
      be read, an :class:`UnreadableInputsError` (an :class:`InputError`) naming them is raised
      after the others were decoded, and its ``.results`` holds every text.
    - ``"report"``: no exception; the list holds, in a bad input's place, its :class:`InputError`
      (like ``asyncio.gather(..., return_exceptions=True)``).

    >>> texts = model.transcribe(["a.wav", "broken.wav", "c.wav"], errors="report")
    >>> [t if isinstance(t, str) else f"failed: {t}" for t in texts]  # doctest: +SKIP
    ['red cat', 'failed: broken.wav: cannot read audio (...)', 'blue dog']
    """
    if errors not in ("raise", "report"):
        raise ValueError(f"errors={errors!r}: must be 'raise' or 'report'")
    sources = [sources] if _one_input(sources) else list(sources)  # a path is one input, not letters
    results: list[str | InputError | None] = [None] * len(sources)
    failed: dict[int, InputError] = {}
    for index, result in iter_decode(model, sources, batch_size, **options):
        results[index] = result
        if isinstance(result, InputError):
            failed[index] = result
    if failed and errors == "raise":
        bad = [failed[index] for index in sorted(failed)]
        message = str(bad[0]) if len(bad) == 1 else (
            f"{len(bad)} of {len(sources)} inputs cannot be read: " + "; ".join(map(str, bad[:5]))
            + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""))
        if len(bad) < len(sources):
            message += " (the other inputs' texts are in this error's .results)"
        raise UnreadableInputsError(message, results, failed)
    return results
