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


# -- attention ------------------------------------------------------------------------------------
def attention_of(model, source, prompt=None, task: str | None = None, **options) -> dict:
    """Decode one input and recompute, by teacher forcing, the decoder's last-layer cross-attention
    (averaged over heads) of each generated token.

    Args:
        model: a :class:`~mmseq.model.Seq2Seq`.
        source: what the route's task reads: an image or audio file, a PIL image, a waveform.
        prompt, options: as for :meth:`~mmseq.model.Seq2Seq.generate` (``beam_size`` ...).
        task: the route (default: the model's only one).

    Returns a dict: ``text`` (the output), ``tokens`` (generated ids), ``attention``
    ``(len(tokens) + 1, frames)`` float array (the last row is that of ``</s>``), and ``grid``
    (the image encoder's ``(rows, cols)``, or None).
    """
    import torch

    route, tokenizer = model.route(task), model.tokenizer
    inputs, lengths = route.task.collate_inputs([route.task.load_input(source)])
    hypothesis = model.generate({"inputs": inputs, "lengths": lengths, "task": route.name}, prompt=prompt,
                                **options)[0][0]
    tokens = [tokenizer.bos_id] + list(hypothesis.prompt) + list(hypothesis.tokens) + [tokenizer.eos_id]
    with torch.no_grad():
        inputs = inputs.to(model.device)
        memory, memory_mask = route.encoder(inputs, lengths.to(model.device) if lengths is not None else None)
        ids = torch.tensor([tokens[:-1]], device=model.device)
        _, weights = model.decoder(ids, memory, memory_mask, return_attention=True)  # (1, positions, frames)
    # Position p predicts token p + 1: the generated tokens and </s> follow <s> and the prompt.
    first = len(hypothesis.prompt)
    attention = weights[0, first:, : int(memory_mask[0].sum())].float().cpu().numpy()
    return {"text": tokenizer.decode(hypothesis.output), "tokens": list(hypothesis.tokens), "attention": attention,
            "grid": getattr(route.encoder, "grid_shape", None) if route.encoder.modality == "image" else None,
            "frame_rate": getattr(route.encoder, "frame_rate", None)}


def plot_attention(model, source, out_png: str | Path, prompt=None, columns: int = 5, **options) -> str:
    """Draw where the decoder looks while it writes its output for one input; returns the output.

    Images (as "Show, Attend and Tell" shows them): the image and then, for each generated word, the
    cross-attention over the encoder's grid (averaged over the word's tokens) as a heat map laid on
    the image (the whole image: the default ``crop_mode="squash"`` shows the encoder all of it).
    Speech and other inputs: an alignment plot, output tokens against encoder frames (seconds when
    the encoder has a ``frame_rate``).

    Args:
        model: a :class:`~mmseq.model.Seq2Seq`.
        source: an image or audio file, a PIL image or a waveform.
        out_png: the picture to write (its folder is made).
        prompt, options: as for :meth:`~mmseq.model.Seq2Seq.generate`.
        columns: panels per row of the image figure.
    """
    import matplotlib.pyplot as plt

    figure, text = attention_figure(model, source, prompt, columns, **options)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    plt.close(figure)
    return text


def attention_figure(model, source, prompt=None, columns: int = 5, **options):
    """The figure :func:`plot_attention` draws, and the output text: ``(figure, text)``. The caller
    closes the figure (TensorBoard's ``add_figure`` does)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = attention_of(model, source, prompt, **options)
    if found["grid"] is not None:
        return _image_attention_figure(plt, model, source, found, columns), found["text"]
    return _alignment_figure(plt, model, found), found["text"]


def _image_attention_figure(plt, model, source, found: dict, columns: int):
    import numpy as np

    from .data.images import load_image
    from .inference.timestamps import word_groups

    image = np.asarray(load_image(source))
    height, width = image.shape[:2]
    rows_grid, cols_grid = found["grid"]
    attention = found["attention"]
    groups = word_groups(model.tokenizer, found["tokens"]) or [("</s>", [len(found["tokens"])])]
    panels = len(groups) + 1
    columns = max(1, min(columns, panels))
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("\n".join(_wrap(found["text"] or "(empty)", 28)), fontsize=8)
    heats = [attention[positions].mean(0).reshape(rows_grid, cols_grid) for _, positions in groups]
    # One colour scale for every word: a word that looks everywhere stays pale, one that looks at
    # one place glows there.
    top = max(max(float(heat.max()) for heat in heats), 1e-8)
    for panel, ((word, _), heat) in enumerate(zip(groups, heats), start=1):
        axis = axes.flat[panel]
        axis.imshow(image)
        # The grid stretched over the whole image, smoothed: each cell covers its part of the picture.
        axis.imshow(heat, cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="bilinear",
                    vmin=0.0, vmax=top)
        axis.set_title(word, fontsize=10)
    figure.tight_layout()
    return figure


def _alignment_figure(plt, model, found: dict):
    tokenizer = model.tokenizer
    labels = [tokenizer.decode([token]).replace(" ", "\u2423") or "?" for token in found["tokens"]] + ["</s>"]
    attention = found["attention"]  # (tokens + 1, frames)
    frames = attention.shape[1]
    frame_rate = found.get("frame_rate")
    extent_end = frames / frame_rate if frame_rate else frames
    figure, axis = plt.subplots(figsize=(min(16, 3 + 0.08 * frames), min(14, 1.5 + 0.22 * len(labels))))
    axis.imshow(attention, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest",
                extent=(0, extent_end, len(labels) - 0.5, -0.5))
    axis.set_yticks(range(len(labels)))
    axis.set_yticklabels(labels, fontsize=7 if len(labels) > 40 else 9)
    axis.set_xlabel("seconds" if frame_rate else "encoder frame")
    axis.set_ylabel("output token")
    axis.set_title("\n".join(_wrap(found["text"] or "(empty)", 100)), fontsize=9)
    figure.tight_layout()
    return figure


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [text]
