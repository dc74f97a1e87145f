"""A training run's folder and state: its checkpoints (``checkpoints/step-00001234/`` with ``best``
and ``last`` links beside), their rotation, the lock that keeps one run per folder, and the
trainer's state a checkpoint holds besides the model (data position and counts in
``trainer_state.json``; optimizer, scheduler, loss scaler and every rank's random state in
``trainer_state.pt``; the raw weights in ``trainer_weights.safetensors`` when
``model.safetensors`` holds a moving average). The model's own files are :mod:`mmseq.checkpoint`'s.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from pathlib import Path

import torch

from ..checkpoint import save, write_weights
from ..errors import CheckpointError, ConfigError, TrainingError

STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"
TRAINING_WEIGHTS = "trainer_weights.safetensors"  # the raw weights, when model.safetensors holds the EMA
CHECKPOINTS = "checkpoints"


def new_state(world: int, sharded: bool) -> dict:
    """The trainer's state of a run at its start (what ``trainer_state.json`` holds)."""
    return {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": [], "bad_examples": 0, "bad_examples_in_epoch": 0,
            "nonfinite_in_row": 0, "skipped_steps": 0, "world_size": world, "sharded": sharded}


def count_bad_examples(state: dict, bad_examples: int, manifest_errors: int, limit: int) -> None:
    """Add a step's unreadable examples to ``state``; a :class:`TrainingError` once the run's, with
    the manifest's bad lines, pass ``data.max_bad_examples``."""
    state["bad_examples"] += bad_examples
    state["bad_examples_in_epoch"] += bad_examples
    if state["bad_examples"] + manifest_errors > limit:
        raise TrainingError(f"{state['bad_examples'] + manifest_errors} unreadable examples, "
                            f"more than data.max_bad_examples={limit}")


# -- random state -------------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's random state: torch's, Python's and, with a GPU, CUDA's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- what a checkpoint holds --------------------------------------------------------------------------
def full_state(model, optimizer, scheduler, scaler, sharded: bool) -> tuple[dict | None, dict]:
    """The weights to write (``None``: the model's own) and the optimizer's, scheduler's and loss
    scaler's states; with FSDP the weights and optimizer state are gathered from every rank's
    shards (all ranks must call this)."""
    if sharded:  # (torch.distributed.checkpoint takes seconds to import: only for FSDP)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights, optimizer_state = (get_model_state_dict(model, options=options),
                                    get_optimizer_state_dict(model, optimizer, options=options))
    else:
        weights, optimizer_state = None, optimizer.state_dict()
    return weights, {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}


# -- one checkpoint -------------------------------------------------------------------------------
def read_training_state(folder: Path) -> tuple[dict, dict]:
    """The trainer's state of a checkpoint: its JSON (data position, counts) and its tensors
    (optimizer, scheduler, scaler, random states). Raises :class:`CheckpointError` when either is
    missing, truncated, not what the trainer writes, or refused by ``weights_only`` (a pickle that
    would run code), so that resume can fall back to the checkpoint before."""
    path = folder / STATE_JSON
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: corrupt training state ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int)
                                              for k in ("epoch", "batch_in_epoch", "step")):
        raise CheckpointError(f"{path}: corrupt training state (not the trainer's epoch, batch and step)")
    path = folder / STATE_TENSORS
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: corrupt or unsafe training state ({type(error).__name__}: "
                              f"{first_line})") from None
    if not isinstance(tensors, dict) or not {"optimizer", "scheduler", "scaler", "rng"} <= tensors.keys():
        raise CheckpointError(f"{path}: corrupt training state (not the trainer's optimizer, scheduler, "
                              "scaler and random states)")
    return state, tensors


def restore(folder: Path, state: dict, tensors: dict, model, optimizer, scheduler, scaler, *, sharded: bool,
            rank: int, world: int, log) -> dict:
    """Put the optimizer, scheduler, scaler and random state read from ``folder`` (by
    :func:`read_training_state`) in place; returns the trainer's state (data position, counts)."""
    if state.get("sharded", False) != sharded:
        how = "sharded (trainer.fsdp, several processes)" if state.get("sharded") else "unsharded"
        raise ConfigError(f"{folder}: its optimizer state was saved {how}; resume it the same way")
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, tensors["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    scaler.load_state_dict(tensors["scaler"])
    rngs = tensors["rng"]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    saved_world = state.get("world_size", 1)
    if saved_world != world and state["batch_in_epoch"]:
        # A rank's position counts its own batches: carry the share of the epoch already done over.
        state["batch_in_epoch"] = state["batch_in_epoch"] * saved_world // world
        log(f"resuming a {saved_world}-process run with {world} processes: the epoch goes on from about "
            "the same point, not exactly (same process count: exact)")
    state["world_size"] = world
    log(f"resumed from {folder} (epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']}, step {state['step']})")
    return state


def write_checkpoint(folder: Path, model, state: dict, tensors: dict, raw_weights: dict | None = None,
                     weights: dict | None = None) -> Path:
    """``model``'s checkpoint folder with the trainer's ``state`` (JSON) and ``tensors`` (optimizer,
    scheduler, scaler, random states) beside, written atomically (:func:`mmseq.checkpoint.save`).
    ``raw_weights``: the trained weights when ``model`` is their moving average; ``weights``: those
    to write instead of ``model``'s own (gathered from FSDP shards). Raises ``OSError`` (disk full)."""
    def write_state(tmp: Path) -> None:
        torch.save(tensors, tmp / STATE_TENSORS)
        if raw_weights is not None:
            write_weights(raw_weights, tmp / TRAINING_WEIGHTS)
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))

    return save(model, folder, write_state, state_dict=weights)


def write_run_checkpoint(folder: Path, state: dict, metric: float | None, higher_is_better: bool, trainer, model,
                         tensors: dict, raw_weights: dict | None = None, weights: dict | None = None) -> None:
    """A run's checkpoint (:func:`write_checkpoint`) at ``folder``, with ``metric`` ranked among
    ``state["best"]`` (``trainer.keep_best`` long), then the rotation (``trainer.keep_last``) and the
    ``best`` and ``last`` links. ``state["best"]`` changes only once the folder is written."""
    best = state["best"]
    if metric is not None:
        best = rank_best(best, metric, folder.name, higher_is_better, trainer.keep_best)
    write_checkpoint(folder, model, {**state, "best": best}, tensors, raw_weights, weights)
    state["best"] = best
    rotate(folder.parent.parent, folder.name, best, trainer.keep_last)


# -- a run's folder of checkpoints ----------------------------------------------------------------
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed into place)."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit()
             and (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def step_folder(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def rank_best(best: list, metric: float, name: str, higher_is_better: bool, keep: int) -> list:
    """The ``[[metric, folder name], ...]`` ranking with ``name`` added, best first, ``keep`` long."""
    best = [item for item in best if item[1] != name] + [[metric, name]]
    best.sort(key=lambda item: -item[0] if higher_is_better else item[0])
    return best[:keep]


def rotate(output_dir: str | os.PathLike, newest: str, best: list, keep_last: int) -> None:
    """Delete the run's checkpoints that are neither among the ``keep_last`` newest, nor ``newest``,
    nor ranked in ``best``; point ``best`` and ``last`` at theirs."""
    output_dir = Path(output_dir)
    kept = list_checkpoints(output_dir)
    keep = {p.name for p in kept[-max(1, keep_last):]} | {newest} | {name for _, name in best}
    for old in kept:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    if best:
        point(output_dir / "best", Path(CHECKPOINTS) / best[0][1])
    point(output_dir / "last", Path(CHECKPOINTS) / newest)


def ranked_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints as its trainer ranked them by validation metric, best first (those
    still kept)."""
    output_dir = Path(output_dir)
    folders = list_checkpoints(output_dir)
    if not folders:
        return []
    ranked = json.loads((folders[-1] / STATE_JSON).read_text()).get("best", [])
    return [output_dir / CHECKPOINTS / name for _, name in ranked if (output_dir / CHECKPOINTS / name).is_dir()]


def point(link: Path, target: Path) -> None:
    """Atomically make ``link`` a symlink to ``target``."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


class FolderLock:
    """One run per output folder: a second one gets a clear message, not a corrupt folder."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / ".lock"
        self.file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise TrainingError(f"{self.path.parent}: another training run is using this output folder") from None

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
