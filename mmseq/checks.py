"""Allowed ranges of every setting, checked once where settings enter mmseq: the command line,
a checkpoint's ``config.json`` and a training YAML. Each error names the file and the key:
``exp/best/config.json: decoding.beam_size=1000000: must be an integer from 1 to 100``.

A setting carries its rule where it is declared: ``beam_size: int = setting(1, Int(1, 100))`` in
its dataclass (:mod:`mmseq.config`, :mod:`mmseq.decoding.options`), so the field reads as the
documentation of its range; :func:`check_fields` applies a dataclass's rules (or a table, such as
:data:`LAYERS` for the dict-valued encoder and decoder settings) to a dataclass or a dict. What stays
here is that machinery and the rules that span several settings or sources.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from .errors import CheckpointError, ConfigError

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


def setting(default=dataclasses.MISSING, rule: Rule | None = None, *, factory=dataclasses.MISSING):
    """A dataclass field that carries its allowed range: ``beam_size: int = setting(1, Int(1, 100))``.
    :func:`check_fields` reads it back (``rules_of``)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": rule} if rule else {})


def rules_of(cls) -> dict[str, Rule]:
    """``{field: Rule}`` of a dataclass whose fields were declared with :func:`setting`."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls) if "rule" in f.metadata}


def check_fields(settings, rules: dict[str, Rule] | type, prefix: str, source: str = "") -> None:
    """Apply ``rules`` (a table, or a dataclass whose fields carry their rules) to the fields of a
    dataclass or the keys of a dict (absent keys are skipped)."""
    if isinstance(rules, type):
        rules = rules_of(rules)
    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
    for name, rule in rules.items():
        if name in values:
            check_value(values[name], rule, f"{prefix}.{name}" if prefix else name, source)


# -- the tables -------------------------------------------------------------------------------
# The layer sizes of the decoder and of every encoder (built in or from a plugin) that has these
# settings: encoders take their settings as keyword arguments, so their ranges are one table here.
LAYERS = {
    "dim": Int(1, 65_536), "layers": Int(0, 1000), "heads": Int(1, 1024), "ffn_dim": Int(1, 1_000_000),
    "dropout": Float(0, 1), "max_length": Int(1, 1_000_000), "sample_rate": Int(1000, 768_000),
    "n_mels": Int(1, 1024), "n_fft": Int(2, 1 << 20), "hop_length": Int(1, 1 << 20),
}


def check_layers(settings, prefix: str, source: str = "") -> None:
    """The :data:`LAYERS` ranges of a decoder's or an encoder's settings (a dict), with ``dim``
    divisible by ``heads``."""
    where = source + ": " if source else ""
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}{prefix}: expected a mapping, got {type(settings).__name__}")
    check_fields(settings, LAYERS, prefix, source)
    dim, heads = settings.get("dim"), settings.get("heads")
    if isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads:
        raise ConfigError(f"{where}{prefix}.heads={heads}: must divide {prefix}.dim ({dim})")


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


def check_task_encoder(task, encoder, where: str, source: str = "") -> None:
    """Raise :class:`ConfigError` when ``encoder``'s modality is not the one ``task`` (a
    :class:`mmseq.tasks.Task`) reads. A task or encoder of modality "generic" (from plugins) is
    not checked: ``task: lm`` over a speech model's weights printed "the" for every file."""
    want, have = getattr(task, "modality", "generic"), getattr(encoder, "modality", "generic")
    if "generic" not in (want, have) and want != have:
        raise ConfigError(f"{source + ': ' if source else ''}task {task.kind!r} reads {want} input, but {where} "
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


MAX_BATCH = 4096


def check_arguments(args, rules: dict[str, Rule]) -> None:
    """The command line's decoding options (``--beam-size``, ``--batch-size``, ``--ctc-weight``,
    ``--device``, ...), each in its range (``rules``: the decoding settings'), before a checkpoint
    is loaded or a file decoded."""
    names = {"beam_size": "--beam-size", "ctc_weight": "--ctc-weight", "length_penalty": "--length-penalty",
             "length_bonus": "--length-bonus", "lm_weight": "--lm-weight", "boost_weight": "--boost-weight"}
    for name, flag in names.items():
        value = getattr(args, name, None)
        if value is not None:
            try:
                check_value(value, rules[name], flag)
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
