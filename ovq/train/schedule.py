"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = peak * min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
