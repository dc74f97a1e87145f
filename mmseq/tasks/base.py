"""The shared part of every task: examples to padded batches with lengths and token targets."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.manifest import read_manifest
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
    """

    name = "base"
    input_field = "input"
    extensions: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()

    def __init__(self, encoder, tokenizer, max_tokens: int = 512, name: str | None = None,
                 prompt: str | None = None):
        self.encoder, self.tokenizer, self.max_tokens = encoder, tokenizer, max_tokens
        self.name = name or type(self).name
        self._prompt = None if prompt is None else tokenizer.encode_prompt(prompt)

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
        """Ids the decoder is forced through after ``<s>``: the route's prompt, by default the
        kind's task token."""
        if self._prompt is not None:
            return list(self._prompt)
        return [self.tokenizer.token_id(f"<|{self.kind}|>")]

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
    def target_tokens(self, text: str) -> list[int]:
        return [self.tokenizer.bos_id] + self.prompt() + self.tokenizer.encode(text) + [self.tokenizer.eos_id]

    def collate(self, items: list[dict]) -> dict:
        """Loaded items to a batch: ``inputs``, ``lengths``, ``tokens (rows, length)`` holding
        ``<s>``, the prompt, the text and ``</s>``, ``prefix_lengths`` (``<s>`` plus prompt),
        ``ids``, ``references``; unreadable items are left out and listed in ``errors``.

        An item may carry several targets (an image's captions): each is a row of ``tokens``, and
        ``input_index (rows,)`` gives the input of each row, so the encoder runs once per input.
        ``size`` counts the rows, the examples the loss is summed over.
        """
        errors = [item["error"] for item in items if "error" in item]
        items = [item for item in items if "error" not in item]
        sequences = [sequence for item in items for sequence in item["tokens"]]
        batch = {"errors": errors, "ids": [item["id"] for item in items],
                 "references": [item["references"] for item in items], "size": len(sequences)}
        if not items:
            return batch
        batch["inputs"], batch["lengths"] = self.collate_inputs([item["input"] for item in items])
        tokens = torch.full((len(sequences), max(map(len, sequences))), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.tensor(sequence)
        batch["tokens"] = tokens
        batch["prefix_lengths"] = torch.tensor([1 + len(self.prompt())] * len(sequences))
        if len(sequences) > len(items):
            counts = torch.tensor([len(item["tokens"]) for item in items])
            batch["input_index"] = torch.arange(len(items)).repeat_interleave(counts)
        return batch


class ExampleDataset(Dataset):
    """Examples read lazily: a file that cannot be read becomes an ``error`` item, never a crash.
    ``task``: the model's :class:`TaskTable` (or one :class:`Task`); each example is loaded by its
    route's task."""

    def __init__(self, task, examples: list[dict], training: bool):
        self.task, self.examples, self.training = task, examples, training

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        try:
            task = self.task.for_example(example)  # the route the example belongs to
            item = {"input": task.load_input(example[task.input_field], self.training), "task": task.name}
            # One target per text: an example may hold several (an image's captions, see Task.collate).
            item["tokens"] = [task.target_tokens(text) for text in example.get("texts") or [example["text"]]]
        except (InputError, ManifestError, TokenizerError) as error:
            return {"error": f"{example['_where']}: {error}"}
        longest = max(map(len, item["tokens"]))
        if longest > self.task.max_tokens:
            if self.training:
                # Learn the texts that fit (an image's other captions); skip the example when none does.
                item["tokens"] = [tokens for tokens in item["tokens"] if len(tokens) <= self.task.max_tokens]
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
