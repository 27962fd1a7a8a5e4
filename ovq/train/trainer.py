"""One training loop for every job (recall tasks, regression, language modeling).

AdamW with warmup + cosine decay, bf16 autocast, gradient accumulation and clipping, optional
``torch.compile``, JSONL (and TensorBoard, when installed) logs, a progress bar with loss, tokens/s and
MFU, periodic evaluation, atomic checkpoints (model, optimizer, data position, RNG) and exact resume.
Under ``torchrun`` it runs data-parallel (DDP, or FSDP2 with ``fsdp=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import DistributedContext
from .schedule import lr_at
from .sources import move_batch

# Dense bf16 throughput used for MFU, by device name (measured on this project's H200: 795 TFLOP/s).
PEAK_FLOPS = {"H200": 795e12, "H100": 795e12, "A100": 312e12}


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1
    precision: str = "bf16"  # "bf16" (autocast) or "fp32"
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate once, at the end
    ckpt_every: int = 0  # 0: checkpoint once, at the end
    fsdp: bool = False
    progress: bool = True

    def validate(self) -> "TrainConfig":
        for name in ("steps", "grad_accum", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        return self


class BatchSource(Protocol):
    """Where batches come from: deterministic, with a resumable position."""

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def default_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Hugging Face convention: ``model(**batch).loss``; tokens = label positions that count."""
    out = model(**batch)
    labels = batch.get("labels")
    tokens = int((labels != -100).sum()) if labels is not None else batch["input_ids"].numel()
    return out.loss, {"tokens": tokens}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases, embeddings' gains or per-head temperatures)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class JsonlLog:
    """Append-only JSONL log, flushed per line (a crash loses at most the line being written)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self._tb = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(path.parent / "tb"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record.get("step", 0))
            self._tb.flush()


def compile_model(model: nn.Module, **compile_kwargs) -> nn.Module:
    """``torch.compile(model)`` with room for one graph per layer in training and in eval mode. Dynamo treats
    a module's integer attributes as constants, so layers that read theirs (fla's layers look up
    ``layer_idx``) compile once per layer; past ``recompile_limit`` (8) it gave up and ran the remaining
    layers eagerly, which is why ``--compile`` left fla's Mamba2 LM as slow as eager (session 9)."""
    layers = sum(isinstance(getattr(m, "layer_idx", None), int) for m in model.modules())
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 2 * layers)
    return torch.compile(model, **compile_kwargs)


class Trainer:
    """Train ``model`` on batches from ``source`` (see :class:`BatchSource`).

    loss_fn(model, batch) -> (loss, {"tokens": n, ...}); eval_fn(model) -> dict of metrics.
    ``flops_per_token`` (training flops per token, ~6 x params for a transformer) enables MFU.
    ``extra_state`` is saved in every checkpoint (e.g. the model config) and returned by :meth:`fit`.
    """

    def __init__(self, model: nn.Module, source: BatchSource, cfg: TrainConfig, *,
                 loss_fn: Callable = default_loss, eval_fn: Callable | None = None,
                 flops_per_token: float | None = None, extra_state: dict | None = None,
                 dist: DistributedContext | None = None):
        self.cfg = cfg.validate()
        self.dist = dist or DistributedContext.from_env()
        self.device = self.dist.device
        self.raw_model = model.to(self.device)
        self.model = self.dist.wrap(self.raw_model, fsdp=cfg.fsdp)
        self.forward_model = compile_model(self.model) if cfg.compile else self.model
        self.source, self.loss_fn, self.eval_fn = source, loss_fn, eval_fn
        self.flops_per_token = flops_per_token
        self.extra_state = extra_state or {}
        self.optimizer = torch.optim.AdamW(param_groups(self.raw_model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=self.device.type == "cuda")
        self.out_dir = Path(cfg.out_dir)
        self.log = JsonlLog(self.out_dir / "log.jsonl", self.dist.is_main)
        self.step = 0
        self.history: list[dict] = []

    # ---- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        model_state, optim_state = self.dist.full_state_dicts(self.model, self.raw_model, self.optimizer)
        return {"step": self.step, "model": model_state, "optimizer": optim_state,
                "data": self.source.state_dict(), "rng": rng_state(), "config": dataclasses.asdict(self.cfg),
                "extra": self.extra_state}

    def save(self) -> None:
        state = self.state_dict()  # every rank takes part in gathering FSDP shards
        if self.dist.is_main:
            save_checkpoint(state, self.out_dir)
        self.dist.barrier()

    def resume(self) -> bool:
        """Continue from ``out_dir/checkpoint.pt`` if it exists; returns whether it did."""
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        state = load_checkpoint(path)
        self.dist.load_full_state_dicts(self.model, self.raw_model, self.optimizer, state["model"],
                                        state["optimizer"])
        self.source.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        return True

    # ---- the loop -----------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> dict:
        cfg = self.cfg
        lr = lr_at(self.step, peak=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                   min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total_loss, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = move_batch(self.source.next_batch(), self.device)
            sync = micro == cfg.grad_accum - 1
            with self.dist.no_sync(self.model, enabled=not sync), self._autocast():
                loss, info = self.loss_fn(self.forward_model, batch)
                (loss / cfg.grad_accum).backward()
            total_loss += loss.detach().float().item() / cfg.grad_accum
            tokens += info.get("tokens", 0)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                     if cfg.grad_clip > 0 else None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"loss became {total_loss} at step {self.step}; last checkpoint is kept")
        return {"loss": self.dist.mean(total_loss), "lr": lr, "tokens": tokens * self.dist.world_size,
                "grad_norm": float(grad_norm) if grad_norm is not None else None}

    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.eval_fn(self.raw_model)
        # Each rank evaluates its own rows of the eval batches: the logged figure is their mean.
        return {f"eval/{k}": self.dist.mean(v) for k, v in metrics.items()}

    def _mfu(self, tokens_per_s: float) -> float | None:
        if self.flops_per_token is None or self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        return None if peak is None else self.flops_per_token * tokens_per_s / (peak * self.dist.world_size)

    def fit(self, resume: bool = True, until: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (continuing from a checkpoint if ``resume``); returns the log records.

        ``until`` stops early at that step (with a checkpoint), as an interrupted run would; the schedule
        still follows ``cfg.steps``. SIGTERM (single process) stops after the current step the same way.
        """
        torch.manual_seed(self.cfg.seed)
        if resume and self.resume() and self.dist.is_main:
            print(f"resumed from {self.out_dir / CHECKPOINT_NAME} at step {self.step}")
        progress = _Progress(self.cfg.steps, self.step, enabled=self.cfg.progress and self.dist.is_main)
        window_tokens, window_start = 0, time.perf_counter()
        with progress, _StopRequest(enabled=self.dist.world_size == 1) as stop:
            while self.step < min(self.cfg.steps, until or self.cfg.steps) and not stop.requested:
                record = self._train_step()
                self.step += 1
                window_tokens += record["tokens"]
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - window_start
                    tps = window_tokens / max(elapsed, 1e-9)
                    record.update(step=self.step, tokens_per_s=tps, mfu=self._mfu(tps), time=time.time())
                    window_tokens, window_start = 0, time.perf_counter()
                    if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                        record.update(self.evaluate())
                    self.log.write(record)
                    self.history.append(record)
                    progress.update(self.step, record)
                else:
                    progress.update(self.step, None)
                if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                    self.save()
        if self.step < self.cfg.steps:  # stopped early on request: save where we are and leave
            self.save()
            if stop.requested and self.dist.is_main:
                print(f"stopped by SIGTERM at step {self.step}; checkpoint saved, rerun to continue", flush=True)
            return self.history
        final = {"step": self.step, **self.evaluate()}
        self.log.write(final)
        self.history.append(final)
        self.save()
        return self.history


class _StopRequest:
    """SIGTERM during ``fit`` asks the loop to stop after the current step with a checkpoint (a scheduler's or
    job system's polite kill loses nothing). Single-process runs in the main thread only: under torchrun the
    ranks could see the signal at different steps and wait for each other forever."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)


class _Progress:
    """A rich progress bar with loss, tokens/s and MFU; silent when disabled or rich is missing."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled, self.total, self.start = enabled, total, start
        self._bar = None
        if enabled:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
                self._bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            except ImportError:
                self._bar = None

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, record: dict | None) -> None:
        if self._bar is None:
            return
        info = None
        if record is not None:
            parts = [f"loss {record['loss']:.4f}", f"{record['tokens_per_s']:,.0f} tok/s"]
            if record.get("mfu") is not None:
                parts.append(f"MFU {100 * record['mfu']:.1f}%")
            parts += [f"{k[5:]} {v:.4g}" for k, v in record.items() if k.startswith("eval/") and isinstance(v, float)]
            info = "  ".join(parts)
        self._bar.update(self._task, completed=step, **({"info": info} if info is not None else {}))

