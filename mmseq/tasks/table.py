"""The tasks of a model, behind the one surface the trainer and evaluation use: a table of routes.

A model's manifest may hold the lines of several tasks (the per-task files concatenated will do).
A line names its task with a ``"task"`` field, or, without one, its task is the one whose input
field it has: ``"audio"`` for a speech route, ``"image"`` for a caption route, ``"source"`` for a
text route; with one route, every line is its. Each task reads its own lines by its own rules
(audio durations, an image with all its captions).

Batches never mix tasks: :meth:`TaskTable.group` keeps each task's examples apart when batches are
made (``bucket_batches(..., groups=...)``); a batch is collated by its task and carries
``batch["task"]``, which picks the route (encoder, CTC head, prompt) in :class:`mmseq.model.Seq2Seq`.
Each task's batch budget is its own (``model.tasks.<name>.batch_size``: seconds of audio, tokens,
images); lengths are divided by it, so ``data.batch_size: 1`` means one full batch of any task.
"""

from __future__ import annotations

from ..data.manifest import read_manifest
from ..errors import ConfigError, InputError, ManifestError
from ..metrics import Metric
from .base import Task


class TaskReferences(list):
    """The references of one example, marked with its task, so that scores can be split by task
    wherever the lists travel (DataLoader workers, gathering across ranks, evaluation rows)."""

    def __init__(self, references, task: str):
        super().__init__(references)
        self.task = task


class TaskTable:
    """The routes' tasks of a model by name: reads, batches and scores examples of any of them.

    Args:
        tasks: each route's :class:`Task`, by route name.
        batch_sizes: each task's batch budget in its own length unit (default 1).
    """

    def __init__(self, tasks: dict[str, Task], batch_sizes: dict[str, float] | None = None):
        if not tasks:
            raise InputError("a model needs at least one task")
        self.tasks = dict(tasks)
        self.batch_sizes = {name: float((batch_sizes or {}).get(name) or 1.0) for name in self.tasks}
        self.max_tokens = next(iter(self.tasks.values())).max_tokens

    def __getitem__(self, name: str) -> Task:
        return self.tasks[name]

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` of a validation score: ``"wer"`` on a one-route table, or
        ``"<task>/<metric>"`` (``"caption/CIDEr"``); ``loss`` and ``accuracy`` for any table."""
        task, _, metric = name.rpartition("/")
        if not task:
            if name in ("loss", "accuracy") or len(self.tasks) == 1:
                return next(iter(self.tasks.values())).metric(name)
            raise ConfigError(f"{name!r}: a model of several tasks scores each apart; say which, e.g. "
                              + ", ".join(f"{t}/{m.name}" for t, task in self.tasks.items() for m in task.metrics[:1]))
        if task not in self.tasks:
            raise ConfigError(f"{name!r}: no task {task!r} in this model ({', '.join(self.tasks)})")
        return self.tasks[task].metric(metric)

    def task_name(self, line: dict) -> str:
        """The task of a manifest line: its ``task`` field, else the task whose input it holds."""
        path, number = line["_where"].rsplit(":", 1)
        if "task" not in line and len(self.tasks) == 1:
            return next(iter(self.tasks))
        if "task" in line:
            if line["task"] not in self.tasks:
                raise ManifestError(path, int(number), f"task {line['task']!r} is not one of this model's "
                                                       f"tasks ({', '.join(self.tasks)})")
            return line["task"]
        matches = [name for name, task in self.tasks.items() if task.input_field in line]
        if len(matches) != 1:
            fields = ", ".join(f"{task.input_field!r} for {name}" for name, task in self.tasks.items())
            raise ManifestError(path, int(number), f"cannot tell the task of this line: give a 'task' field "
                                                   f"or exactly one input field ({fields})")
        return matches[0]

    # -- examples ---------------------------------------------------------------------------
    def read(self, manifest, training: bool, skip_errors: bool = False):
        """Examples of a manifest, each marked with its task, and the errors of skipped lines."""
        if len(self.tasks) == 1:  # every line is the one task's: read by its own rules alone
            name, task = next(iter(self.tasks.items()))
            examples, errors = task.read(manifest, training, skip_errors)
            for example in examples:
                example["task"] = name
            return examples, errors
        lines, errors = read_manifest(manifest, (), skip_errors)
        owner = {}
        for line in lines:
            try:
                owner[line["_where"]] = self.task_name(line)
            except ManifestError as error:
                if not skip_errors:
                    raise
                errors.append(error)
        examples = []
        for name, task in self.tasks.items():
            if name not in owner.values():
                continue
            # Each task reads the whole file by its own rules and keeps its own lines; the other
            # tasks' lines fail its required fields, and those errors are not this line's.
            found, task_errors = task.read(manifest, training, skip_errors=True)
            for error in task_errors:
                if owner.get(f"{error.path}:{error.line}") == name:
                    if not skip_errors:
                        raise error
                    errors.append(error)
            examples += [self._mark(example, name) for example in found if owner.get(example["_where"]) == name]
        return examples, errors

    @staticmethod
    def _mark(example: dict, name: str) -> dict:
        """Marks an example of a table of several tasks with its task, its references too (scores
        are split by task wherever the references travel)."""
        example["task"] = name
        example["references"] = TaskReferences(example["references"], name)
        return example

    def for_example(self, example: dict) -> Task:
        return self.tasks[example["task"]]

    def group(self, example: dict) -> str:
        return example["task"]

    def length(self, example: dict) -> float:
        name = example["task"]
        return self.tasks[name].length(example) / self.batch_sizes[name]

    # -- batches ----------------------------------------------------------------------------
    def collate(self, items: list[dict]) -> dict:
        """Items of one task to that task's batch, with ``batch["task"]`` naming it."""
        names = {item["task"] for item in items if "error" not in item}
        if len(names) > 1:
            raise InputError(f"a batch mixes the tasks {sorted(names)}; make batches with groups=table.group(...)")
        if not names:
            errors = [item["error"] for item in items]
            return {"errors": errors, "ids": [], "references": [], "size": 0}
        name = names.pop()
        batch = self.tasks[name].collate(items)
        batch["task"] = name
        return batch

    def score(self, references, hypotheses) -> dict:
        """Each task's metrics on its own examples: unprefixed for a table of one task, else
        ``"asr/wer"``, ``"text/bleu"``, ... with ``"<task>/examples"``."""
        if len(self.tasks) == 1:
            return next(iter(self.tasks.values())).score(references, hypotheses)
        by_task: dict[str, tuple[list, list]] = {}
        for refs, hypothesis in zip(references, hypotheses):
            name = getattr(refs, "task", None)
            if name is None:
                raise InputError("multitask scores need references marked with their task (TaskReferences)")
            by_task.setdefault(name, ([], []))
            by_task[name][0].append(refs)
            by_task[name][1].append(hypothesis)
        metrics = {}
        for name, (refs, hyps) in by_task.items():
            metrics.update({f"{name}/{key}": value for key, value in self.tasks[name].score(refs, hyps).items()})
            metrics[f"{name}/examples"] = len(hyps)
        return metrics
