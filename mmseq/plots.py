"""Plots a person would rather look at than read: learning curves and attention maps."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_curves(log_csv: str | Path, out_png: str | Path, metric_name: str = "metric") -> None:
    """Training and validation loss by step, and the validation metric, from the trainer's CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_csv)))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train" and r["loss"]]
    valid = [(int(r["step"]), float(r["loss"]), r["metric"]) for r in rows if r["split"] == "valid"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        axes[0].plot(*zip(*train), label="train", alpha=0.8)
    if valid:
        axes[0].plot([v[0] for v in valid], [v[1] for v in valid], "o-", label="valid")
        points = [(v[0], float(v[2])) for v in valid if v[2] not in ("", None)]
        if points:
            axes[1].plot(*zip(*points), "o-", color="tab:green")
    axes[0].set(xlabel="step", ylabel="loss per example", title="loss", yscale="log")
    axes[0].legend()
    axes[1].set(xlabel="step", ylabel=metric_name, title=f"validation {metric_name}")
    figure.tight_layout()
    figure.savefig(out_png, dpi=100)
    plt.close(figure)
