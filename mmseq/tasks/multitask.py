"""Several tasks, one model: one encoder per task, one shared decoder, and each target sequence led
by its task token (``<|asr|>``, ``<|caption|>``, ``<|text|>``), as prompt-trained models do.

A multitask manifest holds the lines of several tasks' manifests (the per-task files concatenated
will do). A line names its task with a ``"task"`` field, or, without one, its task is the one whose
input field it has: ``"audio"`` for ``asr``, ``"image"`` for ``caption``, ``"source"`` for ``text``.
Each task reads its own lines by its own rules (audio durations, an image with all its captions).

Batches never mix tasks: :meth:`MultiTask.group` keeps each task's examples apart when batches are
made (``bucket_batches(..., groups=...)``); a batch is collated by its task and carries
``batch["task"]``, which picks the encoder and the task token in :class:`mmseq.model.Seq2Seq`. Each
task's batch budget is its own (``model.tasks.<name>.batch_size``: seconds of audio, tokens,
images); lengths are divided by it, so ``data.batch_size: 1`` means one full batch of any task.
"""

from __future__ import annotations

from ..data.manifest import read_manifest
from ..errors import InputError, ManifestError
from .base import Task, register_task


class TaskReferences(list):
    """The references of one example, marked with its task, so that scores can be split by task
    wherever the lists travel (DataLoader workers, gathering across ranks, evaluation rows)."""

    def __init__(self, references, task: str):
        super().__init__(references)
        self.task = task


@register_task("multitask")
class MultiTask(Task):
    """The tasks of a multitask model, behind the one :class:`Task` surface the trainer uses.

    Args:
        tasks: the sub-tasks by name, each built with its own encoder.
        batch_sizes: each task's batch budget in its own length unit (default 1).
    """

    name = "multitask"
    input_field = None
    metric = "loss"
    higher_is_better = False

    def __init__(self, tasks: dict[str, Task], batch_sizes: dict[str, float] | None = None):
        if not tasks:
            raise InputError("a multitask model needs at least one task")
        first = next(iter(tasks.values()))
        super().__init__(None, first.tokenizer, first.max_tokens)
        self.tasks = dict(tasks)
        self.batch_sizes = {name: float((batch_sizes or {}).get(name) or 1.0) for name in self.tasks}

    def subtask(self, name: str | None) -> Task:
        """The task called ``name``; an :class:`InputError` listing the tasks otherwise."""
        if name not in self.tasks:
            raise InputError(f"this multitask model serves {', '.join(self.tasks)}; "
                             f"say which one (got task {name!r})")
        return self.tasks[name]

    def task_name(self, line: dict) -> str:
        """The task of a manifest line: its ``task`` field, else the task whose input it holds."""
        path, number = line["_where"].rsplit(":", 1)
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
            for example in found:
                if owner.get(example["_where"]) == name:
                    example["task"] = name
                    example["references"] = TaskReferences(example["references"], name)
                    examples.append(example)
        return examples, errors

    def for_example(self, example: dict) -> Task:
        return self.tasks[example["task"]]

    def group(self, example: dict) -> str:
        return example["task"]

    def length(self, example: dict) -> float:
        name = example["task"]
        return self.tasks[name].length(example) / self.batch_sizes[name]

    def prompt(self) -> list[int]:
        raise InputError(f"a multitask model has one task token per task ({', '.join(self.tasks)}): "
                         "ask the task for it, e.g. model.task_for('asr').prompt()")

    # -- batches ----------------------------------------------------------------------------
    def collate(self, items: list[dict]) -> dict:
        """Items of one task to that task's batch, with ``batch["task"]`` naming it."""
        names = {item["task"] for item in items if "error" not in item}
        if len(names) > 1:
            raise InputError(f"a batch mixes the tasks {sorted(names)}; make batches with groups=task.group(...)")
        if not names:
            errors = [item["error"] for item in items]
            return {"errors": errors, "ids": [], "references": [], "size": 0}
        name = names.pop()
        batch = self.tasks[name].collate(items)
        batch["task"] = name
        return batch

    def score(self, references, hypotheses) -> dict:
        """Each task's metrics on its own examples: unprefixed when all are of one task, else
        ``"asr/wer"``, ``"text/bleu"``, ... with ``"<task>/examples"``."""
        by_task: dict[str, tuple[list, list]] = {}
        for refs, hypothesis in zip(references, hypotheses):
            name = getattr(refs, "task", None)
            if name is None:
                raise InputError("multitask scores need references marked with their task (TaskReferences)")
            by_task.setdefault(name, ([], []))
            by_task[name][0].append(refs)
            by_task[name][1].append(hypothesis)
        if len(by_task) == 1:
            name, (refs, hyps) = by_task.popitem()
            return self.tasks[name].score(refs, hyps)
        metrics = {}
        for name, (refs, hyps) in by_task.items():
            metrics.update({f"{name}/{key}": value for key, value in self.tasks[name].score(refs, hyps).items()})
            metrics[f"{name}/examples"] = len(hyps)
        return metrics
