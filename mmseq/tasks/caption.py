"""Image captioning: image in, caption out, scored by BLEU, METEOR, ROUGE-L and CIDEr."""

from __future__ import annotations

import torch

from ..data.images import load_image
from ..data.manifest import read_manifest
from .base import Task, register_task


@register_task("caption")
class ImageCaptioning(Task):
    name = "caption"
    input_field = "image"
    metric = "CIDEr"
    higher_is_better = True

    def __init__(self, encoder, tokenizer, max_tokens: int = 512):
        super().__init__(encoder, tokenizer, max_tokens)
        self._transforms = {}

    def read(self, manifest, training: bool, skip_errors: bool = False):
        """Training: one example per (image, caption) pair, so every reference is learned.
        Evaluation: one example per image, scored against all of its captions."""
        images, errors = read_manifest(manifest, ("image", "captions"), skip_errors)
        examples = []
        for image in images:
            if training:
                examples += [{**image, "text": caption, "references": image["captions"]} for caption in image["captions"]]
            else:
                examples.append({**image, "text": image["captions"][0], "references": image["captions"]})
        return examples, errors

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        if training not in self._transforms:  # built from the backbone's own data config
            self._transforms[training] = self.encoder.transform(train=training)
        return self._transforms[training](load_image(source))

    def collate_inputs(self, inputs):
        return torch.stack(inputs), None

    def score(self, references, hypotheses) -> dict:
        from ..metrics import caption_metrics

        return caption_metrics(references, hypotheses)
