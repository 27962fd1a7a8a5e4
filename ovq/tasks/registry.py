"""``get_task(name, **config)``: the tasks by name, each built from its config dataclass."""

from __future__ import annotations

import dataclasses

from .linear_regression import LinearRegressionTask
from .positional_recall import PositionalRecallTask
from .recall import RecallTask

TASKS = {task.name: task for task in (RecallTask, PositionalRecallTask, LinearRegressionTask)}


def get_task(name: str, **config):
    """The task ``name`` (one of ``TASKS``) with its config built from ``config`` (the rest defaults).

    >>> task = get_task("recall", seq_len=256, num_pairs=16)
    >>> batch = task.sample(8, seed=0)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    task_class = TASKS[name]
    fields = {f.name for f in dataclasses.fields(task_class.config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise TypeError(f"unknown config field(s) {unknown} for task {name!r}; "
                        f"{task_class.config_class.__name__} has {sorted(fields)}")
    return task_class(task_class.config_class(**config))
