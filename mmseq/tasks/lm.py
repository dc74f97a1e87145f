"""Language modelling: text only, for a language model fused in beam search (see
:mod:`mmseq.decoding.lm`). Each manifest line's ``text`` is a training sentence; there is no input (the
``null`` encoder gives one constant frame) and no prompt token."""

from __future__ import annotations

import torch

from .base import Task, register_task


@register_task("lm")
class LanguageModelling(Task):
    name = "lm"
    modality = "none"  # the encoders it reads
    input_field = "text"

    def prompt(self) -> list[int]:
        return []  # the LM models ``<s> text </s>``; fusion feeds it only a prompt's text part

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        return torch.zeros(1)

    def collate_inputs(self, inputs):
        return torch.zeros(len(inputs), 1), None

    def score(self, references, hypotheses) -> dict:
        return {}
