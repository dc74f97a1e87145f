"""What varies between kinds of training runs, behind one small interface.

A run's :class:`Stage` says where its model comes from when no checkpoint of the run exists yet,
what a resumed checkpoint must agree with, which tasks are read and trained, what the loss is,
and what a saved checkpoint records. The trainer asks its stage and never which stage it is.
Three stages implement it: :class:`Training` (a new model, or fine-tuning ``trainer.init_from``),
:class:`mmseq.training.scst.SelfCriticalStage` and
:class:`mmseq.training.prompt_tuning.PromptTuningStage`; :func:`mmseq.training.start.make_stage`
picks one from the config.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import load
from ..checks import check_resume_model
from ..model import route_table


class Stage:
    """The hooks of a kind of training run; the defaults are those of plain training.

    ``one_example_per_reference``: read the training manifest as for training (a caption line with
    five captions is five examples, an example over a batch's budget is skipped) rather than as
    for scoring (one example per line, every caption a reference).
    """

    one_example_per_reference = True

    def __init__(self, config):
        self.config = config

    def start_model(self):
        """The model a run with no checkpoint yet starts from; ``None``: a new model with a tokenizer
        trained on the training text (:func:`mmseq.training.start.new_model`)."""
        return None

    def check_resumed(self, model, folder: Path) -> None:
        """Raise :class:`mmseq.errors.ConfigError` when the model resumed from ``folder`` is not
        the one the config describes."""

    def training_table(self, model, log):
        """The task table the trainer reads, batches and scores with (``log``: a message line)."""
        return model.task

    def objective(self, model, examples: list[dict], output_dir: Path) -> nn.Module:
        """The module a step calls: its ``forward(batch)`` returns ``loss_sum``, ``examples``,
        ``correct`` and ``tokens`` as the model's own does."""
        return model

    def record(self) -> dict:
        """Entries for the model's ``training_record`` (its checkpoints' ``config.json``)."""
        return {}

    def after_save(self, folder: Path, log) -> None:
        """Called once a checkpoint ``folder`` is written."""


class Training(Stage):
    """Cross-entropy training of a new model, or fine-tuning of ``trainer.init_from`` (a pretrained
    or imported checkpoint)."""

    def start_model(self):
        return load(self.config.trainer.init_from) if self.config.trainer.init_from else None

    def check_resumed(self, model, folder: Path) -> None:
        if self.config.trainer.init_from:  # (a fine-tuned model is its trainer.init_from's)
            return
        config = self.config
        check_resume_model({"decoder": config.model.decoder, "tasks": route_table(config.model, config.task)},
                           {"decoder": model.config.decoder, "tasks": model.config.tasks}, folder)
