"""Training: every mixer runs forward/backward on CPU; the VQ commitment loss joins the LM loss; init."""

import copy
import math

import pytest
import torch
from model_helpers import MIXER_CASES

from ovq.layers import OVQAttention, VQAttention


def _batch(batch=2, length=24, seed=5):
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", MIXER_CASES)
def test_every_mixer_trains(build, kind):
    model = build([kind, "swa"], dtype=torch.float32).train()
    ids = _batch()
    out = model(ids, labels=ids)
    assert out.past_key_values is None  # no cache in training unless asked
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        before = [p.clone() for p in model.parameters()]
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_left_padded_training_batch_has_finite_gradients(build):
    model = build(["swa", "ovq", "attn", "vq"], dtype=torch.float32).train()
    ids = _batch()
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_vq_commitment_loss_is_added_with_its_weight(build):
    base = build(["swa", "vq", "vq"], dtype=torch.float32).train()
    ids = _batch()
    losses = {}
    for weight in (0.0, 0.5):
        model = copy.deepcopy(base)  # same codebooks: a training forward moves them (EMA)
        model.config.vq_commit_weight = weight
        out = model(ids, labels=ids)
        losses[weight] = out
    commit = losses[0.5].commit_loss
    expected = sum(block.mixer.commit_loss for block in model.model.layers if isinstance(block.mixer, VQAttention))
    assert commit is not None and commit.item() > 0
    torch.testing.assert_close(commit, expected)
    torch.testing.assert_close(losses[0.5].loss, losses[0.0].loss + 0.5 * commit)
    losses[0.5].loss.backward()
    assert base.model.layers[1].mixer.k_proj.weight.grad is None  # the deep copy trained, not the base
    with torch.no_grad():
        assert base.eval()(ids, labels=ids).commit_loss is None  # eval: no commitment loss


def test_initialization(build):
    model = build(["swa", "ovq", "mamba2"], dtype=torch.float32, initializer_range=0.02, hidden_size=256,
                  num_heads=4, beta_init=12.0)
    std = model.model.layers[0].mixer.q_proj.weight.std().item()
    assert 0.018 < std < 0.022
    assert torch.equal(model.model.norm.weight, torch.ones(256))
    ovq = model.model.layers[1].mixer
    assert isinstance(ovq, OVQAttention)
    torch.testing.assert_close(ovq.beta, torch.full((4,), 12.0))
    mamba = model.model.layers[2].mixer
    assert ((-mamba.A_log.exp() <= -1) & (-mamba.A_log.exp() >= -16)).all()  # fla's own A init, kept


@pytest.mark.parametrize("kind", [c for c in MIXER_CASES if c.values[0] != "vq"])
def test_gradient_checkpointing_gives_the_same_gradients(build, kind):
    ids = _batch()
    grads = []
    for checkpointing in (False, True):
        model = build([kind, "swa"]).train()  # float64, same seed: the same weights both times
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-12, msg=name)


def test_gradient_checkpointing_is_refused_where_it_would_be_wrong(build):
    model = build(["vq", "swa"]).train()
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="EMA codebook update twice"):
        model(_batch(), labels=_batch())
    model = build(["ovq", "swa"]).train()
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="cannot update a cache"):
        model(_batch(), use_cache=True)
