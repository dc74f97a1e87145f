"""The training log: ``log.csv`` and, when ``tensorboard`` is installed, TensorBoard event files.

One interface, :class:`RunLog`, so the trainer writes each row once:

    OUT/log.csv          one row per log step and per validation (the columns of :data:`CSV_FIELDS`)
    OUT/tensorboard/     ``events.out.tfevents.*``: ``train/loss``, ``train/accuracy``, ``train/lr``,
                         ``valid/loss``, ``valid/accuracy``, ``valid/<each task metric>`` (``valid/wer``,
                         ``valid/CIDEr``...) and one ``valid/attention`` image per validation

``tensorboard --logdir exp/`` then shows every run under ``exp/``. TensorBoard is optional
(``pip install mmseq[tensorboard]``): without it only ``log.csv`` is written, and one line says so.
A run resumed from a checkpoint purges the events written after that checkpoint by the run that was
stopped, so its curves do not fold back on themselves.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

from ..plots import plot_curves

CSV_FIELDS = ["time", "split", "epoch", "step", "loss", "attention_loss", "ctc_loss", "accuracy", "lr", "metric"]
TENSORBOARD_FOLDER = "tensorboard"


class RunLog:
    """Writes the trainer's rows to ``out/log.csv`` and to TensorBoard.

    Args:
        out: the run's output folder.
        tensorboard: also write event files to ``out/tensorboard`` (when the package is installed).
        resumed_step: the step of the checkpoint a resumed run goes on from (0 for a fresh run);
            TensorBoard drops the events after it that the stopped run wrote.
    """

    def __init__(self, out: str | Path, tensorboard: bool = True, resumed_step: int = 0):
        self.out = Path(out)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch raises ImportError when the tensorboard package is missing
                print("mmseq: tensorboard is not installed (pip install tensorboard): writing log.csv only",
                      file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.out / TENSORBOARD_FOLDER),
                                            purge_step=resumed_step + 1 if resumed_step else None)
        self._attention_failed = False

    def row(self, row: dict) -> None:
        """One row: ``split`` ("train" or "valid"), ``step``, and figures (``loss``, ``lr``...).
        A ``metrics`` dict (a validation's every metric) goes to TensorBoard only."""
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, CSV_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({"time": round(time.time(), 1), **row})
        if self.writer is None:
            return
        split, step = row["split"], int(row["step"])
        scalars = {name: row[name] for name in ("loss", "attention_loss", "ctc_loss", "accuracy", "lr")
                   if isinstance(row.get(name), (int, float))}
        scalars.update({name: value for name, value in (row.get("metrics") or {}).items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool)})
        for name, value in scalars.items():
            self.writer.add_scalar(f"{split}/{name}", value, step)
        self.writer.flush()  # every row: a killed run keeps its curves, and nothing waits on close()

    def attention(self, model, example: dict, step: int) -> None:
        """The decoder's cross-attention while it decodes ``example`` (greedy), as the image
        ``valid/attention`` at ``step``: an alignment for speech, heat maps on the image for
        captions. A failure is reported once and never stops training."""
        if self.writer is None or self._attention_failed:
            return
        try:
            import matplotlib.pyplot as plt

            from ..plots import attention_figure
            task = model.task.for_example(example)
            figure, _ = attention_figure(model, example[task.input_field], prompt=example.get("prompt"), beam_size=1,
                                         task=task.name)
            self.writer.add_figure("valid/attention", figure, step)  # closes the figure
            self.writer.flush()
            plt.close("all")
        except Exception as error:  # a picture must never stop training
            self._attention_failed = True
            print(f"mmseq: no attention images in TensorBoard ({type(error).__name__}: {error})", file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def validation_line(epoch: int, metrics: dict, skipped: int) -> str:
    """``epoch N valid: loss=... accuracy=... wer=... skipped=K`` (the skipped only when some were)."""
    summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
    if skipped:
        summary += f" skipped={skipped}"
    return f"epoch {epoch + 1} valid: {summary}"


def draw_curves(out: Path, val_metric: str, log) -> None:
    """``out/curves.png``: training and validation loss, and the validation metric, by step, from
    ``out/log.csv``. A failure is logged and never stops training."""
    try:
        plot_curves(out / "log.csv", out / "curves.png", val_metric)
    except Exception as error:
        log(f"could not draw curves.png: {error}")


def skipped_line(state: dict, manifest_errors: int, limit: int) -> str | None:
    """The line at the end of an epoch once any example was skipped: those of this epoch, on all
    ranks, and the run's total that ``data.max_bad_examples`` limits (bad manifest lines too)."""
    in_run = state["bad_examples"] + manifest_errors
    if not in_run:
        return None
    lines = f", {manifest_errors} of them bad manifest lines" if manifest_errors else ""
    return (f"epoch {state['epoch'] + 1}: skipped {state['bad_examples_in_epoch']} unreadable examples ({in_run} in "
            f"all{lines}; limit data.max_bad_examples={limit})")


def progress_bar_settings() -> dict:
    """tqdm settings for the training bar: redrawn at every batch, in a terminal or in a log file.

    tqdm's defaults skip redraws (``mininterval`` 0.1 s, and ``miniters`` that adapt to the rate
    seen so far, which after slow first batches, while the DataLoader's workers start, holds the bar
    still for many steps); the trainer used to wait 30 s between lines in a log file. A step costs
    far more than a redraw, so draw every one (Lightning's bar does too). ``TQDM_MININTERVAL``
    (seconds) thins the lines of a long run's log file.
    """
    return {"miniters": 1, "mininterval": float(os.environ.get("TQDM_MININTERVAL", "0")), "dynamic_ncols": True}
