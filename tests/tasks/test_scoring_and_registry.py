"""Scoring counts only answer positions; loss ignores the rest; the registry builds tasks by name."""

import pytest
import torch
import torch.nn.functional as F

from ovq.tasks import (TASKS, LinearRegressionTask, PositionalRecallTask, RecallTask, get_task, token_accuracy,
                       token_loss)


@pytest.fixture(params=["recall", "positional_recall"])
def task_and_batch(request):
    task = get_task(request.param, vocab_size=64, seq_len=96, num_pairs=4, num_filler_tokens=8)
    return task, task.sample(6, seed=0)


def test_accuracy_counts_only_answer_positions(task_and_batch):
    task, batch = task_and_batch
    V = task.config.vocab_size
    right_answers_only = torch.where(batch.mask, batch.targets, (batch.inputs + 1) % V)
    assert task.score(right_answers_only, batch) == 1.0
    wrong_answers_only = torch.where(batch.mask, (batch.targets + 1) % V, batch.inputs)
    assert task.score(wrong_answers_only, batch) == 0.0
    # Spoil exactly 5 answers of sequence 0: accuracy drops by exactly 5 answers.
    preds = right_answers_only.clone()
    spoiled = batch.mask[0].nonzero().flatten()[:5]
    preds[0, spoiled] = (preds[0, spoiled] + 1) % V
    n0, n = batch.mask[0].sum().item(), batch.num_answers
    assert task.score(preds, batch).item() == pytest.approx(1 - 5 / n)
    per_sequence = task.score(preds, batch, reduction="none")
    assert per_sequence[0].item() == pytest.approx(1 - 5 / n0) and torch.all(per_sequence[1:] == 1)
    # Logits work the same way (argmax).
    assert task.score(F.one_hot(preds, V).float(), batch) == task.score(preds, batch)


def test_loss_ignores_unscored_positions(task_and_batch):
    task, batch = task_and_batch
    V = task.config.vocab_size
    logits = torch.randn(*batch.inputs.shape, V)
    perturbed = torch.where(batch.mask.unsqueeze(-1), logits, torch.randn_like(logits) * 10)
    torch.testing.assert_close(task.loss(logits, batch), task.loss(perturbed, batch))
    manual = F.cross_entropy(logits[batch.mask], batch.targets[batch.mask])
    torch.testing.assert_close(token_loss(logits, batch), manual)


def test_scoring_rejects_mismatched_outputs(task_and_batch):
    task, batch = task_and_batch
    with pytest.raises(ValueError, match="outputs must be logits"):
        token_accuracy(torch.zeros(6, 5, dtype=torch.long), batch)
    with pytest.raises(ValueError, match="outputs must be logits"):
        token_accuracy(torch.zeros(batch.inputs.shape), batch)            # float ids are ambiguous
    with pytest.raises(ValueError, match="reduction"):
        token_accuracy(batch.targets, batch, reduction="sum")
    with pytest.raises(ValueError, match="logits must have shape"):
        token_loss(torch.zeros(6, 5, 64), batch)


def test_registry():
    assert set(TASKS) == {"recall", "positional_recall", "linear_regression"}
    assert isinstance(get_task("recall"), RecallTask) and get_task("recall").config.vocab_size == 8192
    assert isinstance(get_task("positional_recall"), PositionalRecallTask)
    task = get_task("linear_regression", dim=5)
    assert isinstance(task, LinearRegressionTask) and task.config.dim == 5
    with pytest.raises(ValueError, match="unknown task 'mqar'"):
        get_task("mqar")
    with pytest.raises(TypeError, match=r"unknown config field\(s\) \['num_keys'\]"):
        get_task("recall", num_keys=4)
    with pytest.raises(TypeError, match="name"):
        get_task(3)
