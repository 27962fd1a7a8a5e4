"""Synthetic tasks of the paper's long-context experiments: generators (seeded, on any device) and scoring.

Layouts, answer positions and what is scored: ``docs/tasks.md``.
"""

from .common import IGNORE_INDEX, TokenBatch, token_accuracy, token_loss
from .linear_regression import (LinearRegressionConfig, LinearRegressionTask, RegressionBatch,
                                least_squares_predictions)
from .positional_recall import PositionalRecallConfig, PositionalRecallTask
from .recall import RecallConfig, RecallTask
from .registry import TASKS, get_task

__all__ = ["get_task", "TASKS", "RecallConfig", "RecallTask", "PositionalRecallConfig", "PositionalRecallTask",
           "LinearRegressionConfig", "LinearRegressionTask", "TokenBatch", "RegressionBatch", "IGNORE_INDEX",
           "token_accuracy", "token_loss", "least_squares_predictions"]
