"""Prompt tuning: a new task learned by N soft prompt vectors, every other weight of a trained
model frozen (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

A config's ``prompt_tuning`` section (:class:`mmseq.config.PromptTuningConfig`) makes ``mmseq
train`` load the ``base`` checkpoint, add a route ``task`` that shares the encoder, CTC head,
decoding settings and prompt of the base's route ``from_task``, and put ``vectors`` trainable
vectors (``TextDecoder.add_soft_prompt``) before that route's task token. Only they are trained
(``train: all`` trains every weight through the same route: the full fine-tuning baseline).
``deep: true`` gives each prompt position its own vector at every decoder layer's input too
(deep prompt tuning, as P-tuning v2, Liu et al. 2022), still a few thousand numbers. ``lora: R``
adds the second adapter form, rank-R LoRA updates of the decoder's attention projections
(:mod:`mmseq.lora`), trained with the vectors; unlike the vectors, they change the decoder every
route goes through, so the base's own tasks are served by the adapted decoder too.

The run's checkpoints are small folders: ``config.json`` holds only a pointer to the base,

    {"prompt_tuning": {"base": "exp/synth_text/best", "base_absolute": "/.../step-00000948",
                       "base_sha256": "...", "task": "digits", "from_task": "text", "vectors": 20,
                       "train": "prompt"}}

and ``model.safetensors`` only the soft prompt (``decoder.soft_prompt``, ``(vectors, dim)``, and
with ``deep`` ``decoder.deep_prompt``, ``(layers - 1, vectors, dim)``),
beside the trainer's state, as in any checkpoint. :func:`mmseq.load` on such a folder loads the
base and applies the prompt; :func:`apply_prompt_tuning` applies it to a base already loaded
(``--prompt-tuning FOLDER``). Both refuse a base whose ``model.safetensors`` is not the one the
prompt was tuned on (its SHA-256 differs): the vectors mean something only to those weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import __version__
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config, read_weights, write_folder, write_weights
from .errors import CheckpointError, ConfigError, InputError
from .lora import add_lora, is_lora

SOFT_PROMPT, DEEP_PROMPT = "decoder.soft_prompt", "decoder.deep_prompt"
POINTER_KEYS = ("base", "base_absolute", "base_sha256", "task", "from_task", "vectors", "train")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


def is_adapter(name: str) -> bool:
    """A state-dict entry that prompt tuning trains and its folder holds: the soft prompt, the deep
    prompt, a LoRA matrix."""
    return name in (SOFT_PROMPT, DEEP_PROMPT) or is_lora(name)


# -- the route ------------------------------------------------------------------------------------
def add_route(model, name: str, from_task: str | None, vectors: int, deep: bool = False):
    """Add route ``name`` to ``model`` (a :class:`mmseq.model.Seq2Seq`): it shares the encoder, CTC
    head, decoding settings, prompt and prompting of route ``from_task`` (default: the model's only
    route), and its prompt starts with ``vectors`` new soft prompt vectors (``deep``: with their
    own vectors at every decoder layer's input too). Returns the route."""
    from .model import Route
    from .tasks import TaskTable, create_task

    if name in model.routes:
        raise ConfigError(f"prompt_tuning.task={name!r}: the base already has a task of that name "
                          f"({', '.join(model.routes)}); name the new task otherwise")
    if model.decoder.soft_prompt is not None:
        raise ConfigError("prompt_tuning.base: the base already holds a soft prompt; tune from a full checkpoint")
    try:
        base = model.route(from_task)
    except InputError as error:
        raise ConfigError(f"prompt_tuning.from_task: {error}") from None
    entry = dict(model.config.tasks.get(base.name, {}))
    task = create_task(base.kind, base.encoder, model.tokenizer, base.task.max_tokens, name=name,
                       prompt=entry.get("prompt"), prompting=entry.get("prompting"))
    task.soft_prompt = model.decoder.add_soft_prompt(vectors, deep)
    route = Route(name, task, base.encoder, base.ctc_head, base.ctc_weight, dict(base.decoding), base.batch_size)
    model.routes[name] = route
    model.task = TaskTable({n: r.task for n, r in model.routes.items()},
                           {n: r.batch_size for n, r in model.routes.items()})
    owner = next(n for n, encoder in model.encoders.items() if encoder is base.encoder)
    model.config.tasks[name] = {**entry, "encoder": owner}  # a string: the route whose encoder it shares
    return route


def freeze(model, train: str = "prompt") -> tuple[int, int]:
    """Make only the soft prompt trainable (``train="prompt"``), or every weight (``"all"``).
    Returns (trainable parameters, all parameters)."""
    model.requires_grad_(train == "all")
    for name, parameter in model.named_parameters():
        if is_adapter(name):
            parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# -- training ---------------------------------------------------------------------------------------
def start_model(settings):
    """The model a new prompt-tuning run starts from: the base with the new route, its pointer set."""
    from .model import load

    base = Path(settings.base)
    model = load(base)
    if model.prompt_tuning is not None:
        raise ConfigError(f"prompt_tuning.base={settings.base}: a prompt-tuned folder; tune from a full checkpoint")
    try:
        from_task = model.route(settings.from_task).name
    except InputError as error:
        raise ConfigError(f"prompt_tuning.from_task: {error}") from None
    room = model.decoder.config.max_length - 1 - len(model.route(from_task).task.prompt())  # <s> and the prompt
    if settings.vectors >= room:
        raise ConfigError(f"prompt_tuning.vectors={settings.vectors}: the base's decoder holds "
                          f"{model.decoder.config.max_length} tokens, prompt and text together; give fewer than {room}")
    add_route(model, settings.task, from_task, settings.vectors, settings.deep)
    if settings.lora:
        add_lora(model.decoder, settings.lora)
    model.prompt_tuning = {"deep": bool(settings.deep), "lora": int(settings.lora), "base": str(settings.base), "base_absolute": str(base.resolve()),
                           "base_sha256": file_sha256(base / WEIGHTS_FILE), "task": settings.task,
                           "from_task": from_task,
                           "vectors": int(settings.vectors), "train": settings.train}
    return model


def check_resumed(settings, model, folder) -> None:
    """A resumed run's checkpoint was tuned as the config says (same task, vectors, way of
    training, and base weights)."""
    record = model.prompt_tuning or {}
    for key in ("task", "vectors", "train", "deep", "lora"):
        if record.get(key, False) != getattr(settings, key):
            raise ConfigError(f"{folder}: tuned with prompt_tuning.{key}={record.get(key)!r}, the config says "
                              f"{getattr(settings, key)!r}; resume with the same settings or use another output_dir")
    weights = Path(settings.base) / WEIGHTS_FILE
    if weights.is_file() and file_sha256(weights) != record.get("base_sha256"):
        raise ConfigError(f"{weights}: not the base {folder / WEIGHTS_FILE} was tuned from (its SHA-256 differs); "
                          "resume with that base or use another output_dir")


def training_table(model, log):
    """Freeze the model but its prompt, log the trainable share, and return the task table the
    trainer reads, batches and scores with: the new route alone, so that every training and
    validation line is its (no ``task`` field needed)."""
    from .tasks import TaskTable

    record = model.prompt_tuning
    trainable, total = freeze(model, record["train"])
    log(f"prompt tuning task {record['task']!r} (from {record['from_task']!r} of {record['base']}): "
        f"{trainable} trainable parameters of {total} ({100 * trainable / total:.3g} %)")
    route = model.routes[record["task"]]
    return TaskTable({route.name: route.task}, {route.name: route.batch_size})


def size_line(folder: Path) -> str:
    """A log line: the checkpoint's weights file and whole folder in bytes."""
    total = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    return (f"checkpoint {Path(folder).name}: {WEIGHTS_FILE} {(Path(folder) / WEIGHTS_FILE).stat().st_size} bytes, "
            f"folder {total} bytes")


# -- the folder ------------------------------------------------------------------------------------------
def save(model, folder, write_extra=None, state_dict: dict | None = None) -> Path:
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
            or type(record.get("lora", 0)) is not int or record.get("lora", 0) < 0:
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
    add_route(model, record["task"], record["from_task"], record["vectors"], bool(record.get("deep")))
    if record.get("lora"):
        add_lora(model.decoder, int(record["lora"]))
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
        from .checks import check_weights
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
    from .model import load

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
