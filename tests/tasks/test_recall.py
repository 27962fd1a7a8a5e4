"""Basic recall: valid sequences (checked by a slow Python walk), answers where the docs say, seeds, configs."""

import pytest
import torch

from ovq.tasks import IGNORE_INDEX, RecallConfig, RecallTask, get_task

SMALL = dict(vocab_size=64, seq_len=64, num_pairs=4, num_filler_tokens=8)


def slow_check_recall(cfg: RecallConfig, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Walk one sequence token by token as the docs describe it; returns the number of answers checked."""
    x, y = inputs.tolist(), targets.tolist()
    T, C, Q = cfg.seq_len, cfg.context_len, cfg.resolved_num_queries
    assert len(x) == T and C == T - 2 * Q
    # Context: filler except P (key, value) pairs; keys distinct and each followed by a value.
    context_value_of = {}
    t = 0
    while t < C:
        if x[t] in cfg.filler_tokens:
            t += 1
            continue
        assert x[t] in cfg.key_tokens, f"context token {x[t]} at {t} is neither filler nor a key"
        assert t + 1 < C and x[t + 1] in cfg.value_tokens, f"key at {t} is not followed by a value"
        assert x[t] not in context_value_of, f"key {x[t]} occurs twice in the context"
        context_value_of[x[t]] = x[t + 1]
        t += 2
    assert len(context_value_of) == cfg.num_pairs
    # Queries: key, value, key, value ...; the answer sits at the key and is the key's context value.
    for j in range(Q):
        key, value = x[C + 2 * j], x[C + 2 * j + 1]
        assert key in context_value_of, f"query {j} names key {key}, absent from the context"
        assert value == context_value_of[key] == y[C + 2 * j]
    answer_positions = [t for t in range(T) if y[t] != IGNORE_INDEX]
    assert answer_positions == [C + 2 * j for j in range(Q)]
    return Q


@pytest.mark.parametrize("config", [
    SMALL,
    SMALL | dict(num_queries=4),                                   # sparse: each key asked once
    SMALL | dict(num_queries=10, seq_len=40),                      # more queries than keys, tight context
    dict(vocab_size=8192, seq_len=512, num_pairs=64),              # the paper's vocabulary
    dict(vocab_size=8192, seq_len=300, num_pairs=5, num_queries=7, num_filler_tokens=1),
])
def test_sequences_are_valid(config):
    task = get_task("recall", **config)
    batch = task.sample(16, seed=3)
    cfg = task.config
    assert batch.inputs.dtype == torch.long and batch.inputs.shape == (16, cfg.seq_len)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < cfg.vocab_size
    assert torch.equal(batch.mask, batch.targets != IGNORE_INDEX)
    checked = sum(slow_check_recall(cfg, batch.inputs[b], batch.targets[b]) for b in range(16))
    assert checked == batch.num_answers == 16 * cfg.resolved_num_queries


def test_vocabulary_split():
    cfg = RecallConfig()
    assert (cfg.vocab_size, cfg.filler_tokens, cfg.key_tokens, cfg.value_tokens) == (
        8192, range(0, 64), range(64, 4128), range(4128, 8192))


def test_dense_default_fills_the_last_half():
    cfg = RecallConfig(seq_len=4096, num_pairs=64)
    assert cfg.resolved_num_queries == 1024 and cfg.context_len == 2048
    batch = RecallTask(cfg).sample(2, seed=0)
    assert batch.mask[:, :2048].sum() == 0
    assert torch.equal(batch.mask[:, 2048::2], torch.ones(2, 1024, dtype=torch.bool))
    assert batch.mask[:, 2049::2].sum() == 0


def test_few_queries_name_distinct_keys_and_many_queries_go_in_rounds():
    sparse = get_task("recall", **SMALL, num_queries=4).sample(64, seed=1)
    keys = sparse.inputs[:, -8::2]
    assert all(len(set(row)) == 4 for row in keys.tolist())
    dense = get_task("recall", **(SMALL | dict(num_pairs=3, num_queries=9, seq_len=40))).sample(64, seed=1)
    keys = dense.inputs[:, -18::2].view(64, 3, 3)                 # 3 rounds of the 3 keys
    assert all(len(set(r)) == 3 for row in keys.tolist() for r in row)


def test_pairs_are_placed_anywhere_in_the_context():
    task = get_task("recall", **SMALL)
    batch = task.sample(2000, seed=5)
    C = task.config.context_len
    keys = task.config.key_tokens
    is_key = (batch.inputs[:, :C] >= keys.start) & (batch.inputs[:, :C] < keys.stop)
    hits = is_key.any(dim=0)
    assert hits[: C - 1].all() and not hits[C - 1]               # every start 0..C-2, never the last slot


def test_same_seed_same_batch_and_different_seeds_differ():
    task = get_task("recall", **SMALL)
    a, b, c = task.sample(8, seed=11), task.sample(8, seed=11), task.sample(8, seed=12)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    d = task.sample(8, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.inputs, d.inputs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_pairs=0), ValueError, "num_pairs"),
    (dict(num_pairs=2.0), TypeError, "num_pairs"),
    (dict(seq_len=16, num_pairs=5), ValueError, "context"),
    (dict(seq_len=64, num_pairs=4, num_queries=30), ValueError, "context"),
    (dict(vocab_size=64, num_filler_tokens=8, num_pairs=29, seq_len=256), ValueError, "key tokens"),
    (dict(vocab_size=9, num_filler_tokens=8), ValueError, "vocab_size"),
    (dict(seq_len=3, num_pairs=1), ValueError, "seq_len"),
    (dict(num_queries=0), ValueError, "num_queries"),
    (dict(num_filler_tokens=True), TypeError, "num_filler_tokens"),
])
def test_bad_configs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecallConfig(**kwargs)


def test_bad_sample_arguments_raise():
    task = get_task("recall", **SMALL)
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        task.sample(2)
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        task.sample(2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        task.sample(2, seed=-1)
    with pytest.raises(TypeError, match="config"):
        RecallTask(dict(SMALL))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generates_on_cuda_deterministically():
    task = get_task("recall", vocab_size=8192, seq_len=4096, num_pairs=256)
    a, b = task.sample(4, seed=0, device="cuda"), task.sample(4, seed=0, device="cuda")
    assert a.inputs.is_cuda and torch.equal(a.inputs, b.inputs)
    slow_check_recall(task.config, a.inputs[0].cpu(), a.targets[0].cpu())
