"""Everything a run does before its first step: check the settings, take the output folder, resume
the newest readable checkpoint or build the model as the run's stage says (a new model's tokenizer
is trained here, on the training manifest's text), read the data and make the loader."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from ..checkpoint import WEIGHTS_FILE, load, read_weights
from ..config import Config, config_to_dict
from ..data.batching import BucketBatchSampler
from ..data.files import check_output_folder
from ..data.manifest import read_manifest
from ..errors import CheckpointError, ConfigError, TrainingError
from ..model import Seq2Seq, route_table
from ..prompts import prompt_tokens_of
from ..tasks import ExampleDataset
from ..tokenizer import SentencePieceTokenizer, train_tokenizer
from .distributed import barrier, checkpoint_activations, layer_modules, shard_model
from .optim import WeightAverage, autocast_dtype
from .prompt_tuning import PromptTuningStage
from .scst import SelfCriticalStage
from .stages import Stage, Training
from .state import TRAINING_WEIGHTS, FolderLock, list_checkpoints, read_training_state


def make_stage(config: Config) -> Stage:
    """The run's stage: prompt tuning (``prompt_tuning.base``), SCST (``scst.enabled``), else
    plain training (a new model, or fine-tuning ``trainer.init_from``)."""
    if config.prompt_tuning.base:
        return PromptTuningStage(config)
    if config.scst.enabled:
        return SelfCriticalStage(config)
    return Training(config)


def check_settings(config: Config, device: torch.device) -> torch.dtype | None:
    """Refuse settings that cannot train, before any work; returns the autocast dtype (``None``: fp32)."""
    trainer = config.trainer
    config.check()  # every range (mmseq/checks.py)
    check_output_folder(Path(config.output_dir), "output_dir", ConfigError)
    if not config.data.train:
        raise ConfigError("data.train: no training manifest given")
    if trainer.accumulate < 1:
        raise ConfigError(f"trainer.accumulate={trainer.accumulate}: must be at least 1")
    if trainer.fsdp and trainer.ema:
        raise ConfigError("trainer.ema is not supported with trainer.fsdp (the average would need "
                          "its own shards); turn one off")
    dtype = autocast_dtype(trainer.precision, device)
    if trainer.fsdp and dtype == torch.float16:
        raise ConfigError("trainer.fsdp needs precision bf16 or fp32 (fp16 loss scaling of sharded "
                          "gradients is not supported)")
    return dtype


def prepare_folder(config: Config, lock: FolderLock, is_main: bool) -> None:
    """Seed, lock the output folder (one run per folder), write the resolved config."""
    torch.manual_seed(config.trainer.seed)
    random.seed(config.trainer.seed)
    if is_main:
        lock.acquire()
        (Path(config.output_dir) / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    barrier()


def resume(out: Path, log):
    """``(folder, model, (state, tensors))`` of the newest checkpoint whose every file reads (a
    corrupt one is reported and the one before tried); ``(None, None, None)`` when there is none.
    Raises :class:`TrainingError` when checkpoints exist but none reads: starting afresh would
    quietly put new checkpoints beside (and over) the old run's."""
    checkpoints, failures = list_checkpoints(out), []
    for folder in reversed(checkpoints):
        try:
            saved_state = read_training_state(folder)
            model = load(folder)
            if (folder / TRAINING_WEIGHTS).is_file():
                model.load_state_dict(read_weights(folder / TRAINING_WEIGHTS))
            return folder, model, saved_state
        except (CheckpointError, ConfigError) as error:
            log(f"cannot resume from {folder} ({error}); trying the one before")
            failures.append(error)
    if checkpoints:
        raise TrainingError(f"{out}: no checkpoint can be resumed from ({len(checkpoints)} tried; the "
                            f"newest: {failures[0]}); move them away, or choose another output_dir, to "
                            "start afresh")
    return None, None, None


def resume_or_build(config: Config, stage: Stage, is_main: bool, log):
    """``(model, resumed folder or None, saved (state, tensors) or None)``: the run's newest
    checkpoint, checked by the stage, else the stage's starting model, else a new model."""
    out = Path(config.output_dir)
    folder, model, saved_state = resume(out, log)
    if folder is not None:
        stage.check_resumed(model, folder)
    else:
        model = stage.start_model()
        if model is None:
            model = new_model(config, out, is_main)
    model.training_record.update(stage.record())
    return model, folder, saved_state


def new_model(config: Config, out: Path, is_main: bool) -> Seq2Seq:
    """A new model whose tokenizer is trained on the training manifest's text."""
    lines = read_manifest(config.data.train, (), skip_errors=True)[0]
    texts = [e["text"] for e in lines if "text" in e] + [c for e in lines for c in e.get("captions", [])]
    if not texts:  # before sentencepiece, which fails on an empty corpus with its own message
        raise TrainingError(f"{config.data.train}: no usable examples")
    # The task and control tokens of the config and those the manifest uses (its prompts,
    # <|context|> when a line has a context) are learned as tokens, never split as text.
    routes = route_table(config.model, config.task)
    tokenizer = new_tokenizer(config, out, is_main, texts, prompt_tokens_of(lines, routes))
    return Seq2Seq(config.model, tokenizer, config.task, asdict(config.decoding))


def new_tokenizer(config: Config, out: Path, is_main: bool, texts: list[str], more_tokens: list[str] = ()):
    """The ``tokenizer`` section's tokenizer trained on ``texts``; a sentencepiece model is trained
    once, by the main process, into ``out/tokenizer.model``."""
    settings = asdict(config.tokenizer)
    settings["prompt_tokens"] = list(dict.fromkeys([*settings["prompt_tokens"], *more_tokens]))
    kind = settings.pop("type")
    if kind != "sentencepiece":
        return train_tokenizer(kind, texts, **settings)
    path = out / "tokenizer.model"
    if is_main and not path.exists():
        train_tokenizer(kind, texts, out=path, **settings)
    barrier()
    return SentencePieceTokenizer(path, settings["prompt_tokens"])


def read_data(config: Config, task, stage: Stage, log):
    """``((training examples, skipped), (validation examples, skipped))`` (:func:`read_examples`)."""
    train = read_examples(task, config.data.train, stage.one_example_per_reference, config.data.batch_size, log)
    valid = read_examples(task, config.data.valid, False, config.data.batch_size, log) if config.data.valid else ([], 0)
    return train, valid


def read_examples(task, manifest: str, training: bool, budget: float, log) -> tuple[list[dict], int]:
    """A manifest's examples and how many were skipped (bad lines; when ``training``, examples over
    a batch's ``budget``). Each skip is logged; none left is a :class:`TrainingError`."""
    examples, errors = task.read(manifest, training, skip_errors=True)
    for error in errors:
        log(f"skipped: {error}")
    too_large = 0
    if training:
        # One example larger than a whole batch's budget (a 10-minute recording among sentences)
        # would be a batch of its own past the size the budget was set for: out of memory.
        kept = []
        for example in examples:
            size = task.length(example)
            if size <= budget:
                kept.append(example)
                continue
            log(f"skipped: {example['_where']}: larger than one batch's budget "
                f"(size {size:.4g}, data.batch_size={budget:g})")
        too_large, examples = len(examples) - len(kept), kept
    if not examples:
        raise TrainingError(f"{manifest}: no usable examples")
    return examples, len(errors) + too_large


def make_loader(config: Config, task, examples: list[dict], rank: int, world: int, pin_memory: bool):
    """``(sampler, dataset, loader, generator)``: this rank's length-bucketed batches of the
    training examples; ``generator`` draws the loader's worker seeds. Then seeds this rank's own
    random streams."""
    seed = config.trainer.seed
    lengths = [task.length(e) for e in examples]
    sampler = BucketBatchSampler(lengths, config.data.batch_size, config.data.max_batch_examples, shuffle=True,
                                 seed=seed, rank=rank, world_size=world, groups=[task.group(e) for e in examples])
    # The loader draws its worker seeds from its own generator, reseeded each epoch, not from
    # the global one: a resumed run's dropout then follows the same random stream.
    generator = torch.Generator()
    dataset = ExampleDataset(task, examples, training=True, seed=seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=task.collate, num_workers=config.data.num_workers,
                        generator=generator, pin_memory=pin_memory)
    # Every rank starts from the same weights but draws its own dropout and augmentation from here on.
    torch.manual_seed(seed * 1000 + 1 + rank)
    random.seed(seed * 1000 + 1 + rank)
    return sampler, dataset, loader, generator


def prepare_model(model, trainer, world: int, resume_from: Path | None):
    """``(weight average or None, sharded)``: the EMA (read back from a resumed checkpoint's
    ``model.safetensors``), activation checkpointing, and FSDP sharding over several processes."""
    ema = WeightAverage(model, trainer.ema) if trainer.ema else None
    if ema is not None and resume_from is not None:
        ema.model.load_state_dict(read_weights(resume_from / WEIGHTS_FILE))
    if trainer.activation_checkpointing:
        checkpoint_activations(layer_modules(model))
    sharded = trainer.fsdp and world > 1
    if sharded:
        shard_model(model)
    return ema, sharded


def standin_batch(task, dataset, manifest: str) -> dict:
    """One readable training example as a batch: what a rank whose batch is empty runs, with
    zero weight, so that it still joins the other ranks' gradient exchange."""
    for index in range(len(dataset)):
        batch = task.collate([dataset[index]])
        if batch["size"]:
            return batch
    raise TrainingError(f"{manifest}: no readable training example")
