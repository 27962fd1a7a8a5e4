"""Batch sources for the trainer: synthetic tasks (drawn on the device) and language-model windows."""

from __future__ import annotations

from ..ops.utils import check_int


class TaskSource:
    """Batches of a task from ``ovq.tasks``, each a pure function of (seed, batch index).

    Every step draws the *global* batch (``batch_size x world_size`` rows) and each rank keeps its own
    rows, so a run on several processes sees exactly the data of a single-process run with the same
    global batch. Yields ``{"task_batch": TokenBatch | RegressionBatch}``; the position is the index.
    """

    def __init__(self, task, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, device=None):
        self.task, self.device = task, device
        self.batch_size = check_int("batch_size", batch_size)
        self.world_size = check_int("world_size", world_size)
        self.seed, self.rank, self.index = check_int("seed", seed, 0), check_int("rank", rank, 0), 0
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size={world_size}, got {rank}")

    def _seed(self, index: int) -> int:
        return hash((self.seed, index)) & (2**62 - 1)

    def next_batch(self) -> dict:
        batch = self.task.training_sample(self.batch_size * self.world_size, seed=self._seed(self.index),
                                          step=self.index, device=self.device)
        self.index += 1
        if self.world_size > 1:
            rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            batch = type(batch)(**{f: getattr(batch, f)[rows] for f in batch.__dataclass_fields__})
        return {"task_batch": batch}

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"data state was saved with {key}={state.get(key)!r}, this source has "
                                 f"{getattr(self, key)!r}")
        self.index = check_int("state['index']", state["index"], 0)


def task_loss(task):
    """loss_fn for the trainer: the model maps the batch's inputs to logits (or predictions)."""

    def loss_fn(model, batch):
        task_batch = batch["task_batch"]
        out = model(task_batch.inputs)
        outputs = out.logits if hasattr(out, "logits") else out
        return task.loss(outputs.float(), task_batch), {"tokens": task_batch.inputs.shape[0] * task_batch.inputs.shape[1]}

    return loss_fn


class LMSource:
    """Next-token training windows from prepared shards (``ovq.data``), Hugging Face convention:
    ``labels`` = ``input_ids`` (the model shifts them).

    Like :class:`TaskSource`, every step reads the global batch (``batch_size x world_size`` windows) and
    each rank keeps its rows, so N processes see exactly the data of one process at the same global batch.
    """

    def __init__(self, data, seq_len: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 split: str = "train"):
        from ..data import TokenWindows

        self.batch_size, self.rank = check_int("batch_size", batch_size), check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
        self.windows = TokenWindows(data, seq_len, batch_size * world_size, split=split, seed=seed)

    def next_batch(self) -> dict:
        x = next(self.windows)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return {"input_ids": x, "labels": x}

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


def move_batch(batch: dict, device) -> dict:
    """Tensors (and task batches, which have ``.to``) onto ``device``."""
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
