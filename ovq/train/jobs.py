"""What ``ovq train`` / ``ovq eval`` build: a job (task or language modeling), its model, data and metrics.

A job is a :class:`JobConfig` (what to train) plus a :class:`TrainConfig` (how). Both are stored in the
checkpoint, so ``ovq eval`` rebuilds the same model from the run folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..layers import OVQAttention, VQAttention
from ..ops.utils import check_int
from ..tasks import get_task
from ..tasks.common import TokenBatch
from .sources import LMSource, TaskSource, task_loss

TOKEN_TASKS = ("recall", "positional_recall")
TASKS = TOKEN_TASKS + ("linear_regression", "lm")


@dataclass
class JobConfig:
    task: str = "recall"
    model: str = "swa-ovq"  # a preset of ovq.models (see ovq.models.presets)
    size: str = "tiny"
    seq_len: int = 4096
    batch_size: int = 8
    task_args: dict = field(default_factory=dict)  # e.g. {"num_pairs": 64}
    model_args: dict = field(default_factory=dict)  # OVQLMConfig overrides, e.g. {"max_centroids": 4096}
    data: str | None = None  # prepared data folder (lm)
    eval_batches: int = 4
    seed: int = 0

    def validate(self) -> "JobConfig":
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        check_int("seq_len", self.seq_len, 2)
        check_int("batch_size", self.batch_size)
        check_int("eval_batches", self.eval_batches)
        if self.task == "lm" and not self.data:
            raise ValueError("the lm task needs data: a folder made by `python -m ovq.data.prepare`")
        return self

    def make_task(self, seq_len: int | None = None, **overrides):
        if self.task == "lm":
            raise ValueError("the lm task has no generator")
        args = dict(self.task_args) | overrides
        length_key = "num_examples" if self.task == "linear_regression" else "seq_len"
        if length_key not in args or seq_len is not None:
            args[length_key] = (seq_len or self.seq_len) // (2 if self.task == "linear_regression" else 1)
        return get_task(self.task, **args)


class RegressionModel(nn.Module):
    """A language-model backbone with a linear read-in of feature vectors and a scalar read-out."""

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.read_in = nn.Linear(feature_dim, hidden)
        self.read_out = nn.Linear(hidden, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(inputs_embeds=self.read_in(inputs)).last_hidden_state
        return self.read_out(hidden).squeeze(-1)


class TokenModel(nn.Module):
    """``OVQForCausalLM`` called on token ids alone (what the task loss expects)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor):
        return self.lm(input_ids=input_ids)


def build_model(job: JobConfig, vocab_size: int | None = None) -> nn.Module:
    from ..models import OVQForCausalLM, OVQModel, preset_config

    if job.task == "linear_regression":
        task = job.make_task()
        config = preset_config(job.model, job.size, vocab_size=1, **job.model_args)
        return RegressionModel(OVQModel(config), task.config.feature_dim)
    if job.task == "lm":
        return OVQForCausalLM(preset_config(job.model, job.size, vocab_size=vocab_size, **job.model_args))
    task = job.make_task()
    return TokenModel(OVQForCausalLM(preset_config(job.model, job.size, vocab_size=task.config.vocab_size,
                                                   **job.model_args)))


def _deploy(model: nn.Module, layer_types: tuple, settings) -> int:
    """Set ``settings(x)`` (attribute -> value, computed from the layer or config ``x``) on every layer of
    ``layer_types`` and, when there is one, on the model's configs so that ``save_pretrained`` tells the truth.
    Returns how many layers changed."""
    layers = [m for m in model.modules() if isinstance(m, layer_types)]
    for layer in layers:
        for name, value in settings(layer).items():
            setattr(layer, name, value)
    for m in model.modules() if layers else ():
        config = getattr(m, "config", None)
        if config is not None and all(hasattr(config, name) for name in settings(layers[0])):
            for name, value in settings(config).items():
                setattr(config, name, value)
    return len(layers)


def set_max_centroids(model: nn.Module, max_centroids: int) -> int:
    """The deployment knob on a built model: every OVQ layer's N. Returns how many layers changed."""
    check_int("max_centroids", max_centroids)
    return _deploy(model, (OVQAttention,), lambda _: {"max_centroids": max_centroids})


def set_fill_length(model: nn.Module, fill_length: int) -> int:
    """Deploy every OVQ layer with linear growth that reaches its budget N at ``fill_length`` tokens
    (``growth="linear", growth_rate=N / fill_length``; call after :func:`set_max_centroids`). Every chunk up to
    there opens ``N·L / fill_length`` centroids, so late items keep centroids of their own where the saturating
    rule opens few (docs/experiments.md). Returns how many layers changed."""
    check_int("fill_length", fill_length)
    return _deploy(model, (OVQAttention,),
                   lambda x: {"growth": "linear", "growth_rate": x.max_centroids / fill_length})


def deploy_budget(model: nn.Module, max_centroids: int | None, fill_length: int | None = None) -> None:
    """Budget N on every OVQ layer (``None``: as built) and, with ``fill_length``, linear growth that reaches that N
    there (the rate follows N, so it is set after it)."""
    if max_centroids is not None:
        set_max_centroids(model, max_centroids)
    if fill_length is not None:
        set_fill_length(model, fill_length)


def set_chunk_size(model: nn.Module, chunk_size: int) -> int:
    """Every OVQ/VQ layer's chunk size L (a test-time probe: more tokens per chunk means more chances for
    the growth rule to open a centroid late in a sequence; ``python -m ovq.bench.capacity``). Returns how
    many layers changed."""
    check_int("chunk_size", chunk_size)
    return _deploy(model, (OVQAttention, VQAttention), lambda _: {"chunk_size": chunk_size})


def backbone_of(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a job's model (through torch.compile, DDP and the task wrappers)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "lm", None) or getattr(model, "backbone", None) or model


def commit_loss_of(model: nn.Module) -> torch.Tensor | None:
    """The VQ commitment loss of the last forward, weighted (``None`` without VQ layers)."""
    lm = backbone_of(model)
    total = None
    weight = getattr(getattr(lm, "config", None), "vq_commit_weight", 1.0)
    for m in lm.modules():
        if isinstance(m, VQAttention) and m.commit_loss is not None:
            total = m.commit_loss * weight if total is None else total + m.commit_loss * weight
    return total


def make_loss(job: JobConfig, task):
    base = task_loss(task)

    def loss_fn(model, batch):
        loss, info = base(model, batch)
        commit = commit_loss_of(model)
        return (loss if commit is None else loss + commit), info

    return loss_fn


def evaluate_task(model: nn.Module, task, batch_size: int, batches: int, seed: int, device) -> dict:
    """Mean score of ``task`` over ``batches`` seeded batches (accuracy, or squared error for regression)."""
    scores = []
    for i in range(batches):
        batch = task.sample(batch_size, seed=10_000_000 + seed * 1000 + i, device=device)
        out = model(batch.inputs)
        outputs = out.logits if hasattr(out, "logits") else out
        scores.append(task.score(outputs.float(), batch).float().mean().item())
    name = "accuracy" if isinstance(batch, TokenBatch) else "squared_error"
    return {name: sum(scores) / len(scores)}


def build_training(job: JobConfig, rank: int = 0, world_size: int = 1, device=None):
    """(model, source, loss_fn, eval_fn, extra_state) for the Trainer (the model's init follows ``job.seed``)."""
    job.validate()
    torch.manual_seed(job.seed)
    if job.task == "lm":
        from ..data import load_tokenizer

        from .trainer import default_loss
        tokenizer = load_tokenizer(job.data)
        model = build_model(job, vocab_size=tokenizer.get_vocab_size())
        source = LMSource(job.data, job.seq_len, job.batch_size, seed=job.seed, rank=rank, world_size=world_size)
        held_out = LMSource(job.data, job.seq_len, job.batch_size, seed=job.seed, rank=rank, world_size=world_size,
                            split="heldout")

        def eval_fn(m):
            losses = [m(**{k: v.to(device) for k, v in held_out.next_batch().items()}).loss.item()
                      for _ in range(job.eval_batches)]
            return {"loss": sum(losses) / len(losses)}

        loss_fn = default_loss
    else:
        task = job.make_task()
        model = build_model(job)
        source = TaskSource(task, job.batch_size, seed=job.seed, rank=rank, world_size=world_size, device=device)
        loss_fn = make_loss(job, task)

        def eval_fn(m):
            return evaluate_task(m, task, job.batch_size, job.eval_batches, job.seed, device)
    return model, source, loss_fn, eval_fn, {"job": dataclasses.asdict(job)}
