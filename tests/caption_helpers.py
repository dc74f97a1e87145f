"""Tiny captioning pieces shared by the caption, SCST and plot tests: plain colour images with
captions naming their colour, and a tiny random captioning model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
IMAGE_SIZE = 32

# A test_vit encoder (2x2 grid at 32 px) and a two-layer decoder: a few thousand weights.
TINY_IMAGE_ENCODER = dict(name="timm", model_name="test_vit", image_size=IMAGE_SIZE, dim=32, position="learned",
                          augment=False)
TINY_DECODER = dict(dim=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, max_length=32)


def captions_of(color: str) -> list[str]:
    return [f"a {color} square", f"a {color} box", f"the square is {color}"]


def write_caption_corpus(folder: Path, name: str = "train.jsonl", colors=tuple(COLORS)) -> Path:
    """One plain image per colour under ``folder/img`` and a caption manifest; returns its path."""
    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for color in colors:
        pixels = np.broadcast_to(np.array(COLORS[color], dtype=np.uint8), (IMAGE_SIZE, IMAGE_SIZE, 3))
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / "img" / f"{color}.png")
        lines.append(json.dumps({"id": color, "image": f"img/{color}.png", "captions": captions_of(color)}))
    manifest = folder / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def word_tokenizer(folder: Path):
    """A sentencepiece BPE model with a whole piece for every word of :func:`captions_of`."""
    from mmseq.tokenizer import SentencePieceTokenizer

    texts = [caption for color in COLORS for caption in captions_of(color)] * 5
    return SentencePieceTokenizer.train(texts, vocab_size=56, model_type="bpe", out=Path(folder) / "tokenizer.model",
                                        prompt_tokens=["<|asr|>", "<|caption|>", "<|text|>"])


def make_caption_model(tokenizer, seed: int = 0, decoding: dict | None = None):
    """A tiny random captioning model in eval mode."""
    from mmseq.model import ModelConfig, Seq2Seq

    torch.manual_seed(seed)
    config = ModelConfig(encoder=dict(TINY_IMAGE_ENCODER), decoder=dict(TINY_DECODER), ctc_weight=0.0,
                         label_smoothing=0.0)
    return Seq2Seq(config, tokenizer, "caption", {"max_length": 8, **(decoding or {})}).eval()


def image_batch(model, manifest: Path, training: bool = False) -> dict:
    """Every image of a caption manifest as one batch (evaluation examples: one per image)."""
    from mmseq.tasks import ExampleDataset

    examples, errors = model.task.read(manifest, training=training)
    assert not errors
    dataset = ExampleDataset(model.task, examples, training=training)
    return model.task.collate([dataset[i] for i in range(len(dataset))])


def cider_before_and_after_scst(model, corpus: Path, out: Path) -> tuple[float, float]:
    """The fixed small SCST problem: a captioner trained by cross-entropy without seeing the images
    (one caption for every image), then 30 SCST steps rewarded by CIDEr-D; greedy CIDEr before and
    after. ``model``'s route for the corpus is its caption route (any other routes are left alone)."""
    from pycocoevalcap.cider.cider import Cider

    from mmseq.training.scst import SCSTConfig, SelfCriticalObjective

    def cider(batch):
        model.eval()
        hypotheses = model.decode_texts(batch, beam_size=1)
        references = {i: list(captions) for i, captions in enumerate(batch["references"])}
        return Cider().compute_score(references, {i: [text] for i, text in enumerate(hypotheses)})[0]

    batch, training_batch = image_batch(model, corpus), image_batch(model, corpus, training=True)
    blind = dict(training_batch, inputs=torch.zeros_like(training_batch["inputs"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(blind)["loss"].backward()
        optimizer.step()
    before = cider(batch)
    examples, _ = model.task.read(corpus, training=False)
    objective = SelfCriticalObjective(model, SCSTConfig(enabled=True, init_from="unused", count=8), examples, out)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        model.train()
        result = objective(batch)
        optimizer.zero_grad()
        (result["loss_sum"] / result["examples"]).backward()
        optimizer.step()
    return before, cider(batch)
