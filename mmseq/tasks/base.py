"""The shared part of every task: examples to padded batches with lengths and token targets."""

from __future__ import annotations

import random
import zlib

import torch
from torch.utils.data import Dataset

from ..data.manifest import boost_words, read_manifest
from ..errors import ConfigError, InputError, ManifestError, TokenizerError
from ..metrics import ACCURACY, LOSS, Metric
from ..registry import Registry

TASKS = Registry("task")
register_task = TASKS.register


class Task:
    """A task knows its inputs and metrics; the model, trainer and search do not.

    Subclasses set ``name`` (the kind registered), ``input_field`` (the manifest field holding the
    input), ``extensions`` (file endings of its inputs), ``metrics`` (the :class:`Metric` of each
    score it reports), and implement ``load_input``, ``collate_inputs`` and ``score``.

    An instance serves one route of a model: ``name`` is then the route's name (several routes may
    be of one kind) and ``prompt`` (``"<|asr|>"`` style, default: the kind's token) what the
    decoder is forced through after ``<s>``.

    ``prompting`` (:class:`~mmseq.prompts.Prompting` settings) makes prompts data: an example's
    ``"prompt"`` and ``"context"`` fields and the controls derived from it (see :mod:`mmseq.prompts`).
    """

    name = "base"
    modality = "generic"  # the encoders it reads: "speech", "image", "text", "none"; generic: any (unchecked)
    input_field = "input"
    extensions: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()

    def __init__(self, encoder, tokenizer, max_tokens: int = 512, name: str | None = None,
                 prompt: str | None = None, prompting: dict | None = None):
        from ..prompts import Prompting

        self.encoder, self.tokenizer, self.max_tokens = encoder, tokenizer, max_tokens
        self.name = name or type(self).name
        self._prompt = None if prompt is None else tokenizer.encode_prompt(prompt)
        self.prompting = Prompting.from_settings(prompting, f"route {self.name}")
        self.soft_prompt: list[int] = []  # ids of soft prompt vectors placed before the prompt (prompt tuning)

    @property
    def kind(self) -> str:
        """The registered task this route is of (``asr``, ``caption``, ``text``, ``lm``)."""
        return type(self).name

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` called ``name`` (``loss`` and ``accuracy`` are every task's)."""
        for metric in (LOSS, ACCURACY, *self.metrics):
            if metric.name == name:
                return metric
        known = ", ".join(m.name for m in (LOSS, ACCURACY, *self.metrics))
        raise ConfigError(f"{name!r} is not a metric of task {self.name!r}: {known}")

    # -- examples ---------------------------------------------------------------------------
    def read(self, manifest, training: bool, skip_errors: bool = False):
        """Examples of a manifest and the errors of skipped lines. Training examples each have one
        ``text`` target; evaluation examples keep all ``references``."""
        examples, errors = read_manifest(manifest, (self.input_field, "text"), skip_errors)
        for example in examples:
            example["references"] = [example["text"]]
        return examples, errors

    def length(self, example: dict) -> float:
        """Size of an example in the batch budget's unit (1 by default: budget counts examples)."""
        return 1.0

    def prompt(self) -> list[int]:
        """Ids the decoder is forced through after ``<s>``: a soft prompt if the route was prompt
        tuned, then the route's prompt, by default the kind's task token."""
        if self._prompt is not None:
            return self.soft_prompt + list(self._prompt)
        return self.soft_prompt + [self.tokenizer.token_id(f"<|{self.kind}|>")]

    def example_prompt(self, example: dict, text: str | None = None, draw: random.Random | None = None) -> list[int]:
        """Ids that follow the route's prompt for ``example``: its derived control tokens (those
        read from the target ``text`` only when one is given: a reference is never read at decoding
        time) and its ``"prompt"`` field. ``draw``: the random source of prompt dropout (training)."""
        if draw is not None and draw.random() < self.prompting.prompt_dropout:
            return []
        ids = [self.tokenizer.token_id(token) for token in self.prompting.control_tokens(example, text)]
        return ids + self.tokenizer.encode_prompt(example.get("prompt"))

    def context_ids(self, context) -> list[int]:
        """A context segment: ``<|context|>`` and the last ``context_length`` tokens of ``context``
        (a text, or a list of words or names, joined by ``prompting.context_join``); [] for none."""
        if context is None or context == "" or context == []:
            return []
        text = context if isinstance(context, str) else self.prompting.context_join.join(map(str, context))
        marker = self.tokenizer.context_token
        if marker not in self.tokenizer.prompt_tokens:
            raise InputError(f"this model was not trained with contexts (its tokenizer has no {marker} token); "
                             "train it on manifest lines with a \"context\" field")
        limit = self.prompting.context_length
        return [self.tokenizer.token_id(marker)] + (self.tokenizer.encode(text)[-limit:] if limit else [])

    def example_context(self, example: dict, draw: random.Random | None = None) -> list[int]:
        if draw is not None and draw.random() < self.prompting.context_dropout:
            return []
        return self.context_ids(example.get("context"))

    def group(self, example: dict) -> str:
        """Examples of different groups never share a batch (see :class:`TaskTable`)."""
        return self.name

    def for_example(self, example: dict) -> "Task":
        """The task that loads ``example``: itself (a :class:`TaskTable` picks the example's route)."""
        return self

    # -- inputs -----------------------------------------------------------------------------
    def load_input(self, source, training: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def collate_inputs(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def score(self, references: list[list[str]], hypotheses: list[str]) -> dict:
        raise NotImplementedError

    # -- batches ----------------------------------------------------------------------------
    def target_tokens(self, text: str, example: dict | None = None, training: bool = False,
                      draw: random.Random | None = None) -> tuple[list[int], int]:
        """A target row and its prefix length: the example's context segment, ``<s>``, the prompt
        (the route's, the example's controls and prompt), then the text and ``</s>``. Only what
        follows the prefix is scored."""
        example = example or {}
        prompt = self.tokenizer.merge_prompt(self.prompt(), self.example_prompt(example, text if training else None, draw))
        prefix = self.example_context(example, draw) + [self.tokenizer.bos_id] + prompt
        return prefix + self.tokenizer.encode(text) + [self.tokenizer.eos_id], len(prefix)

    def collate(self, items: list[dict]) -> dict:
        """Loaded items to a batch: ``inputs``, ``lengths``, ``tokens (rows, length)`` holding
        the context segment, ``<s>``, the prompt, the text and ``</s>``, ``prefix_lengths`` (all
        before the text, per row), ``prompts`` and ``contexts`` (per input, what decoding forces:
        the example's prompt ids after the route's, its context segment), ``boosts`` (per input,
        its line's words to favour, or None), ``ids``,
        ``references``; unreadable items are left out and listed in ``errors``.

        An item may carry several targets (an image's captions): each is a row of ``tokens``, and
        ``input_index (rows,)`` gives the input of each row, so the encoder runs once per input.
        ``size`` counts the rows, the examples the loss is summed over.
        """
        errors = [item["error"] for item in items if "error" in item]
        items = [item for item in items if "error" not in item]
        sequences = [sequence for item in items for sequence in item["tokens"]]
        prefix_lengths = [length for item in items for length in item["prefix_lengths"]]
        batch = {"errors": errors, "ids": [item["id"] for item in items],
                 "references": [item["references"] for item in items], "size": len(sequences)}
        if not items:
            return batch
        batch["inputs"], batch["lengths"] = self.collate_inputs([item["input"] for item in items])
        tokens = torch.full((len(sequences), max(map(len, sequences))), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.tensor(sequence)
        batch["tokens"] = tokens
        batch["prefix_lengths"] = torch.tensor(prefix_lengths)
        # What decoding forces for each input: its prompt after the route's and its context segment.
        batch["prompts"] = [item["prompt"] for item in items]
        batch["contexts"] = [item["context"] for item in items]
        batch["boosts"] = [item.get("boost") for item in items]  # words to favour (None: the line has none)
        if len(sequences) > len(items):
            counts = torch.tensor([len(item["tokens"]) for item in items])
            batch["input_index"] = torch.arange(len(items)).repeat_interleave(counts)
        return batch


class ExampleDataset(Dataset):
    """Examples read lazily: a file that cannot be read becomes an ``error`` item, never a crash.
    ``task``: the model's :class:`TaskTable` (or one :class:`Task`); each example is loaded by its
    route's task."""

    def __init__(self, task, examples: list[dict], training: bool, seed: int = 0):
        self.task, self.examples, self.training = task, examples, training
        # Prompt and context dropout draw from (seed, epoch, example): the same in any worker and
        # after a resume part way through an epoch. The trainer sets ``epoch``.
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        draw = None
        if self.training:
            draw = random.Random(zlib.crc32(f"{self.seed}:{self.epoch}:{example['_where']}".encode()))
        try:
            task = self.task.for_example(example)  # the route the example belongs to
            item = {"input": task.load_input(example[task.input_field], self.training), "task": task.name}
            # One target per text: an example may hold several (an image's captions, see Task.collate).
            rows = [task.target_tokens(text, example, self.training, draw)
                    for text in example.get("texts") or [example["text"]]]
            item["tokens"], item["prefix_lengths"] = [r for r, _ in rows], [n for _, n in rows]
            item["prompt"], item["context"] = task.example_prompt(example), task.context_ids(example.get("context"))
            item["boost"] = boost_words(example.get("boost"))
        except (InputError, ManifestError, TokenizerError) as error:
            return {"error": f"{example['_where']}: {error}"}
        longest = max(map(len, item["tokens"]))
        if longest > self.task.max_tokens:
            if self.training:
                # Learn the texts that fit (an image's other captions); skip the example when none does.
                fit = [i for i, tokens in enumerate(item["tokens"]) if len(tokens) <= self.task.max_tokens]
                item["tokens"] = [item["tokens"][i] for i in fit]
                item["prefix_lengths"] = [item["prefix_lengths"][i] for i in fit]
                if not item["tokens"]:
                    return {"error": f"{example['_where']}: text of {longest} tokens is longer than "
                                     f"the decoder's limit {self.task.max_tokens}"}
            else:
                # Evaluation scores the decoded text against the whole reference; only the targets of
                # the validation loss are cut to what the decoder can hold.
                item["tokens"] = [tokens[: self.task.max_tokens] for tokens in item["tokens"]]
        item.update(id=example["id"], references=example["references"])
        return item


def create_task(kind: str, encoder, tokenizer, max_tokens: int = 512, **settings) -> Task:
    """A registered task's instance for one route (``settings``: its ``name`` and ``prompt``)."""
    return TASKS.get(kind)(encoder=encoder, tokenizer=tokenizer, max_tokens=max_tokens, **settings)
