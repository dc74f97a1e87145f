"""Validation during training: each rank scores its share of ``data.valid`` and the sums and
hypotheses are gathered, so every rank ends with the same metrics."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import ConfigError
from ..inference.evaluate import decode_examples, score_rows
from .distributed import all_reduce_sum, full_weights, gather_objects


@torch.no_grad()
def validation_metrics(model, task, examples: list[dict], config, val_metric, *, rank: int, world: int, dtype,
                       device, sharded: bool, progress: bool, warn) -> tuple[dict, int]:
    """``(metrics, unreadable)``: loss, accuracy and, unless ``val_metric`` is one of those, the
    tasks' metrics of the decoded hypotheses (:func:`mmseq.inference.evaluate.decode_examples`),
    over every rank; ``unreadable``: the examples left out (each logged by ``warn``)."""
    model.eval()
    decode = val_metric.name not in ("loss", "accuracy")
    with full_weights(model) if sharded else nullcontext():
        decoded = decode_examples(model, task, examples[rank::world], config.data.batch_size,
                                  config.data.max_batch_examples, config.data.num_workers, decode=decode,
                                  losses=True, dtype=dtype, desc="valid", progress=progress, warn=warn,
                                  beam_size=config.trainer.val_beam_size)
    loss_sum, count, correct, tokens, unreadable = all_reduce_sum(decoded.sums + [float(len(decoded.skipped))], device)
    metrics = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(tokens, 1)}
    if decode:
        rows = [row for part in gather_objects(decoded.rows) for row in part]
        metrics.update(score_rows(task, rows))
        if val_metric.name not in metrics and config.trainer.val_metric not in metrics:
            raise ConfigError(f"trainer.val_metric={config.trainer.val_metric!r}: the validation "
                              f"scores are {', '.join(metrics)}")
    return metrics, int(unreadable)
