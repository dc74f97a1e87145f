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

import copy
import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import Config, config_to_dict
from .data.batching import BucketBatchSampler
from .errors import CheckpointError, ConfigError, MmseqError
from .logs import RunLog, progress_bar_settings
from .model import WEIGHTS_FILE, Seq2Seq, load
from .scst import SelfCriticalObjective, start_model
from .tasks import ExampleDataset
from .tokenizer import train_tokenizer

CHECKPOINTS = "checkpoints"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"
TRAINING_WEIGHTS = "trainer_weights.safetensors"  # the raw weights, when model.safetensors holds the EMA


class TrainingError(MmseqError, RuntimeError):
    """Training cannot go on (too many bad examples, non-finite losses, a locked folder)."""


# -- distributed ----------------------------------------------------------------------------
def distributed_setup(device_setting: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_setting)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (Ampere and later)
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sums over every rank (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# -- optimizer and schedule ---------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms, or embeddings' positions)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-9 if fused else 1e-8, fused=fused)


def lr_factor(step: int, total: int, config) -> float:
    """Learning-rate multiplier: linear warmup, then cosine to ``min_lr_ratio``, noam, or constant."""
    warmup = max(1, config.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "noam":
        return math.sqrt(warmup / (step + 1))
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16 (with a loss scaler); fp32 on CPU unless asked."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={precision!r}: expected auto, fp32, bf16 or fp16")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# -- memory: activation checkpointing and sharding ----------------------------------------------
def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: every child of a ``layers`` or ``blocks`` list (the
    encoder's and decoder's layers, a timm ViT's blocks), outermost lists only."""
    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if name.rsplit(".", 1)[-1] in ("layers", "blocks") and isinstance(module, (nn.ModuleList, nn.Sequential)):
            found += list(module)
            inside.append(name)
    return found


def checkpoint_activations(modules: list[nn.Module]) -> None:
    """Keep only each module's inputs in the forward pass and recompute the rest in backward:
    activation memory of one layer instead of all, for about a third more compute. The weights,
    their names and the results (dropout masks included) are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for module in modules:
        def forward(*args, _forward=module.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        module.forward = forward


def shard_model(model: nn.Module) -> None:
    """FSDP2: each layer, then the rest, sharded across the process group (in place). A layer's
    own public methods besides ``forward`` (the decoder layer's ``memory_kv``) gather its weights too."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for module in layer_modules(model):
        methods = [name for name, value in vars(type(module)).items()
                   if callable(value) and not name.startswith("_") and name != "forward"]
        fully_shard(module)  # (this changes the module's class)
        for name in methods:
            register_fsdp_forward_method(module, name)
    fully_shard(model)


@contextmanager
def full_weights(model: nn.Module):
    """Gather a sharded model's weights on every rank for the duration (validation, decoding),
    so that ranks may run different numbers of forward passes; a no-op for a plain model."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in sharded:
            module.set_reshard_after_forward(True, recurse=False)
            module.reshard()


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging), in a copy of the model.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so the first steps' random
    weights fade quickly; buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"trainer.ema={decay}: the decay must be between 0 and 1 (0 turns it off)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)


# -- checkpoints ------------------------------------------------------------------------------
def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed into place)."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


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

    # -- set up -------------------------------------------------------------------------------
    def _lock(self) -> None:
        """One run per output folder: a second one gets a clear message, not a corrupt folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.out / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"{self.out}: another training run is using this output folder") from None

    def _release_lock(self) -> None:
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()

    def _tokenizer(self, texts: list[str]):
        settings = asdict(self.config.tokenizer)
        kind = settings.pop("type")
        if kind == "sentencepiece":
            path = self.out / "tokenizer.model"
            if self.is_main and not path.exists():
                train_tokenizer(kind, texts, out=path, **settings)
            self._barrier()
            from .tokenizer import SentencePieceTokenizer
            return SentencePieceTokenizer(path, settings["prompt_tokens"])
        return train_tokenizer(kind, texts, **settings)

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _read(self, manifest: str, training: bool, task):
        examples, errors = task.read(manifest, training, skip_errors=True)
        for error in errors:
            self.log_message(f"skipped: {error}")
        if not examples:
            raise TrainingError(f"{manifest}: no usable examples")
        return examples, len(errors)

    def _check_settings(self) -> None:
        trainer = self.config.trainer
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

    def setup(self) -> None:
        config, trainer = self.config, self.config.trainer
        self._check_settings()
        torch.manual_seed(trainer.seed)
        random.seed(trainer.seed)
        if self.is_main:
            self._lock()
            (self.out / "config.yaml").write_text(_yaml_dump(config_to_dict(config)))
        self._barrier()
        self.resume_from, saved_state, failures = None, None, []
        checkpoints = list_checkpoints(self.out)
        for folder in reversed(checkpoints):  # the newest whose every file reads; a corrupt one is reported
            try:
                saved_state = _read_training_state(folder)
                self.model = load(folder)
                if (folder / TRAINING_WEIGHTS).is_file():
                    self.model.load_state_dict(_read_weights(folder / TRAINING_WEIGHTS))
                self.resume_from = folder
                break
            except (CheckpointError, ConfigError) as error:
                self.log_message(f"cannot resume from {folder} ({error}); trying the one before")
                failures.append(error)
        if checkpoints and self.resume_from is None:
            # Starting afresh would quietly put new checkpoints beside (and over) the old run's.
            raise TrainingError(f"{self.out}: no checkpoint can be resumed from ({len(checkpoints)} tried; the "
                                f"newest: {failures[0]}); move them away, or choose another output_dir, to "
                                "start afresh")
        if self.resume_from is None and config.scst.enabled:
            self.model = start_model(config.scst, config.task)  # SCST fine-tunes a cross-entropy checkpoint
        elif self.resume_from is None:
            from .data.manifest import read_manifest
            lines = read_manifest(config.data.train, (), skip_errors=True)[0]
            texts = [e["text"] for e in lines if "text" in e] + [c for e in lines for c in e.get("captions", [])]
            tokenizer = self._tokenizer(texts)
            self.model = Seq2Seq(config.model, tokenizer, config.task, asdict(config.decoding))
        self.model.to(self.device).train()
        self.task = self.model.task
        # SCST reads one example per image (all its captions are the references), not one per caption.
        self.train_examples, self.manifest_errors = self._read(config.data.train, not config.scst.enabled, self.task)
        self.valid_examples, self.valid_manifest_errors = [], 0
        if config.data.valid:
            self.valid_examples, self.valid_manifest_errors = self._read(config.data.valid, False, self.task)
        lengths = [self.task.length(e) for e in self.train_examples]
        self.sampler = BucketBatchSampler(lengths, config.data.batch_size, config.data.max_batch_examples,
                                          shuffle=True, seed=trainer.seed, rank=self.rank, world_size=self.world,
                                          groups=[self.task.group(e) for e in self.train_examples])
        # The loader draws its worker seeds from its own generator, reseeded each epoch, not from
        # the global one: a resumed run's dropout then follows the same random stream.
        self.data_generator = torch.Generator()
        self.loader = DataLoader(ExampleDataset(self.task, self.train_examples, training=True),
                                 batch_sampler=self.sampler, collate_fn=self.task.collate,
                                 num_workers=config.data.num_workers, generator=self.data_generator,
                                 pin_memory=self.device.type == "cuda")
        # Every rank starts from the same weights (above) but draws its own dropout and
        # augmentation from here on.
        torch.manual_seed(trainer.seed * 1000 + 1 + self.rank)
        random.seed(trainer.seed * 1000 + 1 + self.rank)

        self.ema = WeightAverage(self.model, trainer.ema) if trainer.ema else None
        if self.ema is not None and self.resume_from is not None:
            self.ema.model.load_state_dict(_read_weights(self.resume_from / WEIGHTS_FILE))
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
            self._load_state(self.resume_from, *saved_state)

        self.network = self.model
        if config.scst.enabled:  # the loss is the self-critical objective, a module around the model
            self.network = SelfCriticalObjective(self.model, config.scst, self.train_examples, self.out)
        if self.world > 1 and not self.sharded:
            self.network = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ddp = self.network
        if trainer.compile:
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
        (by :func:`_read_training_state`) in place."""
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
            self._release_lock()  # a run that could not start leaves the folder free
            raise
        config = self.config.trainer
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
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
            self._release_lock()  # free the folder for the next run in this process
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
        """Loss, accuracy and the task's metric on ``data.valid``, each rank scoring its share and
        the sums and hypotheses gathered; the weights scored are the EMA's when there is one.
        An unreadable example is left out and logged (``skipped: FILE:LINE: reason``); the summary
        line counts them with the manifest's bad lines as ``skipped=N``."""
        if not self.valid_examples:
            return None
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        shard = self.valid_examples[self.rank::self.world]
        lengths = [self.task.length(e) for e in shard]
        sampler = BucketBatchSampler(lengths, self.config.data.batch_size, self.config.data.max_batch_examples,
                                     shuffle=False, groups=[self.task.group(e) for e in shard])
        loader = DataLoader(ExampleDataset(self.task, shard, training=False), batch_sampler=sampler,
                            collate_fn=self.task.collate, num_workers=self.config.data.num_workers,
                            generator=torch.Generator().manual_seed(0))
        metric_name = self.config.trainer.val_metric
        decode = metric_name not in ("loss", "accuracy")
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, examples, correct, tokens
        references, hypotheses, unreadable = [], [], 0
        with full_weights(model) if self.sharded else nullcontext():
            for batch in tqdm(loader, desc="valid", disable=not self.is_main, leave=False):
                for error in batch["errors"]:
                    self.warn(f"skipped: {error}")
                unreadable += len(batch["errors"])
                if not batch["size"]:
                    continue
                batch = _to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                    enabled=self.dtype is not None):
                    out = model(batch)
                sums += torch.stack([out["loss_sum"].double(), torch.tensor(float(out["examples"]),
                                     dtype=torch.float64, device=self.device), out["correct"].double(),
                                     out["tokens"].double()])
                if decode:
                    hypotheses += model.decode_texts(batch, beam_size=self.config.trainer.val_beam_size)
                    references += batch["references"]
        loss_sum, examples, correct, tokens, unreadable = all_reduce_sum(sums.tolist() + [unreadable], self.device)
        loss, accuracy = loss_sum / max(examples, 1), correct / max(tokens, 1)
        metrics = {"loss": loss, "accuracy": accuracy}
        if decode:
            if dist.is_initialized():
                gathered = [None] * self.world
                dist.all_gather_object(gathered, (references, hypotheses))
                references = [r for part in gathered for r in part[0]]
                hypotheses = [h for part in gathered for h in part[1]]
            metrics.update(self.task.score(references, hypotheses))
            if metric_name not in metrics:
                raise ConfigError(f"trainer.val_metric={metric_name!r} is not a metric of task "
                                  f"{self.task.name!r}: {', '.join(metrics)}")
        metric = metrics[metric_name]
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
    def _higher_is_better(self) -> bool:
        name = self.config.trainer.val_metric
        return name == "accuracy" or (name not in ("loss",) and self.task.higher_is_better)

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
        rngs = [rng_state()]
        if dist.is_initialized():
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state())
        weights, optimizer_state = self._training_state()
        written = 1.0
        if self.is_main:
            written = float(self._write_checkpoint(metric, weights, optimizer_state, rngs))
        return all_reduce_sum([written], self.device)[0] == self.world

    def _write_checkpoint(self, metric, weights, optimizer_state, rngs) -> bool:
        trainer = self.config.trainer
        folder = self.out / CHECKPOINTS / f"step-{self.state['step']:08d}"
        best = list(self.state["best"])
        if metric is not None:
            best = [item for item in best if item[1] != folder.name] + [[metric, folder.name]]
            best.sort(key=lambda item: -item[0] if self._higher_is_better() else item[0])
            best = best[: trainer.keep_best]
        state = {**self.state, "best": best}

        def write_state(tmp: Path) -> None:
            torch.save({"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rngs}, tmp / STATE_TENSORS)
            if self.ema is not None:
                _write_weights(self.model.state_dict(), tmp / TRAINING_WEIGHTS)
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))

        exported = self.ema.model if self.ema is not None else self.model
        try:
            exported.save(folder, write_state, state_dict=weights)
        except OSError as error:
            self.log_message(f"could not write checkpoint {folder}: {error}; the previous checkpoints are intact")
            return False
        self.state["best"] = best
        recent = {p.name for p in list_checkpoints(self.out)[-max(1, trainer.keep_last):]}
        keep = recent | {folder.name} | {name for _, name in best}
        for old in list_checkpoints(self.out):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        if best:
            _point(self.out / "best", Path(CHECKPOINTS) / best[0][1])
        _point(self.out / "last", Path(CHECKPOINTS) / folder.name)
        if metric is not None or self.state["batch_in_epoch"] == 0:  # not at every mid-epoch checkpoint
            self.plot()
        return True

    def plot(self) -> None:
        """``curves.png``: training and validation loss, and the validation metric, by step."""
        try:
            from .plots import plot_curves
            plot_curves(self.out / "log.csv", self.out / "curves.png", self.config.trainer.val_metric)
        except Exception as error:  # a plot must never stop training
            self.log_message(f"could not draw curves.png: {error}")


def _read_training_state(folder: Path) -> tuple[dict, dict]:
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


def _read_weights(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(f"{path}: corrupt weights ({error})") from None


def _write_weights(weights: dict, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous().cpu() for k, v in weights.items()}, str(path))


def _point(link: Path, target: Path) -> None:
    """Atomically make ``link`` a symlink to ``target``."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


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
        if dist.is_initialized():
            dist.destroy_process_group()
