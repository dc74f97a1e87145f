"""Checkpoint averaging: the mean of the weights of several checkpoints of one run (the last N, or
the best N by the validation metric), written as a checkpoint folder of its own.

Averaging the last few checkpoints of a run is a cheap, reliable gain for sequence models
(Vaswani et al. 2017 averaged the last 5 or 20; ESPnet averages the best 10 by validation).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import WEIGHTS_FILE, load, read_config, read_weights, save, upgrade_weights
from ..errors import CheckpointError, ConfigError
from .state import list_checkpoints, ranked_checkpoints


def select_checkpoints(run: str | Path, last: int | None = None, best: int | None = None) -> list[Path]:
    """Checkpoint folders of a training output folder: its ``last`` newest, or its ``best`` best
    (as the trainer ranked them; it keeps ``trainer.keep_best`` of them)."""
    run = Path(run)
    folders = list_checkpoints(run)
    if not folders:
        raise CheckpointError(f"{run}: no checkpoints (expected {run}/checkpoints/step-*)")
    if (last is None) == (best is None):
        raise ConfigError("choose either the last N or the best N checkpoints")
    count = last if last is not None else best
    if count < 1:
        raise ConfigError(f"the number of checkpoints to average must be at least 1, got {count}")
    if last is not None:
        chosen = folders[-last:]
        if len(chosen) < last:
            raise CheckpointError(f"{run}: only {len(chosen)} checkpoints kept, {last} asked for "
                                  "(raise trainer.keep_last to keep more)")
        return chosen
    chosen = ranked_checkpoints(run)[:best]
    if len(chosen) < best:
        raise CheckpointError(f"{run}: only {len(chosen)} ranked checkpoints kept, {best} asked for "
                              "(raise trainer.keep_best to keep more)")
    return chosen


def average_checkpoints(folders: list[str | Path], out: str | Path) -> Path:
    """Write the element-wise mean of ``folders``' weights (accumulated in float64) as a checkpoint
    folder ``out`` with the first folder's config and tokenizer. Integer buffers are taken from the
    last folder. The checkpoints must come from the same model (same config and tokenizer)."""
    folders = [Path(folder) for folder in folders]
    if not folders:
        raise ConfigError("no checkpoints to average")
    configs = []
    for folder in folders:
        config = read_config(folder)
        configs.append({key: config.get(key) for key in ("task", "model", "tokenizer")})
    for folder, config in zip(folders[1:], configs[1:]):
        if config != configs[0]:
            raise CheckpointError(f"{folder}: a different model or tokenizer than {folders[0]}; "
                                  "only checkpoints of one run can be averaged")
    total = None
    for folder in folders:
        weights = read_weights(folder / WEIGHTS_FILE)
        if total is None:
            dtypes = {name: value.dtype for name, value in weights.items()}
            total = {name: value.double() if value.is_floating_point() else value for name, value in weights.items()}
            continue
        if weights.keys() != total.keys():
            raise CheckpointError(f"{folder}: its weights do not match those of {folders[0]}")
        for name, value in weights.items():
            total[name] = total[name] + value.double() if value.is_floating_point() else value
    model = load(folders[0])
    averaged = {name: (value / len(folders)).to(dtypes[name]) if value.is_floating_point() else value
                for name, value in total.items()}
    model.load_state_dict(upgrade_weights(model, averaged))  # (names older than the route table renamed)
    with torch.no_grad():
        return save(model, out)
