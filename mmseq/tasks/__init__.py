"""Tasks: what an input is, how a manifest line becomes a batch, and how outputs are scored."""

from .base import TASKS, ExampleDataset, Task, create_task, register_task
from . import asr, caption, lm, text  # noqa: F401  (registers the tasks)
from .table import TaskReferences, TaskTable

__all__ = ["TASKS", "ExampleDataset", "Task", "TaskReferences", "TaskTable", "create_task", "register_task"]
