"""Linear-regression ICL: layout, y = w·x, noise, per-index squared error / d, least-squares reference."""

import math

import pytest
import torch

from ovq.tasks import LinearRegressionConfig, get_task, least_squares_predictions


def test_layout_and_targets_match_w_dot_x():
    task = get_task("linear_regression", dim=5, num_examples=7)
    batch = task.sample(3, seed=0)
    assert batch.inputs.shape == (3, 14, 6) and batch.targets.shape == batch.mask.shape == (3, 14)
    for b in range(3):
        for i in range(7):
            x_tok, y_tok = batch.inputs[b, 2 * i], batch.inputs[b, 2 * i + 1]
            y = float(sum(float(x_tok[j]) * float(batch.w[b, j]) for j in range(5)))
            assert x_tok[5] == 0 and y_tok[5] == 1 and torch.all(y_tok[1:5] == 0)
            assert math.isclose(float(y_tok[0]), y, rel_tol=1e-5, abs_tol=1e-5)
            assert math.isclose(float(batch.targets[b, 2 * i]), y, rel_tol=1e-5, abs_tol=1e-5)
            assert batch.mask[b, 2 * i] and not batch.mask[b, 2 * i + 1] and batch.targets[b, 2 * i + 1] == 0
    torch.testing.assert_close(batch.inputs[:, 0::2, :5], batch.x)


def test_noise_has_the_configured_scale():
    batch = get_task("linear_regression", dim=4, num_examples=4096, noise_std=0.5).sample(8, seed=1)
    residual = batch.y - torch.einsum("bnd,bd->bn", batch.x, batch.w)
    assert 0.48 < residual.std().item() < 0.52


def test_error_is_per_example_index_and_only_at_x_positions():
    task = get_task("linear_regression", dim=4, num_examples=6)
    batch = task.sample(5, seed=2)
    perfect = batch.targets.clone()
    perfect[:, 1::2] = 1e3                              # garbage at y positions is not scored
    assert task.score(perfect, batch).shape == (6,)
    assert torch.all(task.score(perfect, batch) == 0) and task.loss(perfect, batch) == 0
    zero = torch.zeros_like(batch.targets)
    torch.testing.assert_close(task.score(zero, batch), (batch.y ** 2 / 4).mean(0))
    off = perfect.clone()
    off[:, 4] += 2.0                                    # example index 2 off by 2: error 4 / d = 1
    expected = torch.zeros(6)
    expected[2] = 1.0
    torch.testing.assert_close(task.score(off.unsqueeze(-1), batch), expected)


def test_least_squares_reference_curve():
    task = get_task("linear_regression", dim=8, num_examples=40)
    batch = task.sample(256, seed=3)
    curve = task.score(least_squares_predictions(batch), batch)
    assert 0.8 < curve[0] < 1.2                         # no examples yet: predicts 0, E[y²]/d = 1
    assert torch.all(curve[1:8] < curve[0]) and curve[7] < 0.5
    assert torch.all(curve[8:] < 1e-8)                  # d examples determine w exactly
    noisy = get_task("linear_regression", dim=8, num_examples=40, noise_std=1.0).sample(256, seed=3)
    ridge = task.score(least_squares_predictions(noisy, ridge=1.0), noisy)
    assert 0.1 < ridge[-1] < 0.3                        # the noise floor noise²/d = 0.125, plus estimation error


def test_same_seed_same_batch_and_different_seeds_differ():
    task = get_task("linear_regression", dim=3, num_examples=10)
    a, b, c = task.sample(4, seed=5), task.sample(4, seed=5), task.sample(4, seed=6)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert task.sample(2, seed=5, dtype=torch.float64).inputs.dtype == torch.float64


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dim=0), ValueError, "dim"),
    (dict(num_examples=2.5), TypeError, "num_examples"),
    (dict(noise_std=-0.1), ValueError, "noise_std"),
    (dict(noise_std=float("nan")), ValueError, "noise_std"),
    (dict(noise_std="0.1"), TypeError, "noise_std"),
])
def test_bad_configs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        LinearRegressionConfig(**kwargs)


def test_bad_predictions_raise():
    task = get_task("linear_regression", dim=3, num_examples=4)
    batch = task.sample(2, seed=0)
    with pytest.raises(ValueError, match="predictions must have shape"):
        task.score(torch.zeros(2, 4), batch)
    with pytest.raises(TypeError, match="floating-point"):
        task.score(torch.zeros(2, 8, dtype=torch.long), batch)
    with pytest.raises(ValueError, match="ridge"):
        least_squares_predictions(batch, ridge=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        task.sample(2, seed=0, dtype=torch.long)


def test_curriculum_zeroes_trailing_dimensions_on_the_same_random_stream():
    task = get_task("linear_regression", dim=6, num_examples=5)
    full, part = task.sample(3, seed=4), task.sample(3, seed=4, active_dim=2)
    torch.testing.assert_close(part.x[..., :2], full.x[..., :2])
    assert part.x[..., 2:].abs().sum() == 0 and part.w[:, 2:].abs().sum() == 0
    torch.testing.assert_close(part.y, torch.einsum("bnd,bd->bn", part.x, part.w))
    assert part.inputs[:, 0::2, 2:6].abs().sum() == 0          # x tokens carry only the active coordinates
    for bad in (0, 7):
        with pytest.raises(ValueError, match="active_dim"):
            task.sample(1, seed=0, active_dim=bad)


def test_curriculum_schedule_and_training_batches():
    from ovq.train.sources import TaskSource

    task = get_task("linear_regression", dim=5, num_examples=4, curriculum_start_dim=2, curriculum_batches_per_dim=3)
    assert [task.config.active_dim(s) for s in (0, 2, 3, 8, 9, 100)] == [2, 2, 3, 4, 5, 5]
    source = TaskSource(task, batch_size=2, seed=1)
    active = []
    for _ in range(10):
        x = source.next_batch()["task_batch"].x
        active.append(int((x.abs().sum(dim=(0, 1)) > 0).sum()))
    assert active == [2, 2, 2, 3, 3, 3, 4, 4, 4, 5]
    assert get_task("linear_regression", dim=5).config.active_dim(0) == 5   # no curriculum: all of d
    with pytest.raises(ValueError, match="exceeds dim"):
        get_task("linear_regression", dim=5, curriculum_start_dim=6)
    with pytest.raises(ValueError, match="curriculum_batches_per_dim"):
        get_task("linear_regression", dim=5, curriculum_start_dim=2, curriculum_batches_per_dim=0)
