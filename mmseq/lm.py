"""A Transformer language model over the decoder's vocabulary, for shallow fusion in beam search.

Trained by the shared trainer as task ``"lm"`` (text manifests, each line's ``text``) with the
``"null"`` encoder: the model is the ordinary text decoder, and its cross-attention sees one
constant frame, so it reduces to a learned bias per layer and the network is a decoder-only
Transformer LM. Train it on the recipe's own text with the recipe's tokenizer settings (so that the
ids match the speech model's), e.g. ``mmseq train recipes/synth_speech/lm.yaml``.

The fusion scorer, :class:`LanguageModel`, is in :mod:`mmseq.scorers.lm`; any scorer with the
small interface of :class:`mmseq.scorers.Scorer` can be fused the same way (an n-gram model, say).
"""

from __future__ import annotations

import torch

from .encoders.base import Encoder, register_encoder
from .tasks.base import Task, register_task


@register_encoder("null")
class NullEncoder(Encoder):
    """No input: one constant frame per example, for models that only model text (task ``lm``)."""

    modality = "none"

    def __init__(self, dim: int = 1):
        super().__init__()
        self.output_dim = dim

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None):
        batch = inputs.shape[0]
        memory = torch.zeros(batch, 1, self.output_dim, device=inputs.device)
        return memory, torch.ones(batch, 1, dtype=torch.bool, device=inputs.device)


@register_task("lm")
class LanguageModelling(Task):
    """Text only: each manifest line's ``text`` is a training sentence; no prompt token."""

    name = "lm"
    input_field = "text"
    metric = "loss"
    higher_is_better = False

    def prompt(self) -> list[int]:
        return []  # the LM models ``<s> text </s>``; fusion feeds it only a prompt's text part

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        return torch.zeros(1)

    def collate_inputs(self, inputs):
        return torch.zeros(len(inputs), 1), None

    def score(self, references, hypotheses) -> dict:
        return {}


# The fusion scorer lives with the other scorers; imported here so that ``mmseq.lm.LanguageModel`` stays.
from .scorers.lm import LanguageModel, _vocabulary  # noqa: E402,F401
