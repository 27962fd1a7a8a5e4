"""Training: one loop for tasks and language modeling, atomic checkpoints, DDP/FSDP2 under torchrun."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistributedContext
from .schedule import lr_at
from .sources import LMSource, TaskSource, task_loss
from .trainer import Trainer, TrainConfig, default_loss

__all__ = ["Trainer", "TrainConfig", "default_loss", "TaskSource", "LMSource", "task_loss", "save_checkpoint",
           "load_checkpoint", "CheckpointError", "DistributedContext", "lr_at"]
