"""Checkpoint folders: reading and writing a model's (:func:`save`, :func:`load`), a prompt-tuned
model's small folder (a pointer to its base, checked by hash, and the adapters), and the renaming
of weights saved before the route table.

A checkpoint is a folder: ``config.json`` (all that rebuilds the model), ``model.safetensors`` and
the tokenizer's own files; a training run adds its state beside them
(:mod:`mmseq.training.state`). Folders are written into a temporary folder and swapped into place
in one step, so a process killed at any moment leaves every checkpoint whole. Reading never
unpickles code: JSON and safetensors only, every tensor checked against the model it fills.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .adapters import add_adapters, add_route, is_adapter
from .errors import CheckpointError, ConfigError, InputError, TokenizerError
from .checks import check_task_encoder, check_weights
from .config import check_checkpoint_config
from .data.files import check_regular, read_regular_file
from .model import ModelConfig, Seq2Seq
from .tokenizer import build_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MAX_CONFIG_BYTES = 16 * 2**20
POINTER_KEYS = ("base", "base_absolute", "base_sha256", "task", "from_task", "vectors", "train")


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
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE, "tokenizer.model", "tokenizer.json", "trainer_weights.safetensors"):
        if os.path.lexists(Path(folder) / name):  # a FIFO or device among its files is named, not waited on
            check_regular(Path(folder) / name, "checkpoint file", CheckpointError)
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


# -- a model's folder -----------------------------------------------------------------------
def checkpoint_config(model) -> dict:
    network = {"decoder": model.config.decoder, "label_smoothing": model.config.label_smoothing,
               "tasks": model.config.tasks}
    return {"mmseq_version": __version__, "model": network, "tokenizer": model.tokenizer.config(),
            "decoding": asdict(model.decoding), "training": model.training_record}


def save(model, folder: str | os.PathLike, write_extra=None, state_dict: dict | None = None) -> Path:
    """Write a checkpoint folder atomically (see :func:`mmseq.checkpoint.write_folder`).

    ``write_extra(tmp_folder)`` may add files (the trainer's state) inside the same rename.
    ``state_dict``: weights to write instead of this module's own (the trainer passes weights
    gathered from sharded training). A prompt-tuned model writes its pointer and soft prompt only."""
    if model.prompt_tuning is not None:
        return _save_prompt_tuned(model, folder, write_extra, state_dict)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint_config(model), indent=1))
        write_weights(model.state_dict() if state_dict is None else state_dict, tmp / WEIGHTS_FILE)
        model.tokenizer.save(tmp)
        if write_extra is not None:
            write_extra(tmp)

    return write_folder(folder, write)


def upgrade_weights(model, state_dict: dict) -> dict:
    """Weights saved before the route table (a single-task model's ``encoder.*`` and ``ctc_head.*``)
    renamed, in place, to its one route's ``encoders.<name>.*`` and ``ctc_heads.<name>.*``."""
    if len(model.routes) == 1:
        name = next(iter(model.routes))
        for old, new in (("encoder.", "encoders."), ("ctc_head.", "ctc_heads.")):
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[new + name + "." + key[len(old):]] = state_dict.pop(key)
    return state_dict


def _one_line(error: Exception, limit: int = 300) -> str:
    """An error's message on one line (torch's span many), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(config: dict, folder: str | os.PathLike | None = None) -> Seq2Seq:
    """A model from a checkpoint-style config dict (``model``, ``tokenizer``, ``decoding``, and
    ``task`` for the one-route shorthand of checkpoints written before the route table)."""
    for key in ("model", "tokenizer"):
        if key not in config:
            raise ConfigError(f"config lacks {key!r}")
    tokenizer = build_tokenizer(config["tokenizer"], folder)
    return Seq2Seq(ModelConfig(**config["model"]), tokenizer, config.get("task"), config.get("decoding"))


def quantize(model: Seq2Seq) -> Seq2Seq:
    """The model with its linear layers' weights in int8 (dynamic quantization, CPU inference):
    each matrix product runs on 8-bit weights and activations quantized on the fly, as
    CTranslate2's ``int8``; the tied output projection, convolutions and norms stay float32."""
    if model.device.type != "cpu":
        raise InputError("int8 (dynamic quantization) runs on the CPU; load the model there")
    with warnings.catch_warnings():  # torch 2.11 points to torchao for this API, which it still serves
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def load(folder: str | os.PathLike, device: str | torch.device | None = None, compute_type: str = "float32") -> Seq2Seq:
    """Load a checkpoint folder. Reads only JSON and safetensors: nothing in it is executed.
    ``compute_type="int8"``: for inference on the CPU, the linear layers in int8 (:func:`quantize`).

    Raises :class:`CheckpointError` when the folder is missing, holds only pickled weights, or its
    files are corrupt, and :class:`ConfigError` when its config names an unknown component.
    """
    if compute_type not in ("float32", "int8"):
        raise ConfigError(f"compute_type={compute_type!r}: float32 or int8")
    folder = Path(folder)
    config = read_config(folder)
    if "prompt_tuning" in config:  # a small folder: a pointer to its base and a soft prompt
        return load_prompt_tuned(folder, config, device)
    check_checkpoint_config(config, folder / CONFIG_FILE)  # every setting in range (mmseq/checks.py)
    try:
        # The checkpoint's own weights replace any pretrained backbone: don't fetch or re-read those.
        model_config = config.get("model", {})
        tasks = model_config.get("tasks") if isinstance(model_config.get("tasks"), dict) else {}
        for encoder in [model_config.get("encoder", {})] + [t.get("encoder") for t in tasks.values() if isinstance(t, dict)]:
            if isinstance(encoder, dict):
                encoder.update({k: v for k, v in (("pretrained", False), ("pretrained_file", None)) if k in encoder})
        model = build_model(config, folder)
    except TokenizerError as error:
        raise CheckpointError(f"{folder}: unusable tokenizer ({error})") from None
    except ConfigError as error:
        raise ConfigError(f"{folder / CONFIG_FILE}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        # A setting this version does not know, or a value of the wrong type.
        raise ConfigError(f"{folder / CONFIG_FILE}: describes no model mmseq can build "
                          f"({type(error).__name__}: {_one_line(error)})") from None
    for route in model.routes.values():
        check_task_encoder(route.task, route.encoder, f"model.tasks.{route.name}.encoder", str(folder / CONFIG_FILE))
    try:
        weights = read_weights(folder / WEIGHTS_FILE)
        upgrade_weights(model, weights)
        check_weights(weights, model.state_dict(), str(folder / WEIGHTS_FILE))
        model.load_state_dict(weights, strict=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: corrupt or incompatible weights ({_one_line(error)})") from None
    training = config.get("training")
    model.training_record = dict(training) if isinstance(training, dict) else {}
    model.eval()
    model = model.to(device) if device is not None else model
    return quantize(model) if compute_type == "int8" else model


# -- a prompt-tuned model's folder: a pointer to its base and the adapters ------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _save_prompt_tuned(model, folder, write_extra=None, state_dict: dict | None = None) -> Path:
    """A prompt-tuned model's checkpoint: the pointer and the soft prompt only (every weight with
    ``train: all``), written atomically like any checkpoint (``write_extra``: the trainer's state)."""
    record = model.prompt_tuning
    weights = model.state_dict() if state_dict is None else state_dict
    if record["train"] == "prompt":
        weights = {k: v for k, v in weights.items() if is_adapter(k)}

    def write(tmp: Path) -> None:
        config = {"mmseq_version": __version__, "prompt_tuning": record, "training": model.training_record}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        write_weights(weights, tmp / WEIGHTS_FILE)
        if write_extra is not None:
            write_extra(tmp)

    return write_folder(folder, write)


def _pointer(config: dict, folder: Path) -> dict:
    record = config.get("prompt_tuning")
    source = folder / CONFIG_FILE
    if not isinstance(record, dict):
        raise CheckpointError(f"{source}: not a prompt-tuning folder (no prompt_tuning pointer)")
    missing = [key for key in POINTER_KEYS if key not in record]
    if missing:
        raise CheckpointError(f"{source}: prompt_tuning lacks {', '.join(missing)}")
    if not isinstance(record["vectors"], int) or isinstance(record["vectors"], bool) or record["vectors"] < 1 \
            or record["train"] not in ("prompt", "all") or not isinstance(record["task"], str) \
            or any(type(record.get(key, 0)) is not int or record.get(key, 0) < 0 for key in ("lora", "lora_encoder")):
        raise CheckpointError(f"{source}: corrupt prompt_tuning pointer ({record!r:.200})")
    return record


def check_base(record: dict, base: Path, folder: Path) -> None:
    """:class:`CheckpointError` naming both weights files unless ``base`` holds the recorded weights."""
    weights = base / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; {folder / WEIGHTS_FILE} needs its base checkpoint")
    found = file_sha256(weights)
    if found != record["base_sha256"]:
        raise CheckpointError(f"{weights} is not the base {folder / WEIGHTS_FILE} was tuned from (SHA-256 "
                              f"{found[:12]}..., recorded {str(record['base_sha256'])[:12]}...)")


def _apply(model, folder: Path, record: dict):
    route = add_route(model, record["task"], record["from_task"], record["vectors"], bool(record.get("deep")))
    add_adapters(model, route, record.get("lora", 0), record.get("lora_encoder", 0))
    weights = read_weights(folder / WEIGHTS_FILE)
    if record["train"] == "prompt":
        own = {name: tensor for name, tensor in model.state_dict().items() if is_adapter(name)}
        expected = {name: tuple(tensor.shape) for name, tensor in own.items()}
        if {name: tuple(tensor.shape) for name, tensor in weights.items()} != expected:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: expected only {expected}, found "
                                  f"{', '.join(f'{k} {tuple(v.shape)}' for k, v in list(weights.items())[:3])}")
        with torch.no_grad():
            for name, tensor in weights.items():
                own[name].copy_(tensor)
    else:
        check_weights(weights, model.state_dict(), str(folder / WEIGHTS_FILE))
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: incompatible weights ({' '.join(str(error).split())[:300]})") from None
    model.prompt_tuning = dict(record)
    return model.eval()


def load_prompt_tuned(folder: str | os.PathLike, config: dict, device=None):
    """:func:`mmseq.load` of a prompt-tuning folder: its base, found by the pointer (the absolute
    path first, then the path as given), checked by hash, with the prompt applied."""
    folder = Path(folder)
    record = _pointer(config, folder)
    candidates = [Path(record["base_absolute"]), Path(record["base"])]
    base = next((p for p in candidates if (p / CONFIG_FILE).is_file()), None)
    if base is None:
        raise CheckpointError(f"{folder / CONFIG_FILE}: its base checkpoint {record['base']} is not found (nor "
                              f"{record['base_absolute']}); load the base and apply this folder with "
                              "apply_prompt_tuning (--prompt-tuning)")
    check_base(record, base, folder)
    model = load(base)
    if model.prompt_tuning is not None:
        raise CheckpointError(f"{base}: the base of {folder} is itself prompt tuned")
    _apply(model, folder, record)
    return model.to(device) if device is not None else model


def apply_prompt_tuning(model, folder: str | os.PathLike, base_path: str | os.PathLike):
    """Apply the prompt-tuning folder ``folder`` to ``model``, already loaded from ``base_path``:
    its route and soft prompt are added (in place; returns the model). Refused with a
    :class:`CheckpointError` when ``base_path``'s weights are not those the prompt was tuned on."""
    folder, base_path = Path(folder), Path(base_path)
    record = _pointer(read_config(folder), folder)
    check_base(record, base_path, folder)
    if model.prompt_tuning is not None:
        raise CheckpointError(f"{base_path}: already prompt tuned; apply {folder} to its base")
    device = model.device
    _apply(model, folder, record)
    return model.to(device)
