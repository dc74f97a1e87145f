"""The one trainer every task shares: from a laptop CPU to many GPUs through torchrun.

Mixed precision, gradient accumulation, clipping, warmup then decay, validation each epoch,
atomic checkpoints with keep-best-k, exact resume from the output folder, skipped bad examples,
a CSV log and a PNG of the learning curves.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import Config, config_to_dict
from .data.batching import BucketBatchSampler
from .errors import CheckpointError, ConfigError, MmseqError
from .model import Seq2Seq, load
from .tasks import ExampleDataset
from .tokenizer import train_tokenizer

CHECKPOINTS = "checkpoints"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"


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
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_sum(values: list[float], device) -> list[float]:
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
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# -- checkpoints ------------------------------------------------------------------------------
def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed into place)."""
    folder = output_dir / CHECKPOINTS
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
    """Trains ``config.task`` from ``config.data`` into ``config.output_dir``; see :func:`train`."""

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
        self.bad_examples += len(errors)
        if not examples:
            raise TrainingError(f"{manifest}: no usable examples")
        return examples

    def setup(self) -> None:
        config = self.config
        torch.manual_seed(config.trainer.seed)
        random.seed(config.trainer.seed)
        if self.is_main:
            self._lock()
            (self.out / "config.yaml").write_text(_yaml_dump(config_to_dict(config)))
        self._barrier()
        self.bad_examples = 0
        checkpoints = list_checkpoints(self.out)
        self.resume_from = None
        for folder in reversed(checkpoints):  # the newest that loads; a corrupt one is reported
            try:
                self.model = load(folder)
                self.resume_from = folder
                break
            except (CheckpointError, ConfigError) as error:
                self.log_message(f"cannot resume from {folder} ({error}); trying the one before")
        if not config.data.train:
            raise ConfigError("data.train: no training manifest given")
        if self.resume_from is None:
            from .data.manifest import read_manifest
            lines = read_manifest(config.data.train, (), skip_errors=True)[0]
            texts = [e["text"] for e in lines if "text" in e] + [c for e in lines for c in e.get("captions", [])]
            tokenizer = self._tokenizer(texts)
            self.model = Seq2Seq(config.model, tokenizer, config.task, asdict(config.decoding))
        self.model.to(self.device).train()
        self.task = self.model.task
        self.train_examples = self._read(config.data.train, True, self.task)
        self.valid_examples = self._read(config.data.valid, False, self.task) if config.data.valid else []
        lengths = [self.task.length(e) for e in self.train_examples]
        self.sampler = BucketBatchSampler(lengths, config.data.batch_size, config.data.max_batch_examples,
                                          shuffle=True, seed=config.trainer.seed, rank=self.rank,
                                          world_size=self.world)
        self.loader = DataLoader(ExampleDataset(self.task, self.train_examples, training=True),
                                 batch_sampler=self.sampler, collate_fn=self.task.collate,
                                 num_workers=config.data.num_workers, persistent_workers=False)
        self.optimizer = make_optimizer(self.model, config.trainer)
        steps_per_epoch = math.ceil(len(self.sampler.epoch_batches()) / config.trainer.accumulate)
        self.total_steps = config.trainer.max_steps or steps_per_epoch * config.trainer.max_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, config.trainer))
        self.dtype = autocast_dtype(config.trainer.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": [], "bad_examples": 0,
                      "nonfinite_in_row": 0, "skipped_steps": 0}
        if self.resume_from is not None:
            self._load_state(self.resume_from)
        self.bad_examples += self.state["bad_examples"]
        self.network = self.model
        if config.trainer.compile:
            self.network = torch.compile(self.network)
        if self.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _load_state(self, folder: Path) -> None:
        self.state = json.loads((folder / STATE_JSON).read_text())
        tensors = torch.load(folder / STATE_TENSORS, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        self.scaler.load_state_dict(tensors["scaler"])
        set_rng_state(tensors["rng"][self.rank] if self.rank < len(tensors["rng"]) else tensors["rng"][0])
        self.log_message(f"resumed from {folder} (epoch {self.state['epoch']}, step {self.state['step']})")

    # -- logging ------------------------------------------------------------------------------
    def log_message(self, text: str) -> None:
        if self.is_main:
            tqdm.write(text, file=sys.stderr)

    def log_row(self, row: dict) -> None:
        if not self.is_main:
            return
        path = self.out / "log.csv"
        fields = ["time", "split", "epoch", "step", "loss", "attention_loss", "ctc_loss", "accuracy", "lr", "metric"]
        new = not path.exists()
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({"time": round(time.time(), 1), **row})

    # -- training ---------------------------------------------------------------------------------
    def _handle_signal(self, number, frame) -> None:
        self.stop_signal = number

    def train(self) -> Path | None:
        self.setup()
        config = self.config.trainer
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.state["epoch"] < config.max_epochs and self.state["step"] < self.total_steps:
                self.train_epoch()
                if self.stop_signal is not None:
                    self.save()
                    self.log_message(f"stopped by signal {self.stop_signal}; checkpoint saved, rerun to resume")
                    raise SystemExit(128 + self.stop_signal)
                metric = self.validate()
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
                self.save(metric)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if getattr(self, "_lock_file", None) is not None:  # free the folder for the next run in this process
                self._lock_file.close()
        best = self.out / "best"
        return best if best.exists() else None

    def _step_count(self, examples: int) -> float:
        return all_reduce_sum([float(examples)], self.device)[0]

    def train_epoch(self) -> None:
        config = self.config.trainer
        self.sampler.set_epoch(self.state["epoch"], self.state["batch_in_epoch"])
        self.model.train()
        bar = tqdm(self.loader, desc=f"epoch {self.state['epoch'] + 1}", disable=not self.is_main,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        micro, window_examples, running = 0, 0, []
        epoch_bad = 0
        for batch in bar:
            if batch["errors"]:
                epoch_bad += len(batch["errors"])
                self.bad_examples += len(batch["errors"])
                for error in batch["errors"]:
                    self.log_message(f"skipped: {error}")
                if self.bad_examples > self.config.data.max_bad_examples:
                    raise TrainingError(f"{self.bad_examples} unreadable examples, more than "
                                        f"data.max_bad_examples={self.config.data.max_bad_examples}")
            micro += 1
            self.state["batch_in_epoch"] += 1
            if batch["size"]:
                batch = _to_device(batch, self.device)
                sync = micro % config.accumulate == 0
                context = self.network.no_sync() if (self.world > 1 and not sync) else _nullcontext()
                with context, torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                             enabled=self.dtype is not None):
                    out = self.network(batch)
                if torch.isfinite(out["loss_sum"]):
                    self.scaler.scale(out["loss_sum"]).backward()
                    window_examples += batch["size"]
                running.append([float(out["loss"]), float(out["correct"]) / max(1, int(out["tokens"]))])
            if micro % config.accumulate:
                continue
            self._optimizer_step(window_examples)
            window_examples = 0
            if running and self.state["step"] % config.log_every == 0:
                loss = sum(r[0] for r in running) / len(running)
                accuracy = sum(r[1] for r in running) / len(running)
                running = []
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", lr=f"{lr:.2e}")
                self.log_row({"split": "train", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                              "loss": round(loss, 4), "accuracy": round(accuracy, 4), "lr": lr})
            if config.checkpoint_every and self.state["step"] % config.checkpoint_every == 0:
                self.save()
            if self.stop_signal is not None or self.state["step"] >= self.total_steps:
                break
        if epoch_bad:
            self.log_message(f"epoch {self.state['epoch'] + 1}: skipped {epoch_bad} unreadable examples "
                             f"({self.bad_examples} in this run)")

    def _optimizer_step(self, examples: int) -> None:
        config = self.config.trainer
        total = self._step_count(examples)
        self.scaler.unscale_(self.optimizer)
        # Gradients hold the sum of per-example losses (averaged over ranks by DDP): make them the
        # mean over every example of this step, on every rank.
        factor = self.world / max(total, 1.0)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        if total == 0 or not torch.isfinite(norm):
            self.state["nonfinite_in_row"] += 1
            self.state["skipped_steps"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            if self.state["nonfinite_in_row"] >= config.nonfinite_limit:
                raise TrainingError(f"{self.state['nonfinite_in_row']} non-finite losses or gradients in a row; "
                                    "lower the learning rate or check the data")
            return
        self.state["nonfinite_in_row"] = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state["step"] += 1

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        if not self.valid_examples:
            return None
        self.model.eval()
        shard = self.valid_examples[self.rank::self.world]
        lengths = [self.task.length(e) for e in shard]
        sampler = BucketBatchSampler(lengths, self.config.data.batch_size, self.config.data.max_batch_examples,
                                     shuffle=False)
        loader = DataLoader(ExampleDataset(self.task, shard, training=False), batch_sampler=sampler,
                            collate_fn=self.task.collate, num_workers=self.config.data.num_workers)
        metric_name = self.config.trainer.val_metric
        decode = metric_name not in ("loss", "accuracy")
        sums = [0.0, 0.0, 0.0, 0.0]  # loss sum, examples, correct, tokens
        references, hypotheses = [], []
        for batch in tqdm(loader, desc="valid", disable=not self.is_main, leave=False):
            if not batch["size"]:
                continue
            batch = _to_device(batch, self.device)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                out = self.model(batch)
            sums = [a + float(b) for a, b in zip(sums, (out["loss_sum"], out["examples"], out["correct"], out["tokens"]))]
            if decode:
                hypotheses += self.model.decode_texts(batch, beam_size=self.config.trainer.val_beam_size)
                references += batch["references"]
        loss_sum, examples, correct, tokens = all_reduce_sum(sums, self.device)
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
        self.log_message(f"epoch {self.state['epoch'] + 1} valid: {summary}")
        self.log_row({"split": "valid", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                      "loss": round(loss, 4), "accuracy": round(accuracy, 4), "metric": metric})
        self.model.train()
        return metric

    # -- saving ---------------------------------------------------------------------------------
    def _higher_is_better(self) -> bool:
        name = self.config.trainer.val_metric
        return name == "accuracy" or (name not in ("loss",) and self.task.higher_is_better)

    def save(self, metric: float | None = None) -> None:
        """Checkpoint (rank 0 writes, all ranks wait). Keeps the latest and the best k."""
        self.state["bad_examples"] = self.bad_examples
        rngs = [rng_state()]
        if dist.is_initialized():
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state())
        if self.is_main:
            folder = self.out / CHECKPOINTS / f"step-{self.state['step']:08d}"
            if metric is not None:
                self.state["best"].append([metric, folder.name])
                self.state["best"].sort(key=lambda item: -item[0] if self._higher_is_better() else item[0])
                self.state["best"] = self.state["best"][: self.config.trainer.keep_best]

            def write_state(tmp: Path) -> None:
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                            "scaler": self.scaler.state_dict(), "rng": rngs}, tmp / STATE_TENSORS)
                (tmp / STATE_JSON).write_text(json.dumps(self.state, indent=1))

            self.model.save(folder, write_state)
            keep = {folder.name} | {name for _, name in self.state["best"]}
            for old in list_checkpoints(self.out):
                if old.name not in keep:
                    shutil.rmtree(old, ignore_errors=True)
            if self.state["best"]:
                _point(self.out / "best", Path(CHECKPOINTS) / self.state["best"][0][1])
            _point(self.out / "last", Path(CHECKPOINTS) / folder.name)
            self.plot()
        self._barrier()

    def plot(self) -> None:
        """``curves.png``: training and validation loss, and the validation metric, by step."""
        try:
            from .plots import plot_curves
            plot_curves(self.out / "log.csv", self.out / "curves.png", self.config.trainer.val_metric)
        except Exception as error:  # a plot must never stop training
            self.log_message(f"could not draw curves.png: {error}")


def _point(link: Path, target: Path) -> None:
    """Atomically make ``link`` a symlink to ``target``."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _yaml_dump(tree: dict) -> str:
    import yaml
    return yaml.safe_dump(tree, sort_keys=False)


def train(config: Config) -> Path | None:
    """Train as ``config`` says; resumes when ``config.output_dir`` holds a checkpoint.
    Returns the best checkpoint folder (``output_dir/best``)."""
    return Trainer(config).train()
