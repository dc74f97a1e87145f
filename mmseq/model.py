"""``Seq2Seq``: a table of task routes (each an encoder, an optional CTC head, decoding settings
and a prompt) over one shared text decoder; building it from a config and loading checkpoint
folders (``config.json`` + ``model.safetensors`` + tokenizer files)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import __version__
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config, read_weights, write_folder, write_weights
from .decoder import DecoderConfig, TextDecoder
from .encoders import ENCODERS, create_encoder
from .errors import CheckpointError, ConfigError, InputError, TokenizerError
from .search import DecodingOptions, Hypothesis, beam_search, fused_scorers, greedy_search
from .tasks import TASKS, TaskTable, create_task
from .tokenizer import Tokenizer, build_tokenizer


ROUTE_KEYS = ("task", "encoder", "ctc_weight", "batch_size", "decoding", "prompt", "prompting")


@dataclass
class ModelConfig:
    """The network. A model is a table of named tasks (``tasks``), each a route: its encoder, an
    optional CTC head, its decoding settings and its prompt; one decoder serves them all.
    ``encoder`` and ``ctc_weight`` are the shorthand for a table of one route, named by the
    config's ``task``."""

    encoder: dict = field(default_factory=lambda: {"name": "conformer"})  # name + the encoder's settings
    decoder: dict = field(default_factory=dict)  # DecoderConfig settings
    ctc_weight: float = 0.3  # share of the CTC loss in joint training (0: no CTC head)
    label_smoothing: float = 0.1
    prompting: dict = field(default_factory=dict)  # the one route's prompt settings (mmseq.prompts.Prompting)
    # The route table: {name: {"task": kind (default: the name), "encoder": {...} or the name of
    # another route whose encoder it shares, "ctc_weight": 0.0, "batch_size": budget in the task's
    # own unit, "decoding": {...}, "prompt": "<|asr|>" (default: the task's token), "prompting":
    # {controls, prompt_dropout, context_dropout, context_length} (see mmseq.prompts)}}.
    tasks: dict = field(default_factory=dict)


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
        self.prompt_tuning: dict | None = None  # the base pointer of a prompt-tuned model (mmseq.prompt_tuning)
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
        self._register_load_state_dict_pre_hook(self._upgrade_weights)

    def _upgrade_weights(self, state_dict, prefix, *args) -> None:
        """Weights saved before the route table (a single-task model's ``encoder.*`` and
        ``ctc_head.*``) go to its one route's ``encoders.<name>.*`` and ``ctc_heads.<name>.*``."""
        if len(self.routes) != 1:
            return
        name = next(iter(self.routes))
        for old, new in (("encoder.", "encoders."), ("ctc_head.", "ctc_heads.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + name + "." + key[len(prefix + old):]] = state_dict.pop(key)

    def route(self, name: str | None = None, kind: str | None = None) -> Route:
        """The route called ``name``; without a name, the model's only route (of task ``kind``,
        when given: an audio file needs no name on a model with one speech route). Otherwise an
        :class:`InputError` that names the tasks and says how to choose."""
        if name is not None:
            if name not in self.routes:
                raise InputError(f"this model has no task {name!r}; its tasks: {self._described()}")
            return self.routes[name]
        found = [r for r in self.routes.values() if kind is None or r.kind == kind]
        if len(found) == 1:
            return found[0]
        wanted = f" of kind {kind!r}" if kind else ""
        if not found:
            raise InputError(f"this model has no task{wanted}; its tasks: {self._described()}")
        raise InputError(f"this model serves several tasks{wanted}: say which with --task (task=...); "
                         f"its tasks: {self._described()}")

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

    # -- decoding ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, prompt=None, lm=None, scorers=(), context=None,
                 **options) -> list[list[Hypothesis]]:
        """Decode a batch (``inputs``, ``lengths``); returns n-best hypotheses per input, best first.

        ``prompt``: prompt tokens and/or a text prefix the decoder is forced through after the
        task token (a string such as ``"<|short|> a photo of"``, or ids), or a list of them, one
        per input; it is not scored, and ``Hypothesis.output`` starts with it. ``context``: text
        that conditions the output (the sentence before, names or words to expect), forced before
        ``<s>`` in its own segment and never part of the output: a string for every input, or a
        list of one per input (each a string or a list of words). A batch from a task's
        ``collate`` brings each example's own prompt and context (``prompts``, ``contexts``);
        ``prompt`` adds to them, ``context`` replaces them.

        ``lm``: a :class:`mmseq.lm.LanguageModel` (or its checkpoint folder) or an n-gram
        :class:`mmseq.lm.NGramLM` (or its folder or ARPA file) fused with weight ``lm_weight``.
        ``options`` override the checkpoint's :class:`DecodingOptions` (``beam_size``, ``ctc_weight``, ``nbest``, ...). ``scorers``: more ``(scorer, weight)``
        pairs fused with the decoder (:class:`mmseq.scorers.Scorer`). With ``timestamp_tokens=True``
        the output holds the tokenizer's timestamp tokens, and the prompt drops the token that asks
        for none (:meth:`~mmseq.tokenizer.Tokenizer.timestamp_prompt`).
        """
        route = self.route(batch.get("task"))
        options = DecodingOptions(**{**asdict(self.decoding), **route.decoding, **options}).check()
        count = batch["inputs"].shape[0]
        extra = _per_input(prompt, count, "prompt", self.tokenizer.encode_prompt)
        prompts = [self.tokenizer.timestamp_prompt(self.tokenizer.merge_prompt(route.task.prompt(), list(own) + more),
                                                   options.timestamp_tokens)
                   for own, more in zip(batch.get("prompts") or [[]] * count, extra)]
        contexts = batch.get("contexts") or [[]] * count
        if context is not None:
            contexts = _per_input(context, count, "context", route.task.context_ids, words=True)
        if isinstance(lm, (str, os.PathLike)):
            from .lm import load_lm
            lm = load_lm(lm, self.tokenizer, self.device)
        if lm is not None and options.lm_weight > 0:
            lm.check_tokenizer(self.tokenizer)
        else:
            lm = None
        inputs = batch["inputs"].to(self.device)
        lengths = batch.get("lengths")
        memory, memory_mask = route.encoder(inputs, lengths.to(self.device) if lengths is not None else None)
        ctc = self.ctc_log_probs(memory, route.ctc_head) if options.ctc_weight > 0 and route.ctc_head is not None else None
        # Inputs of one prompt are searched together (the fused scorers condition on it); contexts
        # of any length share a search (left-padded, see mmseq.search).
        groups: dict[tuple, list[int]] = {}
        for i, ids in enumerate(prompts):
            groups.setdefault(tuple(ids), []).append(i)
        results: list = [None] * count
        for ids, members in groups.items():
            part = None if len(members) == count else torch.tensor(members, device=self.device)
            pick = (lambda x: x) if part is None else (lambda x: x.index_select(0, part))
            fused = fused_scorers(self, options, None if ctc is None else pick(ctc), lm, scorers)
            group_context = [contexts[i] for i in members]
            if options.beam_size == 1 and not fused:
                found = [[hyp] for hyp in greedy_search(self, pick(memory), pick(memory_mask), list(ids), options,
                                                        context=group_context)]
            else:
                found = beam_search(self, pick(memory), pick(memory_mask), list(ids), options, scorers=fused,
                                    context=group_context)
            for i, hyps in zip(members, found):
                results[i] = hyps
        return results

    def decode_texts(self, batch: dict, **options) -> list[str]:
        """Best text per input; a forced text prefix of the prompt starts it."""
        return [self.tokenizer.decode(hyps[0].output) if hyps else "" for hyps in self.generate(batch, **options)]

    def _run(self, sources, batch_size: int, kind: str, task: str | None = None, **options) -> list[str]:
        """Decode many inputs in length-sorted batches, results in input order, by route ``task``
        (default: the model's only route of ``kind``). Every readable input is decoded; then a
        bad one raises :class:`mmseq.inference.UnreadableInputsError` (its ``.results`` keep the
        others), or with ``errors="report"`` its error takes its place. See
        :func:`mmseq.inference.decode_sources`."""
        from .inference import decode_sources

        return decode_sources(self, sources, batch_size=batch_size, task=self.route(task, kind).name, **options)

    def transcribe(self, audio, batch_size: int = 16, task: str | None = None, timestamps: bool = False,
                   **options) -> list:
        """Transcripts of audio files, waveforms (at the encoder's sample rate) or both; ``task``
        picks the route of a model with several speech routes. With ``timestamps=True``:
        :class:`mmseq.timestamps.TimedTranscript` objects (``.text``, ``.segments``, ``.words`` with
        start and end seconds and a confidence); see :func:`mmseq.timestamps.timed_transcripts` for
        its options (``method``, ``longform``)."""
        if timestamps:
            from .timestamps import timed_transcripts
            return timed_transcripts(self, audio, batch_size, task=self.route(task, "asr").name, **options)
        return self._run(audio, batch_size, "asr", task, **options)

    def caption(self, images, batch_size: int = 16, task: str | None = None, **options) -> list[str]:
        """Captions of image files, PIL images or both."""
        return self._run(images, batch_size, "caption", task, **options)

    def translate(self, texts, batch_size: int = 16, task: str | None = None, **options) -> list[str]:
        """Target texts of source texts (text-to-text routes)."""
        return self._run(texts, batch_size, "text", task, **options)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        model = {"decoder": self.config.decoder, "label_smoothing": self.config.label_smoothing,
                 "tasks": self.config.tasks}
        return {"mmseq_version": __version__, "model": model, "tokenizer": self.tokenizer.config(),
                "decoding": asdict(self.decoding), "training": self.training_record}

    def save(self, folder: str | os.PathLike, write_extra=None, state_dict: dict | None = None) -> Path:
        """Write a checkpoint folder atomically (see :func:`mmseq.checkpoint.write_folder`).

        ``write_extra(tmp_folder)`` may add files (the trainer's state) inside the same rename.
        ``state_dict``: weights to write instead of this module's own (the trainer passes weights
        gathered from sharded training). A prompt-tuned model writes its pointer and soft prompt only."""
        if self.prompt_tuning is not None:
            from .prompt_tuning import save
            return save(self, folder, write_extra, state_dict)

        def write(tmp: Path) -> None:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.checkpoint_config(), indent=1))
            write_weights(self.state_dict() if state_dict is None else state_dict, tmp / WEIGHTS_FILE)
            self.tokenizer.save(tmp)
            if write_extra is not None:
                write_extra(tmp)

        return write_folder(folder, write)


def _per_input(value, count: int, name: str, encode, words: bool = False) -> list[list[int]]:
    """``prompt=`` or ``context=`` of :meth:`Seq2Seq.generate` as ids for each of ``count`` inputs:
    None (nothing), one value for all (a string, or ids), or a list of one value per input. With
    ``words`` a per-input value may itself be a list of words."""
    if value is None:
        return [[] for _ in range(count)]
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)
                                  and not (words and value)):
        ids = encode(value) if isinstance(value, str) else list(value)
        return [list(ids) for _ in range(count)]
    values = list(value)
    if len(values) != count:
        raise InputError(f"{name}= holds {len(values)} values for {count} inputs: give one value, or one per input")
    return [[] if v is None else (encode(v) if isinstance(v, str) or words else list(v)) for v in values]


def _one_line(error: Exception, limit: int = 300) -> str:
    """An error's message on one line (torch's span many), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def build_model(config: dict, folder: str | os.PathLike | None = None) -> Seq2Seq:
    """A model from a checkpoint-style config dict (``model``, ``tokenizer``, ``decoding``, and
    ``task`` for the one-route shorthand of checkpoints written before the route table)."""
    for key in ("model", "tokenizer"):
        if key not in config:
            raise ConfigError(f"config lacks {key!r}")
    tokenizer = build_tokenizer(config["tokenizer"], folder)
    return Seq2Seq(ModelConfig(**config["model"]), tokenizer, config.get("task"), config.get("decoding"))


def quantize(model: Seq2Seq) -> Seq2Seq:
    """The model with its linear layers' weights in int8 (dynamic quantization, CPU inference):
    each matrix product runs on 8-bit weights and activations quantized on the fly, as
    CTranslate2's ``int8``; the tied output projection, convolutions and norms stay float32."""
    import warnings

    if model.device.type != "cpu":
        raise InputError("int8 (dynamic quantization) runs on the CPU; load the model there")
    with warnings.catch_warnings():  # torch 2.11 points to torchao for this API, which it still serves
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def load(folder: str | os.PathLike, device: str | torch.device | None = None, compute_type: str = "float32") -> Seq2Seq:
    """Load a checkpoint folder. Reads only JSON and safetensors: nothing in it is executed.
    ``compute_type="int8"``: for inference on the CPU, the linear layers in int8 (:func:`quantize`).

    Raises :class:`CheckpointError` when the folder is missing, holds only pickled weights, or its
    files are corrupt, and :class:`ConfigError` when its config names an unknown component.
    """
    from .checks import check_checkpoint_config, check_task_encoder, check_weights
    if compute_type not in ("float32", "int8"):
        raise ConfigError(f"compute_type={compute_type!r}: float32 or int8")
    folder = Path(folder)
    config = read_config(folder)
    if "prompt_tuning" in config:  # a small folder: a pointer to its base and a soft prompt
        from .prompt_tuning import load_prompt_tuned
        return load_prompt_tuned(folder, config, device)
    check_checkpoint_config(config, folder / CONFIG_FILE)  # every setting in range (mmseq/checks.py)
    try:
        # The checkpoint's own weights replace any pretrained backbone: don't fetch or re-read those.
        model_config = config.get("model", {})
        tasks = model_config.get("tasks") if isinstance(model_config.get("tasks"), dict) else {}
        for encoder in [model_config.get("encoder", {})] + [t.get("encoder") for t in tasks.values() if isinstance(t, dict)]:
            if isinstance(encoder, dict):
                encoder.update({k: v for k, v in (("pretrained", False), ("pretrained_file", None)) if k in encoder})
        model = build_model(config, folder)
    except TokenizerError as error:
        raise CheckpointError(f"{folder}: unusable tokenizer ({error})") from None
    except ConfigError as error:
        raise ConfigError(f"{folder / CONFIG_FILE}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        # A setting this version does not know, or a value of the wrong type.
        raise ConfigError(f"{folder / CONFIG_FILE}: describes no model mmseq can build "
                          f"({type(error).__name__}: {_one_line(error)})") from None
    for route in model.routes.values():
        check_task_encoder(route.kind, route.encoder, f"model.tasks.{route.name}.encoder", str(folder / CONFIG_FILE))
    try:
        weights = read_weights(folder / WEIGHTS_FILE)
        model._upgrade_weights(weights, "")
        check_weights(weights, model.state_dict(), str(folder / WEIGHTS_FILE))
        model.load_state_dict(weights, strict=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: corrupt or incompatible weights ({_one_line(error)})") from None
    training = config.get("training")
    model.training_record = dict(training) if isinstance(training, dict) else {}
    model.eval()
    model = model.to(device) if device is not None else model
    return quantize(model) if compute_type == "int8" else model
