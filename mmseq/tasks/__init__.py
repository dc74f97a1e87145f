"""Tasks: what an input is, how a manifest line becomes a batch, and how outputs are scored."""

from .base import TASKS, ExampleDataset, Task, create_task, register_task
from . import asr, caption, multitask, text  # noqa: F401  (registers the tasks)

__all__ = ["TASKS", "ExampleDataset", "Task", "create_task", "register_task"]
