"""Experiment configuration: dataclasses with defaults that work, read from YAML with dotted
``key=value`` overrides (``trainer.max_epochs=3 model.decoder.layers=4``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import checks
from .errors import ConfigError, InputError
from .model import ModelConfig
from .training.scst import SCSTConfig
from .decoding.search import DecodingOptions
from .tokenizer import TASK_TOKENS


@dataclass
class DataConfig:
    train: str | None = None  # manifests (JSON Lines)
    valid: str | None = None
    test: str | None = None
    batch_size: float = 32  # padded size of a batch: seconds of audio for speech, examples otherwise
    max_batch_examples: int | None = None  # cap on examples per batch whatever their size
    num_workers: int = 2  # DataLoader worker processes
    max_bad_examples: int = 100  # unreadable examples skipped in a run before training stops

    def check(self, source: str = "") -> "DataConfig":
        checks.check_fields(self, checks.DATA, "data", source)
        return self


@dataclass
class TokenizerConfig:
    type: str = "char"  # "char" or "sentencepiece", trained on the training manifest's text
    vocab_size: int = 500  # sentencepiece only
    model_type: str = "unigram"  # sentencepiece only: "unigram" or "bpe"
    prompt_tokens: list[str] = field(default_factory=lambda: list(TASK_TOKENS))  # task and control tokens

    def check(self, source: str = "") -> "TokenizerConfig":
        checks.check_fields(self, checks.TOKENIZER, "tokenizer", source)
        return self


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.01  # on matrices only, not on biases and norms
    warmup_steps: int = 500
    schedule: str = "cosine"  # after warmup: "cosine", "noam" (inverse square root) or "constant"
    min_lr_ratio: float = 0.02  # cosine floor as a share of ``lr``
    grad_clip: float = 5.0
    accumulate: int = 1  # batches per optimizer step
    precision: str = "auto"  # "auto" (bf16 on GPUs with it, else fp16; fp32 on CPU), "fp32", "bf16", "fp16"
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the model
    keep_best: int = 3  # checkpoints kept by validation metric (the latest is always kept too)
    keep_last: int = 1  # most recent checkpoints kept (raise it to average the last N)
    val_metric: str = "loss"  # "loss", "accuracy", a task's metric ("wer", "CIDEr"; "caption/CIDEr" with model.tasks)
    val_beam_size: int = 1  # beam for the task metric during validation
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: end of epoch only)
    log_every: int = 25
    tensorboard: bool = True  # also write TensorBoard event files to output_dir/tensorboard (when installed)
    nonfinite_limit: int = 20  # steps in a row skipped for a non-finite loss or gradient before training stops
    ema: float = 0.0  # decay of a moving average of the weights (e.g. 0.999; 0: off), saved and validated
    activation_checkpointing: bool = False  # recompute each encoder/decoder layer in backward: less memory
    fsdp: bool = False  # shard weights, gradients and optimizer state across processes (FSDP2)
    init_from: str | None = None  # a checkpoint folder a fresh run starts from: its weights, tokenizer and settings (fine-tuning)
    encoder_lr_scale: float = 1.0  # the encoders' learning rate as a share of ``lr`` (below 1 for a pretrained encoder)

    def check(self, source: str = "") -> "TrainerConfig":
        """Every setting in its range (see :data:`mmseq.checks.TRAINER`), and the device known."""
        checks.check_fields(self, checks.TRAINER, "trainer", source)
        try:
            checks.check_device(self.device)
        except ConfigError as error:
            raise ConfigError(f"{source + ': ' if source else ''}trainer.{error}") from None
        return self


@dataclass
class PromptTuningConfig:
    """Train a new task by soft prompt vectors (and LoRA), every other weight frozen (mmseq/prompt_tuning.py)."""

    base: str | None = None  # the trained checkpoint folder to tune from (None: off)
    task: str | None = None  # the new task's (route's) name
    from_task: str | None = None  # the base's route it shares encoder, CTC head and decoding with (default: its only one)
    vectors: int = 20  # soft prompt vectors placed before the task token
    train: str = "prompt"  # "prompt" (the vectors only) or "all" (every weight: the fine-tuning baseline)
    deep: bool = False  # also a vector per prompt position at every decoder layer's input (P-tuning v2)
    lora: int = 0  # rank of LoRA updates of the decoder's attention, trained with the vectors (0: none; mmseq/lora.py)


@dataclass
class Config:
    task: str | None = None  # the one task of model.encoder (default asr); leave out with model.tasks
    output_dir: str = "exp/run"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    scst: SCSTConfig = field(default_factory=SCSTConfig)  # self-critical training, a second stage (mmseq/scst.py)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)

    def check(self, source: str = "") -> "Config":
        """Every section's ranges; errors name ``source`` (the YAML file) and the key. Run where a
        config enters (:func:`load_config`), so a bad value stops a run before its first step,
        not after an epoch (``val_beam_size: 0``) or never (``max_steps: -1``)."""
        self.data.check(source)
        self.tokenizer.check(source)
        self.trainer.check(source)
        checks.check_model(self.model, "model", source)
        checks.check_decoding(self.decoding, "decoding", source)
        checks.check_prompt_tuning(self, source)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(f"{source + ': ' if source else ''}output_dir={self.output_dir!r}: must be a folder path")
        return self


MAX_CONFIG_BYTES = 10_000_000  # a YAML config is a few kilobytes


class _Loader(yaml.SafeLoader):
    """yaml's safe loader without aliases (``*name``): nine nested lists of aliases expand a
    billion-fold (the "billion laughs"), and no mmseq setting needs one. Refused at the first."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not supported in configs")
        return super().compose_node(parent, index)


def _yaml(text: str):
    """``text`` parsed by :class:`_Loader` (plain data only, no aliases)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_value(text: str):
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
    tree[parts[-1]] = value


def _checked(value, hint, where: str):
    """``value`` if it fits the field type ``hint`` (ints and numeric strings such as YAML's
    ``1e-3`` widened to float), else :class:`ConfigError`. Types other than the simple ones YAML
    gives are not checked."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _checked(value, option, where)
            except ConfigError:
                pass
    else:
        kind = typing.get_origin(hint) or hint
        if kind is float and not isinstance(value, bool):
            try:
                return float(value) if isinstance(value, (int, float, str)) else _fail(value, hint, where)
            except ValueError:
                pass
        elif kind in (int, bool, str, list, dict):
            if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                return value
        else:
            return value
    return _fail(value, hint, where)


def _fail(value, hint, where: str):
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _build(cls, values: dict, where: str):
    """A dataclass from a dict; nested dataclasses recursively, unknown keys and values of the
    wrong type refused. Fields typed ``dict`` (encoder and decoder settings) are merged over
    their defaults, so ``model.encoder.dim=64`` keeps the default encoder name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {where + '.' if where else ''}{unknown[0]}; "
                          f"known: {', '.join(sorted(fields))}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved here: leave those values unchecked
        hints = {}
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        sample = default() if default else None
        key = f"{where}.{name}".strip(".")
        if dataclasses.is_dataclass(sample):
            kwargs[name] = _build(type(sample), value or {}, key)
        else:
            value = _checked(value, hints[name], key) if name in hints else value
            kwargs[name] = {**sample, **value} if isinstance(sample, dict) else value
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config and apply ``key=value`` overrides; unknown keys raise :class:`ConfigError`."""
    tree = {}
    if path is not None:
        from .data.files import read_regular_file

        path = Path(path)
        try:
            data = read_regular_file(path, MAX_CONFIG_BYTES, "config file")
        except InputError as error:
            raise ConfigError(str(error)) from None
        try:
            tree = _yaml(data.decode("utf-8-sig")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not valid UTF-8 (byte {error.start + 1})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(error)})") from None
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key=value")
        key, value = override.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_value(value))
    return _build(Config, tree, "").check(str(path) if path is not None else "")


def _one_line(error) -> str:
    return " ".join(str(error).split())


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
