"""The one trainer every task shares: from a laptop CPU to many GPUs on many nodes.

Started as ``mmseq train CONFIG`` it runs one process; started by ``torchrun`` (or
``mmseq train --nproc N``) every process joins one process group (NCCL on GPUs, gloo on CPUs) and
trains with DistributedDataParallel, or with FSDP2 (``trainer.fsdp``) when the weights, gradients
and optimizer state should be sharded. See docs/distributed.md for several nodes and SLURM.

One optimizer step is the same update whatever the split: the model returns its loss summed over
examples, and the trainer divides the gradients by the examples of the whole step, counted over
every micro-batch (``trainer.accumulate``) and every rank. The length-bucketed sampler deals each
rank its own batches, every example once per epoch.

Nothing is lost: checkpoints are written atomically (a temporary folder renamed into place, so a
failed or killed write leaves the previous one whole) at the end of each epoch and every
``trainer.checkpoint_every`` steps; they hold the optimizer, scheduler, loss scaler, every rank's
random state and the data position, so a run killed at any moment and restarted from the same
folder ends with the same weights as a run never stopped (bit for bit on CPU). SIGINT and SIGTERM
save a checkpoint before exiting. A step whose loss or gradients are not finite is skipped on every
rank, counted, and too many in a row stop training with a clear error.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import (STATE_JSON, STATE_TENSORS, TRAINING_WEIGHTS, WEIGHTS_FILE, FolderLock, list_checkpoints,
                         rank_best, read_training_state, read_weights, rotate, step_folder, write_weights)
from ..checks import check_resume_model
from ..data.files import check_output_folder
from ..config import Config, config_to_dict
from ..data.batching import BucketBatchSampler
from .distributed import (all_reduce_sum, barrier, checkpoint_activations, distributed_setup, full_weights,
                          gather_objects, layer_modules, leave_process_group, shard_model)
from ..errors import CheckpointError, ConfigError, TrainingError
from ..inference.evaluate import decode_examples, score_rows
from ..model import Seq2Seq, route_table
from ..checkpoint import load, save
from .optim import WeightAverage, autocast_dtype, lr_factor, make_optimizer
from .logs import RunLog, progress_bar_settings
from .prompt_tuning import check_resumed, size_line, training_table
from .prompt_tuning import start_model as start_tuning
from .scst import SelfCriticalObjective, start_model
from ..tasks import ExampleDataset
from ..tokenizer import train_tokenizer

__all__ = ["Trainer", "TrainingError", "list_checkpoints", "train"]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains ``config.task`` from ``config.data`` into ``config.output_dir``; see :func:`train`.

    The parts a test or a benchmark may drive alone: :meth:`setup`, :meth:`forward_backward`
    (one micro-batch), :meth:`optimizer_step`, :meth:`train_epoch`, :meth:`validate`, :meth:`save`.
    """

    def __init__(self, config: Config):
        self.config = config
        self.out = Path(config.output_dir)
        self.rank, self.world, self.device = distributed_setup(config.trainer.device)
        self.is_main = self.rank == 0
        self.stop_signal = None
        self.lock = FolderLock(self.out)

    # -- set up: a few named steps ---------------------------------------------------------------
    def setup(self) -> None:
        """Everything a run needs before its first step, in order."""
        self._check_settings()
        self._prepare_folder()
        self._resume_or_build()
        self._read_data()
        self._make_loader()
        self._make_optimizer()
        self._wrap_network()

    def _check_settings(self) -> None:
        trainer = self.config.trainer
        self.config.check()  # every range (mmseq/checks.py), before any work
        check_output_folder(self.out, "output_dir", ConfigError)
        if not self.config.data.train:
            raise ConfigError("data.train: no training manifest given")
        if trainer.accumulate < 1:
            raise ConfigError(f"trainer.accumulate={trainer.accumulate}: must be at least 1")
        if trainer.fsdp and trainer.ema:
            raise ConfigError("trainer.ema is not supported with trainer.fsdp (the average would need "
                              "its own shards); turn one off")
        self.dtype = autocast_dtype(trainer.precision, self.device)
        if trainer.fsdp and self.dtype == torch.float16:
            raise ConfigError("trainer.fsdp needs precision bf16 or fp32 (fp16 loss scaling of sharded "
                              "gradients is not supported)")

    def _prepare_folder(self) -> None:
        """Seed, lock the output folder (one run per folder), write the resolved config."""
        torch.manual_seed(self.config.trainer.seed)
        random.seed(self.config.trainer.seed)
        if self.is_main:
            self.lock.acquire()
            (self.out / "config.yaml").write_text(_yaml_dump(config_to_dict(self.config)))
        barrier()

    def _resume_or_build(self) -> None:
        """The model: from the newest checkpoint whose every file reads (a corrupt one is reported
        and the one before tried), else the SCST stage's starting checkpoint, else a new model
        with a tokenizer trained on the training manifest's text."""
        config = self.config
        self.resume_from, self.saved_state, failures = None, None, []
        checkpoints = list_checkpoints(self.out)
        for folder in reversed(checkpoints):
            try:
                self.saved_state = read_training_state(folder)
                self.model = load(folder)
                if (folder / TRAINING_WEIGHTS).is_file():
                    self.model.load_state_dict(read_weights(folder / TRAINING_WEIGHTS))
                self.resume_from = folder
                break
            except (CheckpointError, ConfigError) as error:
                self.log_message(f"cannot resume from {folder} ({error}); trying the one before")
                failures.append(error)
        tuning = bool(config.prompt_tuning.base)  # prompt tuning: see mmseq/prompt_tuning.py
        if self.resume_from is not None and tuning:
            check_resumed(config.prompt_tuning, self.model, self.resume_from)
        elif self.resume_from is not None and not config.scst.enabled and not config.trainer.init_from:
            # (an SCST stage's model is its init_from's, a fine-tuned one its trainer.init_from's)
            check_resume_model({"decoder": config.model.decoder, "tasks": route_table(config.model, config.task)},
                               {"decoder": self.model.config.decoder, "tasks": self.model.config.tasks}, self.resume_from)
        if checkpoints and self.resume_from is None:
            # Starting afresh would quietly put new checkpoints beside (and over) the old run's.
            raise TrainingError(f"{self.out}: no checkpoint can be resumed from ({len(checkpoints)} tried; the "
                                f"newest: {failures[0]}); move them away, or choose another output_dir, to "
                                "start afresh")
        if self.resume_from is None and tuning:
            self.model = start_tuning(config.prompt_tuning)  # the base with the new task's route
        elif self.resume_from is None and config.scst.enabled:
            self.model = start_model(config.scst)  # SCST fine-tunes a cross-entropy checkpoint
        elif self.resume_from is None and config.trainer.init_from:
            self.model = load(config.trainer.init_from)  # fine-tuning: a pretrained (e.g. imported) checkpoint
        elif self.resume_from is None:
            from ..data.manifest import read_manifest
            lines = read_manifest(config.data.train, (), skip_errors=True)[0]
            texts = [e["text"] for e in lines if "text" in e] + [c for e in lines for c in e.get("captions", [])]
            if not texts:  # before sentencepiece, which fails on an empty corpus with its own message
                raise TrainingError(f"{config.data.train}: no usable examples")
            # The task and control tokens of the config and those the manifest uses (its prompts,
            # <|context|> when a line has a context) are learned as tokens, never split as text.
            from ..prompts import prompt_tokens_of
            tokenizer = self._tokenizer(texts, prompt_tokens_of(lines, route_table(config.model, config.task)))
            self.model = Seq2Seq(config.model, tokenizer, config.task, asdict(config.decoding))
        self.model.to(self.device).train()
        self.task = self.model.task  # the route table: reads, batches and scores every task
        if tuning:  # only the soft prompt is trained, and only the new task read
            self.task = training_table(self.model, self.log_message)
        self.val_metric = self.task.metric(config.trainer.val_metric)  # its name and direction

    def _tokenizer(self, texts: list[str], more_tokens: list[str] = ()):
        settings = asdict(self.config.tokenizer)
        settings["prompt_tokens"] = list(dict.fromkeys([*settings["prompt_tokens"], *more_tokens]))
        kind = settings.pop("type")
        if kind == "sentencepiece":
            path = self.out / "tokenizer.model"
            if self.is_main and not path.exists():
                train_tokenizer(kind, texts, out=path, **settings)
            barrier()
            from ..tokenizer import SentencePieceTokenizer
            return SentencePieceTokenizer(path, settings["prompt_tokens"])
        return train_tokenizer(kind, texts, **settings)

    def _read_data(self) -> None:
        config = self.config
        # SCST reads one example per image (all its captions are the references), not one per caption.
        self.train_examples, self.manifest_errors = self._read(config.data.train, not config.scst.enabled)
        self.valid_examples, self.valid_manifest_errors = [], 0
        if config.data.valid:
            self.valid_examples, self.valid_manifest_errors = self._read(config.data.valid, False)

    def _read(self, manifest: str, training: bool):
        examples, errors = self.task.read(manifest, training, skip_errors=True)
        for error in errors:
            self.log_message(f"skipped: {error}")
        too_large = 0
        if training:
            # One example larger than a whole batch's budget (a 10-minute recording among sentences)
            # would be a batch of its own past the size the budget was set for: out of memory.
            budget, kept = self.config.data.batch_size, []
            for example in examples:
                size = self.task.length(example)
                if size <= budget:
                    kept.append(example)
                    continue
                self.log_message(f"skipped: {example['_where']}: larger than one batch's budget "
                                 f"(size {size:.4g}, data.batch_size={budget:g})")
            too_large, examples = len(examples) - len(kept), kept
        if not examples:
            raise TrainingError(f"{manifest}: no usable examples")
        return examples, len(errors) + too_large

    def _make_loader(self) -> None:
        config, trainer = self.config, self.config.trainer
        lengths = [self.task.length(e) for e in self.train_examples]
        self.sampler = BucketBatchSampler(lengths, config.data.batch_size, config.data.max_batch_examples,
                                          shuffle=True, seed=trainer.seed, rank=self.rank, world_size=self.world,
                                          groups=[self.task.group(e) for e in self.train_examples])
        # The loader draws its worker seeds from its own generator, reseeded each epoch, not from
        # the global one: a resumed run's dropout then follows the same random stream.
        self.data_generator = torch.Generator()
        self.dataset = ExampleDataset(self.task, self.train_examples, training=True, seed=trainer.seed)
        self.loader = DataLoader(self.dataset,
                                 batch_sampler=self.sampler, collate_fn=self.task.collate,
                                 num_workers=config.data.num_workers, generator=self.data_generator,
                                 pin_memory=self.device.type == "cuda")
        # Every rank starts from the same weights (above) but draws its own dropout and
        # augmentation from here on.
        torch.manual_seed(trainer.seed * 1000 + 1 + self.rank)
        random.seed(trainer.seed * 1000 + 1 + self.rank)

    def _make_optimizer(self) -> None:
        """Weight average, activation checkpointing, sharding, optimizer, schedule, loss scaler,
        and the training state (read back from the resumed checkpoint)."""
        trainer = self.config.trainer
        self.ema = WeightAverage(self.model, trainer.ema) if trainer.ema else None
        if self.ema is not None and self.resume_from is not None:
            self.ema.model.load_state_dict(read_weights(self.resume_from / WEIGHTS_FILE))
        if trainer.activation_checkpointing:
            checkpoint_activations(layer_modules(self.model))
        self.sharded = trainer.fsdp and self.world > 1
        if self.sharded:
            shard_model(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model, trainer)
        self.batches_per_epoch = len(self.sampler.epoch_batches())  # this rank's; the same on every rank
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / trainer.accumulate)
        self.total_steps = trainer.max_steps or self.steps_per_epoch * trainer.max_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, trainer))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": [], "bad_examples": 0,
                      "bad_examples_in_epoch": 0, "nonfinite_in_row": 0, "skipped_steps": 0, "world_size": self.world,
                      "sharded": self.sharded}
        if self.resume_from is not None:
            self._load_state(self.resume_from, *self.saved_state)

    def _wrap_network(self) -> None:
        """What a step calls: the model, or the SCST objective around it; DDP; torch.compile."""
        config = self.config
        self.network = self.model
        if config.scst.enabled:  # the loss is the self-critical objective, a module around the model
            self.network = SelfCriticalObjective(self.model, config.scst, self.train_examples, self.out)
        if self.world > 1 and not self.sharded:
            self.network = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ddp = self.network
        if config.trainer.compile:
            self.network = torch.compile(self.network)
        self.standin = self._standin_batch() if self.world > 1 else None
        self.running = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, examples, correct, tokens

    def _standin_batch(self) -> dict:
        """One readable training example as a batch: what a rank whose batch is empty runs, with
        zero weight, so that it still joins the other ranks' gradient exchange."""
        dataset = self.loader.dataset
        for index in range(len(dataset)):
            batch = self.task.collate([dataset[index]])
            if batch["size"]:
                return batch
        raise TrainingError(f"{self.config.data.train}: no readable training example")

    def _load_state(self, folder: Path, state: dict, tensors: dict) -> None:
        """Put the optimizer, scheduler, scaler, random state and data position read from ``folder``
        (by :func:`mmseq.checkpoint.read_training_state`) in place."""
        if state.get("sharded", False) != self.sharded:
            how = "sharded (trainer.fsdp, several processes)" if state.get("sharded") else "unsharded"
            raise ConfigError(f"{folder}: its optimizer state was saved {how}; resume it the same way")
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(self.model, self.optimizer, tensors["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        self.scaler.load_state_dict(tensors["scaler"])
        rngs = tensors["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        saved_world = state.get("world_size", 1)
        if saved_world != self.world and state["batch_in_epoch"]:
            # A rank's position counts its own batches: carry the share of the epoch already done over.
            done = state["batch_in_epoch"] * saved_world
            state["batch_in_epoch"] = done // self.world
            self.log_message(f"resuming a {saved_world}-process run with {self.world} processes: the epoch "
                             "goes on from about the same point, not exactly (same process count: exact)")
        state["world_size"] = self.world
        self.state.update(state)
        self.log_message(f"resumed from {folder} (epoch {self.state['epoch'] + 1}, "
                         f"batch {self.state['batch_in_epoch']}, step {self.state['step']})")

    # -- logging ------------------------------------------------------------------------------
    def log_message(self, text: str) -> None:
        if self.is_main:
            tqdm.write(text, file=sys.stderr)

    def warn(self, text: str) -> None:
        """A message from any rank (skipped examples are found where they are loaded)."""
        tqdm.write(f"[rank {self.rank}] {text}" if self.world > 1 else text, file=sys.stderr)

    def log_row(self, row: dict) -> None:
        """A row of ``log.csv`` and of TensorBoard's scalars (mmseq/logs.py)."""
        if self.is_main:
            self.run_log().row(row)

    def run_log(self) -> RunLog:
        if getattr(self, "_run_log", None) is None:  # made at the first row, once resume knows its step
            resumed = getattr(self, "resume_from", None)
            self._run_log = RunLog(self.out, self.config.trainer.tensorboard,
                                   resumed_step=int(resumed.name.split("-")[1]) if resumed else 0)
        return self._run_log

    # -- training ---------------------------------------------------------------------------------
    def _handle_signal(self, number, frame) -> None:
        # A second signal stops at once (the last checkpoint stays), unless it comes within two
        # seconds: Ctrl-C under torchrun reaches a worker twice, from the terminal and from torchrun.
        if self.stop_signal is not None and time.monotonic() - self._signal_time > 2.0:
            raise KeyboardInterrupt
        if self.stop_signal is None:
            self.stop_signal, self._signal_time = number, time.monotonic()
            self.log_message(f"signal {number}: saving a checkpoint at the end of this step, then stopping")

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop (all ranks agree, so they all save and leave)."""
        return all_reduce_sum([float(self.stop_signal is not None)], self.device)[0] > 0

    def train(self) -> Path | None:
        try:
            self.setup()
        except BaseException:
            self.lock.release()  # a run that could not start leaves the folder free
            raise
        config = self.config.trainer
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.state["batch_in_epoch"] >= self.batches_per_epoch:
                # Stopped by a signal just after an epoch's last step: close that epoch (validation,
                # the epoch count, its checkpoint) as a run never stopped would have.
                metric = self.validate()
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
                self._save_or_fail(metric, "the checkpoint of the epoch's end")
            while self.state["epoch"] < config.max_epochs and self.state["step"] < self.total_steps:
                if self.train_epoch():  # stopped by a signal
                    self._save_or_fail(None, "the checkpoint on stopping")
                    self._exit_on_signal()
                metric = self.validate()
                if self.state["batch_in_epoch"] >= self.batches_per_epoch:  # not cut short by max_steps
                    self.state["epoch"] += 1
                    self.state["batch_in_epoch"] = 0
                if self.state["epoch"] >= config.max_epochs or self.state["step"] >= self.total_steps:
                    self._save_or_fail(metric, "the last checkpoint")
                    break
                if not self.save(metric):
                    self.log_message("training goes on; the next checkpoint will try again")
                if self._stop_requested():  # a signal during validation
                    self._exit_on_signal()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.lock.release()  # free the folder for the next run in this process
        best = self.out / "best"
        return best if best.exists() else None

    def _save_or_fail(self, metric, what: str) -> None:
        if not self.save(metric):
            raise TrainingError(f"{self.out}: could not write {what}; the checkpoint before it is intact")

    def _exit_on_signal(self) -> None:
        number = self.stop_signal or signal.SIGTERM  # or the signal went to another rank
        self.log_message(f"stopped by signal {number}: checkpoint saved at step {self.state['step']}; "
                         "rerun the same command to resume")
        raise SystemExit(128 + number)

    def _gradient_sync(self, sync: bool):
        """Within an accumulation window only the last micro-batch exchanges gradients."""
        if self.world == 1:
            return nullcontext()
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else self.ddp.no_sync()

    def forward_backward(self, batch: dict, sync: bool = True) -> None:
        """Forward and backward of one micro-batch; its gradients add to those already there.

        The loss is summed over the batch's examples (the step divides by the global count). A
        non-finite loss still runs backward: with several ranks every one must take part in the
        gradient exchange, and the non-finite gradients it spreads make every rank skip the step.
        """
        weight = 1.0
        if not batch["size"]:
            if self.world == 1:
                return  # nothing to learn and nobody waiting
            batch, weight = self.standin, 0.0
        batch = _to_device(batch, self.device)
        with self._gradient_sync(sync):
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                out = self.network(batch)
            loss_sum = out["loss_sum"]
            self.scaler.scale(loss_sum * weight).backward()
        if weight:
            figures = torch.stack([loss_sum.detach().double(), torch.tensor(float(out["examples"]), device=self.device,
                                   dtype=torch.float64), out["correct"].double(), out["tokens"].double()])
            self.running += torch.where(torch.isfinite(figures[0]), figures, 0.0)  # no device sync here

    def optimizer_step(self, examples: int, bad_examples: int = 0) -> bool:
        """Scale the summed gradients to the mean over the step's examples on all ranks, clip, and
        step, unless they are not finite (then the step is skipped and counted). Returns whether
        the weights changed."""
        config = self.config.trainer
        examples, bad_examples, stop = all_reduce_sum(
            [float(examples), float(bad_examples), float(self.stop_signal is not None)], self.device)
        self.stop_everywhere = stop > 0
        self.state["bad_examples"] += int(bad_examples)
        self.state["bad_examples_in_epoch"] += int(bad_examples)
        limit = self.config.data.max_bad_examples
        if self.state["bad_examples"] + self.manifest_errors > limit:
            raise TrainingError(f"{self.state['bad_examples'] + self.manifest_errors} unreadable examples, "
                                f"more than data.max_bad_examples={limit}")
        if examples == 0:  # a window of unreadable examples only
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        # DDP and FSDP average the gradients over ranks; make them the mean over the examples.
        torch._foreach_mul_(grads, self.world / examples)
        norm = torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip if config.grad_clip > 0 else math.inf)
        if hasattr(norm, "full_tensor"):  # FSDP: the same norm on every rank, as a DTensor
            norm = norm.full_tensor()
        if not torch.isfinite(norm):
            self.state["nonfinite_in_row"] += 1
            self.state["skipped_steps"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.log_message(f"step {self.state['step'] + 1} skipped: non-finite loss or gradients "
                             f"({self.state['nonfinite_in_row']} in a row, {self.state['skipped_steps']} in all)")
            if self.state["nonfinite_in_row"] >= config.nonfinite_limit:
                raise TrainingError(f"{self.state['nonfinite_in_row']} steps in a row had non-finite losses or "
                                    f"gradients (trainer.nonfinite_limit={config.nonfinite_limit}); lower the "
                                    "learning rate, check the data, or use precision=fp32")
            return False
        self.state["nonfinite_in_row"] = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state["step"] += 1
        if self.ema is not None:
            self.ema.update(self.model, self.state["step"])
        return True

    def train_epoch(self) -> bool:
        """Train from the current data position to the end of the epoch (or ``max_steps``).
        Returns True when stopped by a signal (a checkpoint must then be saved)."""
        config = self.config.trainer
        epoch = self.state["epoch"]
        if self.state["batch_in_epoch"] == 0:
            self.state["bad_examples_in_epoch"] = 0
        self.sampler.set_epoch(epoch, self.state["batch_in_epoch"])
        self.dataset.epoch = epoch  # prompt and context dropout draw per (epoch, example)
        self.data_generator.manual_seed(config.seed * 100003 + epoch)
        self.model.train()
        self.stop_everywhere = False
        # Counted by hand after each batch's work (iterating tqdm(loader) counts a batch only when the
        # next is fetched, so the last batch of a run stopped by max_steps was never shown).
        bar = tqdm(total=len(self.loader), desc=f"epoch {epoch + 1}", disable=not self.is_main,
                   **progress_bar_settings())
        window_examples = window_bad = 0
        for batch in self.loader:
            for error in batch["errors"]:
                self.warn(f"skipped: {error}")
            window_bad += len(batch["errors"])
            window_examples += batch["size"]
            self.state["batch_in_epoch"] += 1
            position = self.state["batch_in_epoch"]
            # Windows start at multiples of ``accumulate``, and the epoch's last one may be short:
            # a checkpoint (always at a step boundary) then resumes on the same windows.
            sync = position % config.accumulate == 0 or position == self.batches_per_epoch
            self.forward_backward(batch, sync)
            bar.update()
            if not sync:
                continue
            self.optimizer_step(window_examples, window_bad)
            window_examples = window_bad = 0
            if self.state["step"] % config.log_every == 0:
                self._log_training(bar)
            if config.checkpoint_every and self.state["step"] % config.checkpoint_every == 0 \
                    and not self.stop_everywhere:
                self.save()
            if self.stop_everywhere:
                bar.close()
                return True
            if self.state["step"] >= self.total_steps:
                break
        bar.close()
        self._log_skipped()
        return False

    def _log_skipped(self) -> None:
        """One line at the end of an epoch once any example was skipped: those of this epoch, on all
        ranks, and the run's total that ``data.max_bad_examples`` limits (bad manifest lines too)."""
        in_run = self.state["bad_examples"] + self.manifest_errors
        if not in_run:
            return
        lines = f", {self.manifest_errors} of them bad manifest lines" if self.manifest_errors else ""
        self.log_message(f"epoch {self.state['epoch'] + 1}: skipped {self.state['bad_examples_in_epoch']} "
                         f"unreadable examples ({in_run} in all{lines}; limit "
                         f"data.max_bad_examples={self.config.data.max_bad_examples})")

    def _log_training(self, bar) -> None:
        loss_sum, examples, correct, tokens = all_reduce_sum(self.running.tolist(), self.device)
        self.running.zero_()
        if not examples:
            return
        loss, accuracy, lr = loss_sum / examples, correct / max(tokens, 1), self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", lr=f"{lr:.2e}")
        self.log_row({"split": "train", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                      "loss": round(loss, 4), "accuracy": round(accuracy, 4), "lr": lr})

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Loss, accuracy and the tasks' metrics on ``data.valid``, each rank scoring its share
        (:func:`mmseq.inference.evaluate.decode_examples`) and the sums and hypotheses gathered; the weights
        scored are the EMA's when there is one. An unreadable example is left out and logged
        (``skipped: FILE:LINE: reason``); the summary counts them with the manifest's bad lines
        as ``skipped=N``."""
        if not self.valid_examples:
            return None
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        decode = self.val_metric.name not in ("loss", "accuracy")
        with full_weights(model) if self.sharded else nullcontext():
            decoded = decode_examples(model, self.task, self.valid_examples[self.rank::self.world],
                                      self.config.data.batch_size, self.config.data.max_batch_examples,
                                      self.config.data.num_workers, decode=decode, losses=True, dtype=self.dtype,
                                      desc="valid", progress=self.is_main, warn=self.warn,
                                      beam_size=self.config.trainer.val_beam_size)
        loss_sum, examples, correct, tokens, unreadable = all_reduce_sum(
            decoded.sums + [float(len(decoded.skipped))], self.device)
        loss, accuracy = loss_sum / max(examples, 1), correct / max(tokens, 1)
        metrics = {"loss": loss, "accuracy": accuracy}
        if decode:
            rows = [row for part in gather_objects(decoded.rows) for row in part]
            metrics.update(score_rows(self.task, rows))
            if self.val_metric.name not in metrics and self.config.trainer.val_metric not in metrics:
                raise ConfigError(f"trainer.val_metric={self.config.trainer.val_metric!r}: the validation "
                                  f"scores are {', '.join(metrics)}")
        metric = metrics.get(self.config.trainer.val_metric, metrics.get(self.val_metric.name))
        summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        skipped = int(unreadable) + self.valid_manifest_errors
        if skipped:
            summary += f" skipped={skipped}"
        self.log_message(f"epoch {self.state['epoch'] + 1} valid: {summary}")
        self.log_row({"split": "valid", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                      "loss": round(loss, 4), "accuracy": round(accuracy, 4), "metric": metric,
                      "metrics": metrics})
        if self.is_main and not self.sharded:  # (sharded weights are only whole inside full_weights)
            self.run_log().attention(model, self.valid_examples[0], self.state["step"])
        self.model.train()
        return metric

    # -- saving ---------------------------------------------------------------------------------
    def _training_state(self) -> tuple[dict | None, dict]:
        """The weights to write (``None``: the model's own) and the optimizer's state; with FSDP
        both are gathered from every rank's shards (all ranks must call this)."""
        if not self.sharded:
            return None, self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=options),
                get_optimizer_state_dict(self.model, self.optimizer, options=options))

    def save(self, metric: float | None = None) -> bool:
        """Checkpoint: every rank gives its state, rank 0 writes. Keeps the ``keep_last`` latest and
        the ``keep_best`` best. Returns False, on every rank, when the write failed (disk full):
        the previous checkpoints are then untouched."""
        rngs = gather_objects(rng_state())
        weights, optimizer_state = self._training_state()
        written = 1.0
        if self.is_main:
            written = float(self._write_checkpoint(metric, weights, optimizer_state, rngs))
        return all_reduce_sum([written], self.device)[0] == self.world

    def _write_checkpoint(self, metric, weights, optimizer_state, rngs) -> bool:
        trainer = self.config.trainer
        folder = step_folder(self.out, self.state["step"])
        best = self.state["best"]
        if metric is not None:
            best = rank_best(best, metric, folder.name, self.val_metric.higher_is_better, trainer.keep_best)
        state = {**self.state, "best": best}

        def write_state(tmp: Path) -> None:
            torch.save({"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rngs}, tmp / STATE_TENSORS)
            if self.ema is not None:
                write_weights(self.model.state_dict(), tmp / TRAINING_WEIGHTS)
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))

        exported = self.ema.model if self.ema is not None else self.model
        try:
            save(exported, folder, write_state, state_dict=weights)
        except OSError as error:
            self.log_message(f"could not write checkpoint {folder}: {error}; the previous checkpoints are intact")
            return False
        self.state["best"] = best
        if self.config.prompt_tuning.base:
            self.log_message(size_line(folder))
        rotate(self.out, folder.name, best, trainer.keep_last)
        if metric is not None or self.state["batch_in_epoch"] == 0:  # not at every mid-epoch checkpoint
            self.plot()
        return True

    def plot(self) -> None:
        """``curves.png``: training and validation loss, and the validation metric, by step."""
        try:
            from ..plots import plot_curves
            plot_curves(self.out / "log.csv", self.out / "curves.png", self.config.trainer.val_metric)
        except Exception as error:  # a plot must never stop training
            self.log_message(f"could not draw curves.png: {error}")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _yaml_dump(tree: dict) -> str:
    import yaml
    return yaml.safe_dump(tree, sort_keys=False)


def train(config: Config) -> Path | None:
    """Train as ``config`` says; resumes when ``config.output_dir`` holds a checkpoint.
    Returns the best checkpoint folder (``output_dir/best``)."""
    try:
        return Trainer(config).train()
    finally:
        leave_process_group()
