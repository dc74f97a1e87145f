"""Batched inference over many files: loaded in chunks (bounded memory), batched by length,
results returned in input order; an unreadable file is reported without losing the others."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from .errors import InputError


def iter_decode(model, sources: Iterable, batch_size: int = 16, chunk_size: int = 256,
                prompt=None, task: str | None = None, **options) -> Iterator[tuple[int, str | InputError]]:
    """Yield ``(index, text)`` for each source, or ``(index, InputError)`` for one that cannot
    be read. At most ``chunk_size`` inputs are held in memory at once; within a chunk, inputs of
    similar length share a batch. ``task`` names the task of a multitask model ("asr",
    "caption", "text"); a single-task model needs none."""
    task = model.task_for(task)
    chunk: list[tuple[int, torch.Tensor]] = []

    def flush():
        chunk.sort(key=lambda pair: pair[1].shape[-1] if pair[1].dim() == 1 else 0)
        for start in range(0, len(chunk), batch_size):
            part = chunk[start:start + batch_size]
            inputs, lengths = task.collate_inputs([x for _, x in part])
            texts = model.decode_texts({"inputs": inputs, "lengths": lengths, "task": task.name}, prompt=prompt,
                                       **options)
            yield from ((index, text) for (index, _), text in zip(part, texts))
        chunk.clear()

    for index, source in enumerate(sources):
        try:
            chunk.append((index, task.load_input(source)))
        except InputError as error:
            yield index, error
        if len(chunk) >= chunk_size:
            yield from flush()
    yield from flush()


def decode_sources(model, sources, batch_size: int = 16, **options) -> list[str]:
    """Texts for all sources in input order; raises the first :class:`InputError` met."""
    sources = list(sources)
    results: list[str | None] = [None] * len(sources)
    for index, result in iter_decode(model, sources, batch_size, **options):
        if isinstance(result, InputError):
            raise result
        results[index] = result
    return results
