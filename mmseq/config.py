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
from .checks import BOOL, MAX_BEAM, Choice, Float, Int, setting
from .data.files import read_regular_file
from .errors import ConfigError, InputError
from .decoding.options import DecodingOptions, check_decoding
from .tokenizer import TASK_TOKENS


@dataclass
class DataConfig:
    train: str | None = None  # manifests (JSON Lines)
    valid: str | None = None
    test: str | None = None
    batch_size: float = setting(32, Float(0, None, True))  # padded size of a batch: seconds of audio for speech, examples otherwise
    max_batch_examples: int | None = setting(None, Int(1, None, optional=True))  # cap on examples per batch whatever their size
    num_workers: int = setting(2, Int(0, 1024))  # DataLoader worker processes
    max_bad_examples: int = setting(100, Int(0))  # unreadable examples skipped in a run before training stops


@dataclass
class TokenizerConfig:
    type: str = setting("char", Choice("char", "sentencepiece"))  # trained on the training manifest's text
    vocab_size: int = setting(500, Int(2, 10_000_000))  # sentencepiece only
    model_type: str = setting("unigram", Choice("unigram", "bpe"))  # sentencepiece only
    prompt_tokens: list[str] = field(default_factory=lambda: list(TASK_TOKENS))  # task and control tokens


@dataclass
class TrainerConfig:
    max_epochs: int = setting(10, Int(1, 1_000_000))
    max_steps: int | None = setting(None, Int(1, None, optional=True))  # stop after this many optimizer steps
    lr: float = setting(1e-3, Float(0, 10, True))  # peak learning rate of AdamW
    weight_decay: float = setting(0.01, Float(0, 10))  # on matrices only, not on biases and norms
    warmup_steps: int = setting(500, Int(0))
    schedule: str = setting("cosine", Choice("cosine", "noam", "constant"))  # after warmup; noam: inverse square root
    min_lr_ratio: float = setting(0.02, Float(0, 1))  # cosine floor as a share of ``lr``
    grad_clip: float = setting(5.0, Float(0, None, True))
    accumulate: int = setting(1, Int(1, 1_000_000))  # batches per optimizer step
    # "auto" (bf16 on GPUs with it, else fp16; fp32 on CPU), "fp32", "bf16", "fp16"
    precision: str = setting("auto", Choice("auto", "fp32", "bf16", "fp16"))
    device: str = "auto"  # checked against this machine's devices (checks.check_device)
    seed: int = setting(0, Int(0, 2**63 - 1))
    compile: bool = setting(False, BOOL)  # torch.compile the model
    keep_best: int = setting(3, Int(0, 1_000_000))  # checkpoints kept by validation metric (the latest is always kept too)
    keep_last: int = setting(1, Int(1, 1_000_000))  # most recent checkpoints kept (raise it to average the last N)
    val_metric: str = "loss"  # "loss", "accuracy", a task's metric ("wer", "CIDEr"; "caption/CIDEr" with model.tasks)
    val_beam_size: int = setting(1, Int(1, MAX_BEAM))  # beam for the task metric during validation
    checkpoint_every: int = setting(0, Int(0))  # optimizer steps between mid-epoch checkpoints (0: end of epoch only)
    log_every: int = setting(25, Int(1))
    tensorboard: bool = True  # also write TensorBoard event files to output_dir/tensorboard (when installed)
    nonfinite_limit: int = setting(20, Int(1))  # steps in a row skipped for a non-finite loss or gradient before training stops
    ema: float = setting(0.0, Float(0, 1))  # decay of a moving average of the weights (e.g. 0.999; 0: off), saved and validated
    activation_checkpointing: bool = setting(False, BOOL)  # recompute each encoder/decoder layer in backward: less memory
    fsdp: bool = setting(False, BOOL)  # shard weights, gradients and optimizer state across processes (FSDP2)
    init_from: str | None = None  # a checkpoint folder a fresh run starts from: its weights, tokenizer and settings (fine-tuning)
    encoder_lr_scale: float = setting(1.0, Float(0, 100))  # the encoders' learning rate as a share of ``lr`` (below 1 for a pretrained encoder)


@dataclass
class ModelConfig:
    """The network. A model is a table of named tasks (``tasks``), each a route: its encoder, an
    optional CTC head, its decoding settings and its prompt; one decoder serves them all.
    ``encoder`` and ``ctc_weight`` are the shorthand for a table of one route, named by the
    config's ``task``."""

    encoder: dict = field(default_factory=lambda: {"name": "conformer"})  # name + the encoder's settings
    decoder: dict = field(default_factory=dict)  # DecoderConfig settings
    ctc_weight: float = setting(0.3, Float(0, 1))  # share of the CTC loss in joint training (0: no CTC head)
    label_smoothing: float = setting(0.1, Float(0, 1))
    prompting: dict = field(default_factory=dict)  # the one route's prompt settings (mmseq.prompts.Prompting)
    # The route table: {name: {"task": kind (default: the name), "encoder": {...} or the name of
    # another route whose encoder it shares, "ctc_weight": 0.0, "batch_size": budget in the task's
    # own unit, "decoding": {...}, "prompt": "<|asr|>" (default: the task's token), "prompting":
    # {controls, prompt_dropout, context_dropout, context_length} (see mmseq.prompts)}}.
    tasks: dict = field(default_factory=dict)


@dataclass
class SCSTConfig:
    """Self-critical sequence training, a second stage of a caption route (mmseq/training/scst.py)."""

    enabled: bool = setting(False, BOOL)  # train with the SCST objective instead of cross-entropy
    init_from: str | None = None  # cross-entropy checkpoint folder the stage starts from
    count: int = setting(5, Int(2, 1000))  # candidates per image (at least 2: each one's baseline is the others' mean)
    candidates: str = setting("sample", Choice("sample", "beam"))  # "sample" (temperature, top_k) or the count best of a beam
    temperature: float = setting(1.0, Float(0, 100, True))  # sampling temperature
    top_k: int = setting(0, Int(0, 10_000_000))  # sample among the k most likely tokens (0: all)
    max_length: int | None = setting(None, Int(1, 100_000, optional=True))  # most new tokens per candidate (None: the checkpoint's decoding.max_length)
    sigma: float = setting(6.0, Float(0, 1000, True))  # CIDEr-D's length penalty (its Gaussian's width, as in coco-caption)
    document_frequency_file: str = "cider_df.json"  # CIDEr-D's cache, relative to output_dir

    def check(self, source: str = "") -> "SCSTConfig":
        """The ranges, and ``init_from`` given when the stage is on."""
        if not self.enabled:
            return self
        checks.check_fields(self, SCSTConfig, "scst", source)
        if not self.init_from:
            raise ConfigError(f"{source + ': ' if source else ''}scst.init_from: SCST starts from a cross-entropy "
                              "checkpoint folder; none given")
        return self


@dataclass
class PromptTuningConfig:
    """Train a new task by soft prompt vectors (and LoRA), every other weight frozen (mmseq/training/prompt_tuning.py)."""

    base: str | None = None  # the trained checkpoint folder to tune from (None: off)
    task: str | None = None  # the new task's (route's) name
    from_task: str | None = None  # the base's route it shares encoder, CTC head and decoding with (default: its only one)
    vectors: int = setting(20, Int(1, 4096))  # soft prompt vectors placed before the task token
    train: str = setting("prompt", Choice("prompt", "all"))  # the vectors only, or every weight (the fine-tuning baseline)
    deep: bool = setting(False, BOOL)  # also a vector per prompt position at every decoder layer's input (P-tuning v2)
    lora: int = setting(0, Int(0, 4096))  # rank of LoRA updates of the decoder's attention, trained with the vectors (0: none)
    lora_encoder: int = setting(0, Int(0, 4096))  # rank of LoRA updates of every linear layer of the route's encoder (0: none)

    def check(self, config: "Config", source: str = "") -> "PromptTuningConfig":
        """The ranges, ``base`` and ``task`` given together, and no setting it cannot go with (EMA,
        FSDP, an SCST stage)."""
        where = source + ": " if source else ""
        checks.check_fields(self, PromptTuningConfig, "prompt_tuning", source)
        if not self.base and not self.task:
            return self
        for key in ("base", "task"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}prompt_tuning.{key}: needed with prompt_tuning "
                                  "(base: the trained checkpoint, task: the new task's name)")
        for on, name in ((config.trainer.ema, "trainer.ema"), (config.trainer.fsdp, "trainer.fsdp"),
                         (config.scst.enabled, "scst")):
            if on:
                raise ConfigError(f"{where}prompt_tuning does not go with {name}; turn one off")
        return self


@dataclass
class Config:
    task: str | None = None  # the one task of model.encoder (default asr); leave out with model.tasks
    output_dir: str = "exp/run"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    scst: SCSTConfig = field(default_factory=SCSTConfig)  # self-critical training, a second stage (mmseq/training/scst.py)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)

    def check(self, source: str = "") -> "Config":
        """Every section's ranges; errors name ``source`` (the YAML file) and the key. Run where a
        config enters (:func:`load_config`), so a bad value stops a run before its first step,
        not after an epoch (``val_beam_size: 0``) or never (``max_steps: -1``)."""
        for name in ("data", "tokenizer", "trainer", "scst"):  # (scst.init_from: when the stage starts)
            checks.check_fields(getattr(self, name), type(getattr(self, name)), name, source)
        try:
            checks.check_device(self.trainer.device)
        except ConfigError as error:
            raise ConfigError(f"{source + ': ' if source else ''}trainer.{error}") from None
        check_model(self.model, "model", source)
        check_decoding(self.decoding, "decoding", source)
        self.prompt_tuning.check(self, source)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(f"{source + ': ' if source else ''}output_dir={self.output_dir!r}: must be a folder path")
        return self


def check_model(model, prefix: str = "model", source: str = "") -> None:
    """``model`` settings (a ModelConfig or its dict): CTC weight, and in the decoder and each
    encoder the layer sizes (:data:`mmseq.checks.LAYERS`), with ``dim`` divisible by ``heads``."""
    where = source + ": " if source else ""
    values = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else model
    if not isinstance(values, dict):
        raise ConfigError(f"{where}{prefix}: expected a mapping, got {type(values).__name__}")
    checks.check_fields(values, ModelConfig, prefix, source)
    parts = [("decoder", values.get("decoder")), ("encoder", values.get("encoder"))]
    tasks = values.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise ConfigError(f"{where}{prefix}.tasks: expected a mapping")
    for name, task in tasks.items():
        if isinstance(task, dict):
            if not isinstance(task.get("encoder"), str):  # a string names the route whose encoder it shares
                parts.append((f"tasks.{name}.encoder", task.get("encoder")))
            if "decoding" in task:
                check_decoding(task["decoding"], f"{prefix}.tasks.{name}.decoding", source)
            checks.check_fields(task, {k: v for k, v in checks.rules_of(ModelConfig).items() if k == "ctc_weight"},
                                f"{prefix}.tasks.{name}", source)
    for part, settings in parts:
        if settings is not None:
            checks.check_layers(settings, f"{prefix}.{part}", source)


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
