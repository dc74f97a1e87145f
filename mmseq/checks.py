"""Allowed ranges of every setting, checked once where settings enter mmseq: the command line,
a checkpoint's ``config.json`` and a training YAML. Each error names the file and the key:
``exp/best/config.json: decoding.beam_size=1000000: must be an integer from 1 to 100``.

The rules are tables (``{key: Rule}``) so that one reads as the documentation of the ranges;
:func:`check_fields` applies a table to a dataclass or a dict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from .errors import ConfigError

MAX_BEAM = 100  # a beam of 100,000 asked for 7 GB; ESPnet and whisper use 5 to 20


class Rule(NamedTuple):
    """A number (``kind`` "int" or "float") in ``[low, high]`` (``low`` excluded when ``open_low``),
    or ``None`` where ``optional``; or (``kind`` "choice") one of ``choices``; or a ``bool``."""
    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    optional: bool = False
    choices: tuple = ()


def Int(low=None, high=None, optional=False) -> Rule:
    return Rule("int", low, high, optional=optional)


def Float(low=None, high=None, open_low=False, optional=False) -> Rule:
    return Rule("float", low, high, open_low, optional)


def Choice(*choices) -> Rule:
    return Rule("choice", choices=choices)


BOOL = Rule("bool")


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _range(rule: Rule) -> str:
    what = "an integer" if rule.kind == "int" else "a finite number"
    if rule.low is not None and rule.high is not None:
        text = (f"{what} {'above' if rule.open_low else 'from'} {_num(rule.low)} "
                f"{'and at most' if rule.open_low else 'to'} {_num(rule.high)}")
    elif rule.low is not None:
        text = f"{what} {'above' if rule.open_low else 'of at least'} {_num(rule.low)}"
    elif rule.high is not None:
        text = f"{what} of at most {_num(rule.high)}"
    else:
        text = what
    return text + (" (or null)" if rule.optional else "")


def check_value(value, rule: Rule, key: str, source: str = "") -> None:
    """Raise :class:`ConfigError` ``"SOURCE: KEY=VALUE: must be ..."`` unless ``value`` obeys ``rule``."""
    where = f"{source}: " if source else ""
    if value is None and rule.optional:
        return
    if rule.kind == "choice":
        if value not in rule.choices:
            raise ConfigError(f"{where}{key}={value!r}: must be one of {', '.join(map(repr, rule.choices))}")
        return
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}={value!r}: must be true or false")
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if rule.kind == "int":
        number = number and (isinstance(value, int) or (math.isfinite(value) and value == int(value)))
    ok = number and math.isfinite(value)
    if ok and rule.low is not None:
        ok = value > rule.low if rule.open_low else value >= rule.low
    if ok and rule.high is not None:
        ok = value <= rule.high
    if not ok:
        raise ConfigError(f"{where}{key}={value!r}: must be {_range(rule)}")


def check_fields(settings, rules: dict[str, Rule], prefix: str, source: str = "") -> None:
    """Apply ``rules`` to the fields of a dataclass or the keys of a dict (absent keys are skipped)."""
    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
    for name, rule in rules.items():
        if name in values:
            check_value(values[name], rule, f"{prefix}.{name}" if prefix else name, source)


# -- the tables -------------------------------------------------------------------------------
DECODING = {
    "beam_size": Int(1, MAX_BEAM), "max_length": Int(1, 100_000), "max_length_ratio": Float(0, 1000, True, True),
    "min_length": Int(0, 100_000), "length_penalty": Float(0, 10), "length_bonus": Float(-100, 100),
    "nbest": Int(1, MAX_BEAM), "early_stopping": Choice("heuristic", "exact"), "ctc_weight": Float(0, 1),
    "ctc_candidates": Float(1, 100), "lm_weight": Float(0, 10), "no_repeat_ngram": Int(0, 100),
    "temperature": Float(0, 100, True), "top_k": Int(0, 10_000_000),
}
TRAINER = {
    "max_epochs": Int(1, 1_000_000), "max_steps": Int(1, None, optional=True), "lr": Float(0, 10, True),
    "weight_decay": Float(0, 10), "warmup_steps": Int(0), "schedule": Choice("cosine", "noam", "constant"),
    "min_lr_ratio": Float(0, 1), "grad_clip": Float(0, None, True), "accumulate": Int(1, 1_000_000),
    "precision": Choice("auto", "fp32", "bf16", "fp16"), "seed": Int(0, 2**63 - 1), "compile": BOOL,
    "keep_best": Int(0, 1_000_000), "keep_last": Int(1, 1_000_000), "val_beam_size": Int(1, MAX_BEAM),
    "checkpoint_every": Int(0), "log_every": Int(1), "nonfinite_limit": Int(1), "ema": Float(0, 1),
    "activation_checkpointing": BOOL, "fsdp": BOOL, "encoder_lr_scale": Float(0, 100),
}
DATA = {
    "batch_size": Float(0, None, True), "max_batch_examples": Int(1, None, optional=True),
    "num_workers": Int(0, 1024), "max_bad_examples": Int(0),
}
TOKENIZER = {"type": Choice("char", "sentencepiece"), "vocab_size": Int(2, 10_000_000),
             "model_type": Choice("unigram", "bpe")}
MODEL = {"ctc_weight": Float(0, 1), "label_smoothing": Float(0, 1)}
PROMPT_TUNING = {"vectors": Int(1, 4096), "train": Choice("prompt", "all"), "deep": BOOL, "lora": Int(0, 4096)}
LAYERS = {  # shared by the decoder and the encoders that have these settings
    "dim": Int(1, 65_536), "layers": Int(0, 1000), "heads": Int(1, 1024), "ffn_dim": Int(1, 1_000_000),
    "dropout": Float(0, 1), "max_length": Int(1, 1_000_000), "sample_rate": Int(1000, 768_000),
    "n_mels": Int(1, 1024), "n_fft": Int(2, 1 << 20), "hop_length": Int(1, 1 << 20),
}


def check_decoding(options, prefix: str = "decoding", source: str = "") -> None:
    """The ranges of :class:`mmseq.decoding.search.DecodingOptions` (a dataclass or a dict of its fields)."""
    check_fields(options, DECODING, prefix, source)
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options
    if "nbest" in values and "beam_size" in values and values["nbest"] > values["beam_size"]:
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.nbest={values['nbest']}: must be at most "
                          f"beam_size ({values['beam_size']})")
    endings = values.get("bad_endings", [])
    if not isinstance(endings, list) or not all(isinstance(e, (int, str)) and not isinstance(e, bool) for e in endings):
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.bad_endings={endings!r}: must be a list of "
                          "words or token ids")
    for name in ("suppress_tokens", "suppress_at_start"):
        ids = values.get(name, [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{source + ': ' if source else ''}{prefix}.{name}: must be a list of token ids")


def check_model(model, prefix: str = "model", source: str = "") -> None:
    """``model`` settings (a ModelConfig or its dict): CTC weight, and in the decoder and each
    encoder the layer sizes, with ``dim`` divisible by ``heads``."""
    values = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else model
    if not isinstance(values, dict):
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}: expected a mapping, got {type(values).__name__}")
    check_fields(values, MODEL, prefix, source)
    parts = [("decoder", values.get("decoder")), ("encoder", values.get("encoder"))]
    tasks = values.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.tasks: expected a mapping")
    for name, task in tasks.items():
        if isinstance(task, dict):
            if not isinstance(task.get("encoder"), str):  # a string names the route whose encoder it shares
                parts.append((f"tasks.{name}.encoder", task.get("encoder")))
            if "decoding" in task:
                check_decoding(task["decoding"], f"{prefix}.tasks.{name}.decoding", source)
            check_fields(task, MODEL, f"{prefix}.tasks.{name}", source)
    for part, settings in parts:
        if settings is None:
            continue
        if not isinstance(settings, dict):
            raise ConfigError(f"{source + ': ' if source else ''}{prefix}.{part}: expected a mapping, "
                              f"got {type(settings).__name__}")
        check_fields(settings, LAYERS, f"{prefix}.{part}", source)
        dim, heads = settings.get("dim"), settings.get("heads")
        if isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads:
            raise ConfigError(f"{source + ': ' if source else ''}{prefix}.{part}.heads={heads}: must divide "
                              f"{prefix}.{part}.dim ({dim})")


def check_prompt_tuning(config, source: str = "") -> None:
    """A config's ``prompt_tuning`` section: ``vectors`` and ``train`` in range, ``base`` and
    ``task`` given together, and no setting it cannot go with (EMA, FSDP, an SCST stage)."""
    settings = config.prompt_tuning
    where = source + ": " if source else ""
    check_fields(settings, PROMPT_TUNING, "prompt_tuning", source)
    if not settings.base and not settings.task:
        return
    for key in ("base", "task"):
        value = getattr(settings, key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}prompt_tuning.{key}: needed with prompt_tuning "
                              "(base: the trained checkpoint, task: the new task's name)")
    for on, name in ((config.trainer.ema, "trainer.ema"), (config.trainer.fsdp, "trainer.fsdp"),
                     (config.scst.enabled, "scst")):
        if on:
            raise ConfigError(f"{where}prompt_tuning does not go with {name}; turn one off")


def check_device(name) -> str:
    """``name`` ("cpu", "cuda", "cuda:1", "mps") if torch knows it and this machine has it, else
    :class:`ConfigError` saying which devices there are."""
    import torch

    if name in (None, "auto"):
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: this machine has no CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: mmseq runs on cpu, cuda or mps")
    return name


def check_weights(weights: dict, expected: dict, source: str) -> None:
    """Tensors of a checkpoint's safetensors against the model's own ``expected`` state dict:
    floating point where the model has floating point (an int64 or bool tensor there is a corrupt or
    foreign file, which ``load_state_dict`` would cast silently), the same dtype elsewhere (counters
    such as BatchNorm's ``num_batches_tracked``), and finite. Raises :class:`CheckpointError`."""
    import torch

    from .errors import CheckpointError

    for name, tensor in weights.items():
        want = expected.get(name)
        if want is None:
            continue  # unexpected names are load_state_dict(strict=True)'s to report
        if want.is_floating_point() != tensor.is_floating_point() or (
                not want.is_floating_point() and want.dtype != tensor.dtype):
            raise CheckpointError(f"{source}: tensor {name!r} is {str(tensor.dtype).replace('torch.', '')}, "
                                  f"the model's is {str(want.dtype).replace('torch.', '')}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values")


# Which encoder modality each built-in task reads; encoders of other modalities ("generic", from
# plugins) are not checked. ``task: lm`` over a speech model's weights printed "the" for every file.
TASK_MODALITIES = {"asr": "speech", "caption": "image", "text": "text", "lm": "none"}


def check_task_encoder(task: str, encoder, where: str, source: str = "") -> None:
    """Raise :class:`ConfigError` when ``encoder``'s modality is not the one ``task`` reads."""
    want, have = TASK_MODALITIES.get(task), getattr(encoder, "modality", "generic")
    if want is not None and have not in (want, "generic"):
        raise ConfigError(f"{source + ': ' if source else ''}task {task!r} reads {want} input, but {where} "
                          f"is a {have} encoder")


def check_resume_model(wanted: dict, saved: dict, folder) -> None:
    """Resuming with another model size would silently go on training the old one while the run's
    ``config.yaml`` says the new: refuse when a size setting (an integer) or an encoder's name in
    ``wanted`` (``{"decoder": ..., "tasks": route table}`` of the run's config) differs from
    ``saved`` (the checkpoint's)."""
    parts = [("model.decoder", wanted.get("decoder") or {}, saved.get("decoder") or {})]
    for name, route in (wanted.get("tasks") or {}).items():
        old = (saved.get("tasks") or {}).get(name)
        if old is None:
            raise ConfigError(f"model.tasks.{name}: the checkpoint to resume ({folder}) has no such task "
                              f"({', '.join(saved.get('tasks') or {})}); choose another output_dir to start afresh")
        if isinstance(route.get("encoder"), dict) and isinstance(old.get("encoder"), dict):
            parts.append((f"model.tasks.{name}.encoder", route["encoder"], old["encoder"]))
    for where, new, old in parts:
        for key, value in new.items():
            if key not in old or not (key == "name" or (isinstance(value, int) and not isinstance(value, bool))):
                continue
            if old[key] != value:
                raise ConfigError(f"{where}.{key}={value!r}, but the checkpoint to resume ({folder}) has "
                                  f"{old[key]!r}; restore the setting, or choose another output_dir to start afresh")


def check_checkpoint_files(folder) -> None:
    """:class:`CheckpointError` naming the first of a checkpoint's files that exists but is not a
    regular file (a FIFO, a device, a folder): reading it would block or never end."""
    import os
    from pathlib import Path

    from .data.files import check_regular
    from .errors import CheckpointError

    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "trainer_weights.safetensors"):
        if os.path.lexists(Path(folder) / name):
            check_regular(Path(folder) / name, "checkpoint file", CheckpointError)


def check_checkpoint_config(config: dict, source) -> None:
    """A checkpoint config's settings in range (model sizes, ``decoding``): :class:`ConfigError`
    naming ``source`` and the key."""
    if "model" in config:
        try:
            check_model(config["model"], "model")
        except ConfigError as error:
            raise ConfigError(f"{source}: describes no model mmseq can build ({error})") from None
    if "decoding" in config:
        decoding = config["decoding"]
        if decoding is not None and not isinstance(decoding, dict):
            raise ConfigError(f"{source}: decoding: expected a mapping, got {type(decoding).__name__}")
        check_decoding(decoding or {}, "decoding", str(source))


MAX_BATCH = 4096


def check_arguments(args) -> None:
    """The command line's decoding options (``--beam-size``, ``--batch-size``, ``--ctc-weight``,
    ``--device``, ...), each in its range, before a checkpoint is loaded or a file decoded."""
    names = {"beam_size": "--beam-size", "ctc_weight": "--ctc-weight", "length_penalty": "--length-penalty",
             "length_bonus": "--length-bonus", "lm_weight": "--lm-weight"}
    for name, flag in names.items():
        value = getattr(args, name, None)
        if value is not None:
            try:
                check_value(value, DECODING[name], flag)
            except ConfigError as error:
                raise ConfigError(str(error).replace(f"{flag}=", f"{flag} ", 1)) from None
    batch = getattr(args, "batch_size", None)
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch-size {batch}: must be an integer from 1 to {MAX_BATCH}")
    if getattr(args, "device", None) is not None:
        try:
            check_device(args.device)
        except ConfigError as error:
            raise ConfigError(f"--{error}") from None
    for flag in ("window", "segment_pause"):
        value = getattr(args, flag, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be a positive number of seconds")
