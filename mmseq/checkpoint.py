"""Checkpoint folders: the one place that knows their files and rules.

A checkpoint is a folder: ``config.json`` (all that rebuilds the model), ``model.safetensors``, the
tokenizer's own files and, in a training run, the trainer's state (``trainer_state.json``,
``trainer_state.pt`` read with ``weights_only=True``, and ``trainer_weights.safetensors`` when
``model.safetensors`` holds a moving average). A run's output folder keeps them as
``checkpoints/step-00001234/``, with ``best`` and ``last`` symlinks beside. Folders are written
into a temporary folder and swapped into place in one step, so a process killed at any moment
leaves every checkpoint whole. Reading never unpickles code.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from .errors import CheckpointError, TrainingError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"
TRAINING_WEIGHTS = "trainer_weights.safetensors"  # the raw weights, when model.safetensors holds the EMA
CHECKPOINTS = "checkpoints"
MAX_CONFIG_BYTES = 16 * 2**20


# -- one folder -------------------------------------------------------------------------------
def write_folder(folder: str | os.PathLike, write) -> Path:
    """``write(tmp)`` fills a temporary folder beside ``folder``, which is then synced and swapped
    into place atomically (a failed or killed write leaves the previous ``folder`` whole)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_folder(tmp)
        if folder.exists() and _exchange(tmp, folder):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous checkpoint
        elif folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _exchange(new: Path, old: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``), so that a
    process killed at any moment leaves a whole checkpoint at ``old``; False where the system or
    file system cannot (the caller then renames twice)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_current_folder, rename_exchange = -100, 2
    return renameat2(at_current_folder, os.fsencode(new), at_current_folder, os.fsencode(old), rename_exchange) == 0


def _fsync_folder(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())


def read_config(folder: str | os.PathLike) -> dict:
    """A checkpoint folder's ``config.json`` as a dict; :class:`CheckpointError` when the folder is
    no checkpoint (no config, no safetensors weights) or the config is not a JSON object."""
    from .checks import check_checkpoint_files
    from .data.files import read_regular_file

    folder = Path(folder)
    check_checkpoint_files(folder)  # a FIFO or device among its files is named, not waited on
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no {CONFIG_FILE})")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}]
        hint = f"; it holds {', '.join(pickles)}, which mmseq never unpickles" if pickles else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}{hint}")
    try:
        config = json.loads(read_regular_file(path, MAX_CONFIG_BYTES, "checkpoint config", CheckpointError))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupt config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: corrupt config (a JSON {type(config).__name__}, not an object)")
    return config


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (on the CPU); :class:`CheckpointError` when it is corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError, ... for a truncated or foreign file
        raise CheckpointError(f"{path}: corrupt weights ({' '.join(str(error).split())[:300]})") from None


def write_weights(weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Tensors to a safetensors file; cloned, since safetensors refuses tensors that share storage
    (torchaudio's window buffers do)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous().cpu() for k, v in weights.items()}, str(path))


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
