"""``Seq2Seq``: any registered encoder, the shared text decoder and an optional CTC head; saving
and loading checkpoint folders (``config.json`` + ``model.safetensors`` + tokenizer files)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import __version__
from .decoder import DecoderConfig, TextDecoder
from .encoders import ENCODERS, create_encoder
from .errors import CheckpointError, ConfigError, TokenizerError
from .search import DecodingOptions, Hypothesis, beam_search, fused_scorers, greedy_search
from .tasks import TASKS, create_task
from . import lm as _lm  # noqa: F401  (registers the "lm" task and the "null" encoder)
from .tokenizer import Tokenizer, build_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class ModelConfig:
    encoder: dict = field(default_factory=lambda: {"name": "conformer"})  # name + the encoder's settings
    decoder: dict = field(default_factory=dict)  # DecoderConfig settings
    ctc_weight: float = 0.3  # share of the CTC loss in joint training (0: no CTC head)
    label_smoothing: float = 0.1
    # Multitask (task: multitask): one entry per task, {"encoder": {...}, "ctc_weight": 0.0,
    # "batch_size": budget in the task's own unit, "decoding": {...}}; the encoders share the decoder.
    tasks: dict = field(default_factory=dict)


class Seq2Seq(nn.Module):
    """Encoder + decoder (+ CTC head) for one task. ``forward(batch)`` gives the training losses."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, task: str, decoding: dict | None = None):
        super().__init__()
        self.config, self.tokenizer, self.task_name = config, tokenizer, task
        self.decoding = DecodingOptions(**(decoding or {}))
        self.training_record: dict = {}  # how the weights were trained beyond cross-entropy (e.g. SCST's reward)
        if config.tasks or task == "multitask":
            self._build_multitask()
            return
        self.encoder, settings = _build_encoder(config.encoder, "model.encoder")
        self.config = replace(config, encoder=settings)
        decoder_config = DecoderConfig(**{**config.decoder, "vocab_size": tokenizer.vocab_size,
                                          "memory_dim": self.encoder.output_dim})
        self.decoder = TextDecoder(decoder_config)
        self.ctc_head = nn.Linear(self.encoder.output_dim, tokenizer.vocab_size) if config.ctc_weight > 0 else None
        self.task = create_task(task, self.encoder, tokenizer, decoder_config.max_length)

    def _build_multitask(self) -> None:
        """One encoder (and CTC head, where its ``ctc_weight`` > 0) per entry of ``model.tasks``,
        one decoder for all; ``self.task`` is a :class:`mmseq.tasks.multitask.MultiTask`."""
        config, tokenizer = self.config, self.tokenizer
        if self.task_name != "multitask" or not config.tasks:
            raise ConfigError("model.tasks (one entry per task) goes with task: multitask, and task: multitask needs it")
        self.encoders, entries = nn.ModuleDict(), {}
        for name, entry in config.tasks.items():
            unknown = sorted(set(entry) - {"encoder", "ctc_weight", "batch_size", "decoding"})
            if unknown:
                raise ConfigError(f"model.tasks.{name}: unknown setting {unknown[0]!r}; "
                                  "known: batch_size, ctc_weight, decoding, encoder")
            self.encoders[name], settings = _build_encoder(entry.get("encoder") or {}, f"model.tasks.{name}.encoder")
            entries[name] = {**entry, "encoder": settings}
        self.config = replace(config, tasks=entries)
        widths = {name: encoder.output_dim for name, encoder in self.encoders.items()}
        if len(set(widths.values())) > 1:
            raise ConfigError(f"model.tasks: the encoders share one decoder and must have one width; got {widths}")
        width = next(iter(widths.values()))
        decoder_config = DecoderConfig(**{**config.decoder, "vocab_size": tokenizer.vocab_size, "memory_dim": width})
        self.decoder = TextDecoder(decoder_config)
        self.ctc_heads = nn.ModuleDict({name: nn.Linear(width, tokenizer.vocab_size)
                                        for name, entry in entries.items() if entry.get("ctc_weight", 0) > 0})
        tasks = {name: create_task(name, self.encoders[name], tokenizer, decoder_config.max_length) for name in entries}
        self.task = TASKS.create("multitask", tasks=tasks,
                                 batch_sizes={name: entry.get("batch_size") for name, entry in entries.items()})

    def parts(self, task: str | None = None) -> tuple[nn.Module, nn.Module | None, float]:
        """``(encoder, ctc_head or None, ctc_weight)`` serving ``task``: a multitask model's
        batches name their task; a single-task model has one of each and ignores the name."""
        if not self.config.tasks:
            return self.encoder, self.ctc_head, self.config.ctc_weight
        self.task.subtask(task)  # an InputError naming the tasks when it is not one
        head = self.ctc_heads[task] if task in self.ctc_heads else None
        return self.encoders[task], head, float(self.config.tasks[task].get("ctc_weight", 0.0))

    def task_for(self, name: str | None = None):
        """The :class:`Task` that serves ``name``: a multitask model's sub-task, else the model's task."""
        return self.task.subtask(name) if self.config.tasks else self.task

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor | None, task: str | None = None):
        return self.parts(task)[0](inputs, lengths)

    def forward(self, batch: dict) -> dict:
        """Joint CTC/attention loss of a batch from the task's ``collate``.

        Returns ``loss_sum`` (summed over the batch's examples, as ESPnet does: the trainer divides
        by the examples of the whole optimizer step, so accumulation and data parallelism give the
        same update as one large batch), ``loss`` (per example), ``attention_loss``, ``ctc_loss``
        (per example), ``examples``, ``correct`` and ``tokens`` (for accuracy).
        """
        _, ctc_head, ctc_weight = self.parts(batch.get("task"))
        memory, memory_mask = self.encode(batch["inputs"], batch.get("lengths"), batch.get("task"))
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
    def generate(self, batch: dict, prompt: str | list[int] | None = None, lm=None, scorers=(),
                 **options) -> list[list[Hypothesis]]:
        """Decode a batch (``inputs``, ``lengths``); returns n-best hypotheses per input, best first.

        ``prompt``: prompt tokens and/or a text prefix the decoder is forced through after the
        task token (a string such as ``"<|short|> a photo of"``, or ids); it is not scored, and
        ``Hypothesis.output`` starts with it. ``lm``: a :class:`mmseq.lm.LanguageModel` (or its
        checkpoint folder) fused with weight ``lm_weight``. ``options`` override the checkpoint's
        :class:`DecodingOptions` (``beam_size``, ``ctc_weight``, ``nbest``, ...). ``scorers``: more
        ``(scorer, weight)`` pairs fused with the decoder (:class:`mmseq.scorers.Scorer`).
        """
        name = batch.get("task")
        task_options = self.config.tasks[name].get("decoding", {}) if self.config.tasks and name in self.config.tasks else {}
        options = DecodingOptions(**{**asdict(self.decoding), **task_options, **options}).check()
        prompt_ids = self.task_for(name).prompt() + (self.tokenizer.encode_prompt(prompt) if isinstance(prompt, str)
                                                     else list(prompt or []))
        _, ctc_head, _ = self.parts(name)
        if isinstance(lm, (str, os.PathLike)):
            lm = _lm.LanguageModel.cached(lm, self.device)
        if lm is not None and options.lm_weight > 0:
            lm.check_tokenizer(self.tokenizer)
        else:
            lm = None
        inputs = batch["inputs"].to(self.device)
        lengths = batch.get("lengths")
        memory, memory_mask = self.encode(inputs, lengths.to(self.device) if lengths is not None else None, name)
        ctc = self.ctc_log_probs(memory, ctc_head) if options.ctc_weight > 0 and ctc_head is not None else None
        fused = fused_scorers(self, options, ctc, lm, scorers)
        if options.beam_size == 1 and not fused:
            return [[hyp] for hyp in greedy_search(self, memory, memory_mask, prompt_ids, options)]
        return beam_search(self, memory, memory_mask, prompt_ids, options, scorers=fused)

    def decode_texts(self, batch: dict, **options) -> list[str]:
        """Best text per input; a forced text prefix of the prompt starts it."""
        return [self.tokenizer.decode(hyps[0].output) if hyps else "" for hyps in self.generate(batch, **options)]

    def _run(self, sources, batch_size: int, **options) -> list[str]:
        """Decode many inputs in length-sorted batches, results in input order. Every readable
        input is decoded; then a bad one raises :class:`mmseq.inference.UnreadableInputsError`
        (its ``.results`` keep the others), or with ``errors="report"`` its error takes its place.
        See :func:`mmseq.inference.decode_sources`."""
        from .inference import decode_sources

        return decode_sources(self, sources, batch_size=batch_size, **options)

    def transcribe(self, audio, batch_size: int = 16, timestamps: bool = False, **options) -> list:
        """Transcripts of audio files, waveforms (at the encoder's sample rate) or both. With
        ``timestamps=True``: :class:`mmseq.timestamps.TimedTranscript` objects (``.text``,
        ``.segments``, ``.words`` with start and end seconds and a confidence); see
        :func:`mmseq.timestamps.timed_transcripts` for its options (``method``, ``longform``)."""
        if timestamps:
            from .timestamps import timed_transcripts
            return timed_transcripts(self, audio, batch_size, task="asr", **options)
        return self._run(audio, batch_size, task="asr", **options)

    def caption(self, images, batch_size: int = 16, **options) -> list[str]:
        """Captions of image files, PIL images or both."""
        return self._run(images, batch_size, task="caption", **options)

    def translate(self, texts, batch_size: int = 16, **options) -> list[str]:
        """Target texts of source texts (text-to-text models)."""
        return self._run(texts, batch_size, task="text", **options)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        return {"mmseq_version": __version__, "task": self.task_name, "model": asdict(self.config),
                "tokenizer": self.tokenizer.config(), "decoding": asdict(self.decoding),
                "training": self.training_record}

    def save(self, folder: str | os.PathLike, write_extra=None, state_dict: dict | None = None) -> Path:
        """Write a checkpoint folder atomically: into a temporary folder, then renamed into place.

        ``write_extra(tmp_folder)`` may add files (the trainer's state) inside the same rename.
        ``state_dict``: weights to write instead of this module's own (the trainer passes weights
        gathered from sharded training)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.checkpoint_config(), indent=1))
            # Cloned: safetensors refuses tensors that share storage (torchaudio's window buffers do).
            weights = self.state_dict() if state_dict is None else state_dict
            save_file({k: v.detach().clone().contiguous() for k, v in weights.items()},
                      str(tmp / WEIGHTS_FILE))
            self.tokenizer.save(tmp)
            if write_extra is not None:
                write_extra(tmp)
            _fsync_folder(tmp)
            if folder.exists() and _exchange(tmp, folder):
                shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous checkpoint
            elif folder.exists():
                old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(folder, old)
                os.rename(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


def _one_line(error: Exception, limit: int = 300) -> str:
    """An error's message on one line (torch's span many), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exchange(new: Path, old: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``), so that a
    process killed at any moment leaves a whole checkpoint at ``old``; False where the system or
    file system cannot (the caller then renames twice)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_current_folder, rename_exchange = -100, 2
    return renameat2(at_current_folder, os.fsencode(new), at_current_folder, os.fsencode(old), rename_exchange) == 0


def _build_encoder(settings: dict, where: str):
    """A registered encoder from ``{"name": ..., **settings}``, and the settings its checkpoint keeps:
    an encoder that settles some settings while it is built (a text encoder's source vocabulary
    learned from the training manifest) reports them through ``checkpoint_settings()``."""
    settings = dict(settings)
    name = settings.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} needs a 'name' (see `mmseq encoders`)")
    encoder = create_encoder(name, **settings)
    if hasattr(encoder, "checkpoint_settings"):
        settings = encoder.checkpoint_settings()
    return encoder, {"name": name, **settings}


def _fsync_folder(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())


def build_model(config: dict, folder: str | os.PathLike | None = None) -> Seq2Seq:
    """A model from a checkpoint-style config dict (``task``, ``model``, ``tokenizer``, ``decoding``)."""
    for key in ("task", "model", "tokenizer"):
        if key not in config:
            raise ConfigError(f"config lacks {key!r}")
    if config["task"] not in TASKS:
        raise ConfigError(f"unknown task {config['task']!r}; registered: {', '.join(TASKS.names())}")
    encoder = config["model"].get("encoder", {}).get("name")
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r}; registered: {', '.join(ENCODERS.names())}")
    tokenizer = build_tokenizer(config["tokenizer"], folder)
    return Seq2Seq(ModelConfig(**config["model"]), tokenizer, config["task"], config.get("decoding"))


def load(folder: str | os.PathLike, device: str | torch.device | None = None) -> Seq2Seq:
    """Load a checkpoint folder. Reads only JSON and safetensors: nothing in it is executed.

    Raises :class:`CheckpointError` when the folder is missing, holds only pickled weights, or its
    files are corrupt, and :class:`ConfigError` when its config names an unknown component.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no {CONFIG_FILE})")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}]
        hint = f"; it holds {', '.join(pickles)}, which mmseq never unpickles" if pickles else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}{hint}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{folder / CONFIG_FILE}: corrupt config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: corrupt config (a JSON {type(config).__name__}, not an object)")
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
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: corrupt or incompatible weights ({_one_line(error)})") from None
    training = config.get("training")
    model.training_record = dict(training) if isinstance(training, dict) else {}
    model.eval()
    return model.to(device) if device is not None else model
