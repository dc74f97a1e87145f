"""``Seq2Seq``: a table of task routes (each an encoder, an optional CTC head, decoding settings
and a prompt) over one shared text decoder, and its training losses. Decoding
(:mod:`mmseq.decoding.generate`) and the Python API (:mod:`mmseq.inference.api`) are bound to it
as methods; checkpoint folders are read and written by :mod:`mmseq.checkpoint`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .decoder import DecoderConfig, TextDecoder
from .decoding.generate import decode_texts, generate
from .decoding.options import DecodingOptions
from .encoders import ENCODERS, create_encoder
from .errors import ConfigError, InputError
from .inference.api import caption, transcribe, translate
from .tasks import TASKS, TaskTable, create_task
from .tokenizer import Tokenizer


ROUTE_KEYS = ("task", "encoder", "ctc_weight", "batch_size", "decoding", "prompt", "prompting")


def route_table(config: ModelConfig, task: str | None) -> dict[str, dict]:
    """The route entries of a model config: ``model.tasks``, or the one route its shorthand
    (``model.encoder``, ``model.ctc_weight``, the config's ``task``) describes."""
    if not config.tasks:
        if task == "multitask":
            raise ConfigError("task: multitask needs model.tasks, a table of the tasks (see recipes/multitask)")
        name = task or "asr"
        entry = {"task": name, "encoder": dict(config.encoder), "ctc_weight": config.ctc_weight}
        return {name: {**entry, "prompting": dict(config.prompting)} if config.prompting else entry}
    if task not in (None, "multitask"):
        raise ConfigError(f"task: {task} goes with model.encoder; with model.tasks (a table of tasks) leave "
                          "task out or say task: multitask")
    table = {}
    for name, entry in config.tasks.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"model.tasks.{name}: expected a mapping of settings ({', '.join(ROUTE_KEYS)})")
        unknown = sorted(set(entry) - set(ROUTE_KEYS))
        if unknown:
            raise ConfigError(f"model.tasks.{name}: unknown setting {unknown[0]!r}; known: {', '.join(ROUTE_KEYS)}")
        table[name] = {"task": name, "ctc_weight": 0.0, **entry}
    return table


@dataclass
class Route:
    """One task of a model: the parts that serve it. Several routes may share an encoder, and
    they all share the model's decoder."""

    name: str
    task: "object"  # its :class:`mmseq.tasks.Task` (inputs, collate, metrics, prompt)
    encoder: nn.Module
    ctc_head: nn.Module | None
    ctc_weight: float
    decoding: dict  # DecodingOptions settings over the model's own
    batch_size: float  # batch budget in the task's own unit (multiplies data.batch_size)
    adapters: object = None  # its LoRA updates' switch (mmseq.adapters.Switch), on only while it is chosen

    @property
    def kind(self) -> str:
        return self.task.kind


class Seq2Seq(nn.Module):
    """Encoders + one decoder (+ CTC heads), a route per named task. ``forward(batch)`` gives the
    training losses of a batch of one route (``batch["task"]`` names it)."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, task: str | None = None,
                 decoding: dict | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.decoding = DecodingOptions(**(decoding or {}))
        self.training_record: dict = {}  # how the weights were trained beyond cross-entropy (e.g. SCST's reward)
        self.prompt_tuning: dict | None = None  # the base pointer of a prompt-tuned model (mmseq.training.prompt_tuning)
        table = route_table(config, task)
        self.encoders = nn.ModuleDict()
        for name, entry in table.items():
            if isinstance(entry.get("encoder"), str):
                continue  # shared: built by the route it names
            self.encoders[name], table[name]["encoder"] = _build_encoder(entry.get("encoder") or {},
                                                                         f"model.tasks.{name}.encoder")
        for name, entry in table.items():
            shared = entry.get("encoder")
            if isinstance(shared, str) and shared not in self.encoders:
                raise ConfigError(f"model.tasks.{name}.encoder: {shared!r} names no route with an encoder of its own "
                                  f"({', '.join(self.encoders)})")
        widths = {name: encoder.output_dim for name, encoder in self.encoders.items()}
        if len(set(widths.values())) > 1:
            raise ConfigError(f"model.tasks: the encoders share one decoder and must have one width; got {widths}")
        width = next(iter(widths.values()))
        decoder_config = DecoderConfig(**{**config.decoder, "vocab_size": tokenizer.vocab_size, "memory_dim": width})
        self.decoder = TextDecoder(decoder_config)
        self.ctc_heads = nn.ModuleDict({name: nn.Linear(width, tokenizer.vocab_size)
                                        for name, entry in table.items() if float(entry.get("ctc_weight") or 0) > 0})
        self.config = replace(config, tasks=table, encoder={}, ctc_weight=0.0, prompting={})
        self.routes: dict[str, Route] = {}
        for name, entry in table.items():
            encoder = self.encoders[entry["encoder"] if isinstance(entry["encoder"], str) else name]
            kind = entry.get("task", name)
            if kind not in TASKS:
                raise ConfigError(f"model.tasks.{name}: unknown task {kind!r}; registered: {', '.join(TASKS.names())}")
            routed = create_task(kind, encoder, tokenizer, decoder_config.max_length, name=name,
                                 prompt=entry.get("prompt"), prompting=entry.get("prompting"))
            self.routes[name] = Route(name, routed, encoder, self.ctc_heads[name] if name in self.ctc_heads else None,
                                      float(entry.get("ctc_weight") or 0), dict(entry.get("decoding") or {}),
                                      float(entry.get("batch_size") or 1.0))
        self.task = TaskTable({name: route.task for name, route in self.routes.items()},
                              {name: route.batch_size for name, route in self.routes.items()})

    def route(self, name: str | None = None, kind: str | None = None) -> Route:
        """The route called ``name``; without a name, the model's only route (of task ``kind``,
        when given: an audio file needs no name on a model with one speech route). Otherwise an
        :class:`InputError` that names the tasks and says how to choose. Choosing a route turns its
        adapters (LoRA) on and every other route's off: each batch runs through one route."""
        if name is not None:
            if name not in self.routes:
                raise InputError(f"this model has no task {name!r}; its tasks: {self._described()}")
            return self._switch(self.routes[name])
        found = [r for r in self.routes.values() if kind is None or r.kind == kind]
        if len(found) == 1:
            return self._switch(found[0])
        wanted = f" of kind {kind!r}" if kind else ""
        if not found:
            raise InputError(f"this model has no task{wanted}; its tasks: {self._described()}")
        raise InputError(f"this model serves several tasks{wanted}: say which with --task (task=...); "
                         f"its tasks: {self._described()}")

    def _switch(self, chosen: Route) -> Route:
        for route in self.routes.values():
            if route.adapters is not None:
                route.adapters.on = route is chosen
        return chosen

    def _described(self) -> str:
        return ", ".join(name if route.kind == name else f"{name} ({route.kind})" for name, route in self.routes.items())

    @property
    def encoder(self) -> nn.Module:
        """The encoder of the model's only route (see :meth:`route` for a model of several)."""
        return self.route().encoder

    @property
    def ctc_head(self) -> nn.Module | None:
        """The CTC head of the model's only route."""
        return self.route().ctc_head

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor | None, task: str | None = None):
        """``(memory (batch, frames, dim), mask (batch, frames))`` from the encoder of route ``task``."""
        return self.route(task).encoder(inputs, lengths)

    def forward(self, batch: dict) -> dict:
        """Joint CTC/attention loss of a batch from the task's ``collate``.

        Returns ``loss_sum`` (summed over the batch's examples, as ESPnet does: the trainer divides
        by the examples of the whole optimizer step, so accumulation and data parallelism give the
        same update as one large batch), ``loss`` (per example), ``attention_loss``, ``ctc_loss``
        (per example), ``examples``, ``correct`` and ``tokens`` (for accuracy).
        """
        route = self.route(batch.get("task"))
        ctc_head, ctc_weight = route.ctc_head, route.ctc_weight
        memory, memory_mask = route.encoder(batch["inputs"], batch.get("lengths"))
        if "input_index" in batch:  # several targets per input: each row attends to its input's memory
            memory, memory_mask = memory[batch["input_index"]], memory_mask[batch["input_index"]]
        tokens = batch["tokens"]
        examples = tokens.shape[0]
        logits = self.decoder(tokens[:, :-1], memory, memory_mask)
        targets = tokens[:, 1:].clone()
        # The prompt is given, not predicted: only the text and </s> are scored.
        position = torch.arange(targets.shape[1], device=targets.device)[None]
        targets[(position < batch["prefix_lengths"][:, None] - 1) | (targets == self.tokenizer.pad_id)] = -100
        attention_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                        label_smoothing=self.config.label_smoothing, reduction="sum")
        counted = targets != -100
        out = {"attention_loss": attention_sum / examples, "examples": examples, "tokens": counted.sum(),
               "correct": ((logits.argmax(-1) == targets) & counted).sum()}
        loss_sum = attention_sum
        if ctc_head is not None:
            ctc_sum = self.ctc_loss(memory, memory_mask, tokens, batch["prefix_lengths"], ctc_head)
            out["ctc_loss"] = ctc_sum / examples
            loss_sum = ctc_weight * ctc_sum + (1 - ctc_weight) * attention_sum
        out["loss_sum"], out["loss"] = loss_sum, loss_sum / examples
        return out

    def ctc_log_probs(self, memory: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """CTC log-probabilities ``(batch, frames, vocab)`` of ``head`` (default: the only route's)."""
        return (head if head is not None else self.ctc_head)(memory).float().log_softmax(-1)

    def ctc_loss(self, memory, memory_mask, tokens, prefix_lengths, head: nn.Module | None = None) -> torch.Tensor:
        """CTC loss summed over the batch, on the text tokens (prompt, ``<s>``, ``</s>`` excluded);
        the blank is ``<pad>``."""
        position = torch.arange(tokens.shape[1], device=tokens.device)[None]
        is_text = (position >= prefix_lengths[:, None]) & (tokens != self.tokenizer.pad_id) \
            & (tokens != self.tokenizer.eos_id)
        log_probs = self.ctc_log_probs(memory, head).transpose(0, 1)
        return F.ctc_loss(log_probs, tokens[is_text], memory_mask.sum(1), is_text.sum(1),
                          blank=self.tokenizer.pad_id, reduction="sum", zero_infinity=True)

    # Decoding and the Python API, bound as methods (mmseq/decoding/generate.py, mmseq/inference/api.py).
    generate = generate
    decode_texts = decode_texts
    transcribe = transcribe
    caption = caption
    translate = translate


def _build_encoder(settings: dict, where: str):
    """A registered encoder from ``{"name": ..., **settings}``, and the settings its checkpoint keeps:
    an encoder that settles some settings while it is built (a text encoder's source vocabulary
    learned from the training manifest) reports them through ``checkpoint_settings()``."""
    settings = dict(settings)
    name = settings.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} needs a 'name' (see `mmseq encoders`)")
    if name not in ENCODERS:
        raise ConfigError(f"{where}: unknown encoder {name!r}; registered: {', '.join(ENCODERS.names())}")
    encoder = create_encoder(name, **settings)
    if hasattr(encoder, "checkpoint_settings"):
        settings = encoder.checkpoint_settings()
    return encoder, {"name": name, **settings}


