"""Linear-regression in-context learning (Garg, Tsipras, Liang, Valiant 2022).

Each sequence has its own ``w ~ N(0, I_d)``; example ``i`` is ``x_i ~ N(0, I_d)``, ``y_i = w·x_i + noise_std·ε_i``
with ``ε_i ~ N(0, 1)``. The sequence is ``n = num_examples`` (x, y) pairs interleaved as ``2n`` float
feature vectors of width ``d + 1`` (for a linear read-in, no vocabulary):

* position ``2i``: ``[x_i, 0]``              (the last feature flags y tokens)
* position ``2i + 1``: ``[y_i, 0, ..., 0, 1]``

The model predicts ``y_i`` at position ``2i``, having seen ``i`` complete examples before it:
``targets[:, 2i] = y_i`` and ``mask[:, 2i] = True``; odd positions hold target 0 and are not scored.
The error of example ``i`` is ``(ŷ_i - y_i)² / d``: predicting 0 costs about 1 in expectation
(``E[y²] = d + noise_std²``), least squares on ``i >= d`` noiseless examples costs 0.

Curriculum (Garg et al. train this way): with ``curriculum_start_dim`` set, training batch ``s`` (the
optimizer step, without gradient accumulation) uses only the first
``min(d, start + s // curriculum_batches_per_dim)`` coordinates of x and w (the rest are 0), so
the problem grows from a few dimensions to d. Transformers sit on a long plateau at d = 20 without it.
Evaluation always samples the full d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops.utils import check_int
from .common import Task, make_generator


@dataclass
class LinearRegressionConfig:
    """Linear-regression ICL.

    Args:
        dim: d, dimension of x and w (Garg et al. use 20).
        num_examples: n, (x, y) examples per sequence; the sequence has ``2n`` positions.
        noise_std: standard deviation of the label noise (0: noiseless).
        curriculum_start_dim: training starts with this many active dimensions (``None``: no curriculum).
        curriculum_batches_per_dim: training batches between adding one active dimension.
    """

    dim: int = 20
    num_examples: int = 2048
    noise_std: float = 0.0
    curriculum_start_dim: int | None = None
    curriculum_batches_per_dim: int = 1000

    def __post_init__(self):
        check_int("dim", self.dim)
        check_int("num_examples", self.num_examples)
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, (int, float)):
            raise TypeError(f"noise_std must be a float, got {type(self.noise_std).__name__}")
        if not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std}")
        check_int("curriculum_batches_per_dim", self.curriculum_batches_per_dim)
        if self.curriculum_start_dim is not None:
            check_int("curriculum_start_dim", self.curriculum_start_dim)
            if self.curriculum_start_dim > self.dim:
                raise ValueError(f"curriculum_start_dim ({self.curriculum_start_dim}) exceeds dim ({self.dim})")

    def active_dim(self, step: int) -> int:
        """Active dimensions of training batch number ``step`` (``dim`` without a curriculum)."""
        check_int("step", step, 0)
        if self.curriculum_start_dim is None:
            return self.dim
        return min(self.dim, self.curriculum_start_dim + step // self.curriculum_batches_per_dim)

    @property
    def seq_len(self) -> int:
        return 2 * self.num_examples

    @property
    def feature_dim(self) -> int:
        """Width of each input vector: d features plus the y-token flag."""
        return self.dim + 1


@dataclass
class RegressionBatch:
    """A batch of linear-regression ICL.

    Attributes:
        inputs: ``[B, 2n, d + 1]`` float features (layout in the module docstring).
        targets: ``[B, 2n]`` float, ``y_i`` at ``2i``, 0 at odd positions.
        mask: ``[B, 2n]`` bool, True at the even (x) positions: where predictions are scored.
        w: ``[B, d]`` the hidden weights; ``x``: ``[B, n, d]``; ``y``: ``[B, n]`` (noise included).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    w: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor

    def to(self, device) -> "RegressionBatch":
        return RegressionBatch(*(t.to(device) for t in (self.inputs, self.targets, self.mask, self.w, self.x, self.y)))


class LinearRegressionTask(Task):
    """Generator and scoring of linear-regression ICL (see the module docstring for the layout)."""

    name = "linear_regression"
    config_class = LinearRegressionConfig

    def sample(self, batch_size: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               device=None, dtype: torch.dtype = torch.float32, active_dim: int | None = None) -> RegressionBatch:
        """A batch of ``batch_size`` sequences, all drawn on ``device`` from ``seed`` (or ``generator``).

        ``active_dim``: only the first ``active_dim`` coordinates of x and w are drawn, the rest are 0
        (the curriculum; ``None``: all d). The random stream is the same whatever ``active_dim`` is.
        """
        check_int("batch_size", batch_size)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        B, n, d = batch_size, self.config.num_examples, self.config.dim
        if active_dim is not None and not 1 <= check_int("active_dim", active_dim) <= d:
            raise ValueError(f"active_dim must be in [1, dim={d}], got {active_dim}")
        gen, device = make_generator(seed, generator, device)
        w = torch.randn(B, d, generator=gen, device=device, dtype=dtype)
        x = torch.randn(B, n, d, generator=gen, device=device, dtype=dtype)
        if active_dim is not None and active_dim < d:
            w[:, active_dim:] = 0
            x[:, :, active_dim:] = 0
        y = torch.einsum("bnd,bd->bn", x, w)
        if self.config.noise_std > 0:
            y = y + self.config.noise_std * torch.randn(B, n, generator=gen, device=device, dtype=dtype)

        inputs = torch.zeros(B, n, 2, d + 1, device=device, dtype=dtype)
        inputs[:, :, 0, :d] = x
        inputs[:, :, 1, 0] = y
        inputs[:, :, 1, d] = 1.0
        targets = torch.zeros(B, n, 2, device=device, dtype=dtype)
        targets[:, :, 0] = y
        mask = torch.zeros(B, n, 2, device=device, dtype=torch.bool)
        mask[:, :, 0] = True
        return RegressionBatch(inputs.flatten(1, 2), targets.flatten(1, 2), mask.flatten(1, 2), w, x, y)

    def training_sample(self, batch_size: int, *, seed: int, step: int, device=None) -> RegressionBatch:
        """Training batch number ``step``: the curriculum's active dimensions (see the module docstring)."""
        return self.sample(batch_size, seed=seed, device=device, active_dim=self.config.active_dim(step))

    def _predictions_at_x(self, predictions: torch.Tensor, batch: RegressionBatch) -> torch.Tensor:
        """``[B, n]``: the model's scalar outputs at the x positions, from ``[B, 2n]`` or ``[B, 2n, 1]``."""
        if not isinstance(predictions, torch.Tensor) or not predictions.is_floating_point():
            raise TypeError("predictions must be a floating-point torch.Tensor")
        if predictions.dim() == 3 and predictions.shape[-1] == 1:
            predictions = predictions.squeeze(-1)
        if tuple(predictions.shape) != tuple(batch.targets.shape):
            raise ValueError(f"predictions must have shape {list(batch.targets.shape)} (or with a trailing 1), "
                             f"got {list(predictions.shape)}")
        return predictions[:, 0::2]

    def squared_error(self, predictions: torch.Tensor, batch: RegressionBatch) -> torch.Tensor:
        """``[B, n]``: ``(ŷ_i - y_i)² / d`` for every sequence and example index ``i``."""
        error = (self._predictions_at_x(predictions, batch).float() - batch.y.float()).square()
        return error / self.config.dim

    def loss(self, predictions: torch.Tensor, batch: RegressionBatch) -> torch.Tensor:
        """Mean squared error / d over all x positions (the training loss)."""
        return self.squared_error(predictions, batch).mean()

    def score(self, predictions: torch.Tensor, batch: RegressionBatch) -> torch.Tensor:
        """``[n]``: squared error / d at each example index, averaged over the batch (the ICL curve)."""
        return self.squared_error(predictions, batch).mean(dim=0)


def least_squares_predictions(batch: RegressionBatch, ridge: float = 0.0) -> torch.Tensor:
    """``[B, 2n]``: the least-squares prediction of each ``y_i`` from the examples before it (Garg et al.'s reference).

    ``ridge = 0``: minimum-norm least squares (0 before any example, exact from ``i = d + 1`` on when
    noiseless). ``ridge > 0``: ridge regression with that penalty. Computed in float64 from running Gram
    matrices (``B·n·d²`` numbers), so it is an evaluation tool, not a training one.
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    x, y = batch.x.double(), batch.y.double()
    B, n, d = x.shape
    # gram[:, i] = sum_{j < i} x_j x_j^T, moment[:, i] = sum_{j < i} x_j y_j (examples strictly before i).
    outer, xy = torch.einsum("bnd,bne->bnde", x, x), x * y.unsqueeze(-1)
    gram, moment = outer.cumsum(dim=1) - outer, xy.cumsum(dim=1) - xy
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    w_hat = torch.zeros(B, n, d, dtype=x.dtype, device=x.device)
    if ridge > 0:
        w_hat = torch.linalg.solve(gram + ridge * eye, moment.unsqueeze(-1)).squeeze(-1)
    else:
        for i in range(1, min(d, n)):               # fewer than d examples: the minimum-norm solution
            w_hat[:, i] = (torch.linalg.pinv(x[:, :i]) @ y[:, :i].unsqueeze(-1)).squeeze(-1)
        if n > d:                                   # d or more examples: the normal equations
            w_hat[:, d:] = torch.linalg.solve(gram[:, d:], moment[:, d:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(B, n, 2, dtype=batch.targets.dtype, device=x.device)
    out[:, :, 0] = (x * w_hat).sum(-1).to(out.dtype)
    return out.flatten(1, 2)
