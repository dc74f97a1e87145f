"""The adapters of prompt tuning: a route of soft prompt vectors (and deep prompts) over a trained
model, and LoRA, a low-rank update of a frozen linear layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"), the second adapter form of prompt tuning (``prompt_tuning.lora``,
``prompt_tuning.lora_encoder``).

:func:`add_lora` gives each linear layer it is given (the decoder's attention projections
``self_qkv``, ``self_out``, ``cross_q``, ``cross_kv``, ``cross_out`` of every layer; every linear
layer of an encoder) two parameters beside its own, ``lora_a``
``(rank, in)`` and ``lora_b`` ``(out, rank)``, and a forward hook that adds ``x A^T B^T * alpha / rank``
to its output. ``B`` starts at zero, so the adapted model starts as the base; the layer's own
``weight`` and ``bias`` keep their names, so a base checkpoint loads into it unchanged and the
adapter's tensors are the state-dict entries ending in ``.lora_a`` / ``.lora_b``. The hook adds
nothing while its route's :class:`Switch` is off, so the adapters of a route leave the others as
they were.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, InputError
from .model import Route
from .tasks import TaskTable, create_task

SOFT_PROMPT, DEEP_PROMPT = "decoder.soft_prompt", "decoder.deep_prompt"
PROJECTIONS = ("self_qkv", "self_out", "cross_q", "cross_kv", "cross_out")
SUFFIXES = (".lora_a", ".lora_b")


class Switch:
    """Whether one route's LoRA updates apply: the model turns them on while that route is chosen
    (:meth:`mmseq.model.Seq2Seq.route`), so every other route runs on the base weights as they were."""

    on = True


def _update(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    if not module.lora_switch.on:
        return output
    x = inputs[0].to(module.lora_a.dtype)
    return output + (F.linear(F.linear(x, module.lora_a), module.lora_b) * module.lora_scale).to(output.dtype)


def decoder_projections(decoder: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every attention projection of ``decoder``'s layers, by name."""
    return [(f"layers.{index}.{projection}", getattr(layer, projection))
            for index, layer in enumerate(decoder.layers) for projection in PROJECTIONS]


def linear_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every linear layer of ``module`` (an encoder: attention and feed-forward alike), by name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]


def add_lora(targets: list[tuple[str, nn.Linear]], rank: int, alpha: float | None = None,
             switch: Switch | None = None) -> list[str]:
    """Rank-``rank`` adapters on the named linear layers ``targets`` (:func:`decoder_projections`,
    :func:`linear_layers`), applied while ``switch`` is on (default: always); returns the new
    parameters' names. ``alpha`` defaults to ``rank`` (scale 1)."""
    names = []
    generator = torch.Generator().manual_seed(rank)
    for name, linear in targets:
        if hasattr(linear, "lora_a"):
            raise ValueError(f"{name} already has a LoRA adapter")
        a = torch.empty(rank, linear.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # as nn.Linear's own weight
        linear.lora_a = nn.Parameter(a.to(linear.weight))
        linear.lora_b = nn.Parameter(linear.weight.new_zeros(linear.out_features, rank))
        linear.lora_scale = (alpha or rank) / rank
        linear.lora_switch = switch or Switch()
        linear.register_forward_hook(_update)
        names += [f"{name}{suffix}" for suffix in SUFFIXES]
    return names


def add_adapters(model, route, decoder_rank: int, encoder_rank: int = 0) -> None:
    """LoRA of ``route`` (of ``model``): rank ``decoder_rank`` on the decoder's attention and
    ``encoder_rank`` on every linear layer of its encoder (0: none), switched on. They apply to that
    route alone: the others, which share the decoder and perhaps the encoder, run on the base weights
    once chosen (:meth:`mmseq.model.Seq2Seq.route`)."""
    if decoder_rank or encoder_rank:
        route.adapters = Switch()
    if decoder_rank:
        add_lora(decoder_projections(model.decoder), decoder_rank, switch=route.adapters)
    if encoder_rank:
        add_lora(linear_layers(route.encoder), encoder_rank, switch=route.adapters)


def is_lora(name: str) -> bool:
    return name.endswith(SUFFIXES)


def is_adapter(name: str) -> bool:
    """A state-dict entry that prompt tuning trains and its folder holds: the soft prompt, the deep
    prompt, a LoRA matrix."""
    return name in (SOFT_PROMPT, DEEP_PROMPT) or is_lora(name)


def add_route(model, name: str, from_task: str | None, vectors: int, deep: bool = False):
    """Add route ``name`` to ``model`` (a :class:`mmseq.model.Seq2Seq`): it shares the encoder, CTC
    head, decoding settings, prompt and prompting of route ``from_task`` (default: the model's only
    route), and its prompt starts with ``vectors`` new soft prompt vectors (``deep``: with their
    own vectors at every decoder layer's input too). Returns the route."""
    if name in model.routes:
        raise ConfigError(f"prompt_tuning.task={name!r}: the base already has a task of that name "
                          f"({', '.join(model.routes)}); name the new task otherwise")
    if model.decoder.soft_prompt is not None:
        raise ConfigError("prompt_tuning.base: the base already holds a soft prompt; tune from a full checkpoint")
    try:
        base = model.route(from_task)
    except InputError as error:
        raise ConfigError(f"prompt_tuning.from_task: {error}") from None
    entry = dict(model.config.tasks.get(base.name, {}))
    task = create_task(base.kind, base.encoder, model.tokenizer, base.task.max_tokens, name=name,
                       prompt=entry.get("prompt"), prompting=entry.get("prompting"))
    task.soft_prompt = model.decoder.add_soft_prompt(vectors, deep)
    route = Route(name, task, base.encoder, base.ctc_head, base.ctc_weight, dict(base.decoding), base.batch_size)
    model.routes[name] = route
    model.task = TaskTable({n: r.task for n, r in model.routes.items()},
                           {n: r.batch_size for n, r in model.routes.items()})
    owner = next(n for n, encoder in model.encoders.items() if encoder is base.encoder)
    model.config.tasks[name] = {**entry, "encoder": owner}  # a string: the route whose encoder it shares
    return route


def freeze(model, train: str = "prompt") -> tuple[int, int]:
    """Make only the soft prompt trainable (``train="prompt"``), or every weight (``"all"``).
    Returns (trainable parameters, all parameters)."""
    model.requires_grad_(train == "all")
    for name, parameter in model.named_parameters():
        if is_adapter(name):
            parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
