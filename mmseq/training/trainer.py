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

import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import Config
from ..errors import TrainingError
from .distributed import (all_reduce_sum, distributed_setup, gather_objects, gradient_sync, leave_process_group,
                          wrap_network)
from .logs import RunLog, draw_curves, progress_bar_settings, skipped_line, validation_line
from .optim import make_optimizer, make_schedule
from .start import (check_settings, make_loader, make_stage, prepare_folder, prepare_model, read_data,
                    resume_or_build, standin_batch)
from .state import FolderLock, count_bad_examples, full_state, new_state, restore, rng_state, step_folder, write_run_checkpoint
from .validation import validation_metrics


class Trainer:
    """Trains ``config.task`` from ``config.data`` into ``config.output_dir``; see :func:`train`.

    What varies between runs (a new model, fine-tuning, SCST, prompt tuning) is the run's stage
    (:mod:`mmseq.training.stages`). The parts a test or a benchmark may drive alone: :meth:`setup`,
    :meth:`forward_backward` (one micro-batch), :meth:`optimizer_step`, :meth:`train_epoch`,
    :meth:`validate`, :meth:`save`.
    """

    def __init__(self, config: Config):
        self.config = config
        self.out = Path(config.output_dir)
        self.rank, self.world, self.device = distributed_setup(config.trainer.device)
        self.is_main = self.rank == 0
        self.stop_signal = None
        self.lock = FolderLock(self.out)
        self.stage = make_stage(config)
        self.resume_from = self._run_log = None

    def setup(self) -> None:
        """Everything a run needs before its first step, in order (:mod:`mmseq.training.start`)."""
        config, trainer = self.config, self.config.trainer
        self.dtype = check_settings(config, self.device)
        prepare_folder(config, self.lock, self.is_main)
        self.model, self.resume_from, saved_state = resume_or_build(config, self.stage, self.is_main, self.log_message)
        self.model.to(self.device).train()
        self.task = self.stage.training_table(self.model, self.log_message)  # reads, batches, scores every task
        self.val_metric = self.task.metric(trainer.val_metric)  # its name and direction
        (self.train_examples, self.manifest_errors), (self.valid_examples, self.valid_manifest_errors) = read_data(
            config, self.task, self.stage, self.log_message)
        self.sampler, self.dataset, self.loader, self.data_generator = make_loader(
            config, self.task, self.train_examples, self.rank, self.world, self.device.type == "cuda")
        self.ema, self.sharded = prepare_model(self.model, trainer, self.world, self.resume_from)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model, trainer)
        self.batches_per_epoch = len(self.sampler.epoch_batches())  # this rank's; the same on every rank
        self.total_steps = trainer.max_steps or math.ceil(self.batches_per_epoch / trainer.accumulate) * trainer.max_epochs
        self.scheduler, self.scaler = make_schedule(self.optimizer, self.total_steps, trainer, self.dtype, self.device)
        self.state = new_state(self.world, self.sharded)
        if self.resume_from is not None:
            self.state.update(restore(self.resume_from, *saved_state, self.model, self.optimizer, self.scheduler,
                                      self.scaler, sharded=self.sharded, rank=self.rank, world=self.world,
                                      log=self.log_message))
        # What a step calls: the stage's objective (the model, or a loss module around it).
        self.network = self.ddp = wrap_network(self.stage.objective(self.model, self.train_examples, self.out),
                                               self.world, self.sharded, self.device)
        if trainer.compile:
            self.network = torch.compile(self.network)
        self.standin = standin_batch(self.task, self.dataset, config.data.train) if self.world > 1 else None
        self.running = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, examples, correct, tokens

    def log_message(self, text: str) -> None:
        if self.is_main:
            tqdm.write(text, file=sys.stderr)

    def warn(self, text: str) -> None:
        """A message from any rank (skipped examples are found where they are loaded)."""
        tqdm.write(f"[rank {self.rank}] {text}" if self.world > 1 else text, file=sys.stderr)

    def log_row(self, row: dict) -> None:
        """A row of ``log.csv`` and of TensorBoard's scalars (mmseq/training/logs.py)."""
        if self.is_main:
            self.run_log().row(row)

    def run_log(self) -> RunLog:
        if self._run_log is None:  # made at the first row, once resume knows its step
            step = int(self.resume_from.name.split("-")[1]) if self.resume_from else 0
            self._run_log = RunLog(self.out, self.config.trainer.tensorboard, resumed_step=step)
        return self._run_log

    # -- the loop ---------------------------------------------------------------------------------
    def _handle_signal(self, number, frame) -> None:
        # A second signal stops at once (the last checkpoint stays), unless it comes within two
        # seconds: Ctrl-C under torchrun reaches a worker twice, from the terminal and from torchrun.
        if self.stop_signal is not None and time.monotonic() - self._signal_time > 2.0:
            raise KeyboardInterrupt
        if self.stop_signal is None:
            self.stop_signal, self._signal_time = number, time.monotonic()
            self.log_message(f"signal {number}: saving a checkpoint at the end of this step, then stopping")

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
                # A signal during validation, on any rank: all ranks agree, so they all save and leave.
                if all_reduce_sum([float(self.stop_signal is not None)], self.device)[0] > 0:
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
        with gradient_sync(self.ddp, self.model, self.world, self.sharded, sync):
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
        count_bad_examples(self.state, int(bad_examples), self.manifest_errors, self.config.data.max_bad_examples)
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
        line = skipped_line(self.state, self.manifest_errors, self.config.data.max_bad_examples)
        if line:
            self.log_message(line)
        return False

    def _log_training(self, bar) -> None:
        loss_sum, examples, correct, tokens = all_reduce_sum(self.running.tolist(), self.device)
        self.running.zero_()
        if not examples:
            return
        loss, accuracy, lr = loss_sum / examples, correct / max(tokens, 1), self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", lr=f"{lr:.2e}")
        self.log_row({"split": "train", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                      "loss": round(loss, 4), "accuracy": round(accuracy, 4), "lr": lr})

    def validate(self) -> float | None:
        """Loss, accuracy and the tasks' metrics on ``data.valid`` (:mod:`mmseq.training.validation`),
        of the EMA's weights when there is one. An unreadable example is left out and logged
        (``skipped: FILE:LINE: reason``); the summary counts them with the manifest's bad lines
        as ``skipped=N``."""
        if not self.valid_examples:
            return None
        model = self.ema.model if self.ema is not None else self.model
        metrics, unreadable = validation_metrics(
            model, self.task, self.valid_examples, self.config, self.val_metric, rank=self.rank, world=self.world,
            dtype=self.dtype, device=self.device, sharded=self.sharded, progress=self.is_main, warn=self.warn)
        metric = metrics.get(self.config.trainer.val_metric, metrics.get(self.val_metric.name))
        self.log_message(validation_line(self.state["epoch"], metrics, unreadable + self.valid_manifest_errors))
        self.log_row({"split": "valid", "epoch": self.state["epoch"] + 1, "step": self.state["step"],
                      "loss": round(metrics["loss"], 4), "accuracy": round(metrics["accuracy"], 4), "metric": metric,
                      "metrics": metrics})
        if self.is_main and not self.sharded:  # (sharded weights are only whole inside full_weights)
            self.run_log().attention(model, self.valid_examples[0], self.state["step"])
        self.model.train()
        return metric

    # -- saving (mmseq/training/state.py) ---------------------------------------------------------
    def save(self, metric: float | None = None) -> bool:
        """Checkpoint: every rank gives its state, rank 0 writes. Keeps the ``keep_last`` latest and
        the ``keep_best`` best. Returns False, on every rank, when the write failed (disk full):
        the previous checkpoints are then untouched."""
        rngs = gather_objects(rng_state())
        weights, tensors = full_state(self.model, self.optimizer, self.scheduler, self.scaler, self.sharded)
        written = 1.0
        if self.is_main:
            written = float(self._write_checkpoint(metric, weights, {**tensors, "rng": rngs}))
        return all_reduce_sum([written], self.device)[0] == self.world

    def _write_checkpoint(self, metric, weights, tensors) -> bool:
        exported = self.ema.model if self.ema is not None else self.model  # the raw weights go beside
        raw = self.model.state_dict() if self.ema is not None else None
        folder = step_folder(self.out, self.state["step"])
        try:
            write_run_checkpoint(folder, self.state, metric, self.val_metric.higher_is_better, self.config.trainer,
                                 exported, tensors, raw, weights)
        except OSError as error:
            self.log_message(f"could not write checkpoint {folder}: {error}; the previous checkpoints are intact")
            return False
        self.stage.after_save(folder, self.log_message)
        if metric is not None or self.state["batch_in_epoch"] == 0:  # not at every mid-epoch checkpoint
            draw_curves(self.out, self.config.trainer.val_metric, self.log_message)
        return True


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(config: Config) -> Path | None:
    """Train as ``config`` says; resumes when ``config.output_dir`` holds a checkpoint.
    Returns the best checkpoint folder (``output_dir/best``)."""
    try:
        return Trainer(config).train()
    finally:
        leave_process_group()
