"""Image captioning: image in, caption out, scored by BLEU, METEOR, ROUGE-L and CIDEr."""

from __future__ import annotations

import torch

from ..data.images import load_image
from ..data.manifest import read_manifest
from ..metrics import Metric
from .base import Task, register_task


@register_task("caption")
class ImageCaptioning(Task):
    name = "caption"
    modality = "image"  # the encoders it reads
    input_field = "image"
    extensions = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    metrics = (*(Metric(f"Bleu_{n}", True) for n in range(1, 5)), Metric("METEOR", True), Metric("ROUGE_L", True),
               Metric("CIDEr", True), Metric("SPICE", True))

    def __init__(self, encoder, tokenizer, max_tokens: int = 512, **settings):
        super().__init__(encoder, tokenizer, max_tokens, **settings)
        self._transforms = {}

    def read(self, manifest, training: bool, skip_errors: bool = False):
        """One example per image. Training learns every reference: the example's ``texts`` are all
        its captions, each a target row of the batch sharing one pass of the encoder (as
        self-critical.pytorch's ``seq_per_img`` does). Evaluation scores against all of them."""
        images, errors = read_manifest(manifest, ("image", "captions"), skip_errors)
        examples = [{**image, "text": image["captions"][0], "references": image["captions"]} for image in images]
        if training:
            for example in examples:
                example["texts"] = example["captions"]
        return examples, errors

    def length(self, example: dict) -> float:
        """(image, caption) pairs: ``data.batch_size`` counts captions, as without the sharing."""
        return float(len(example.get("texts") or [None]))

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        if training not in self._transforms:  # built from the backbone's own data config
            self._transforms[training] = self.encoder.transform(train=training)
        return self._transforms[training](load_image(source))

    def collate_inputs(self, inputs):
        return torch.stack(inputs), None

    def score(self, references, hypotheses) -> dict:
        from ..metrics import caption_metrics

        return caption_metrics(references, hypotheses)
