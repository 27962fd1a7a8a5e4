"""Positional recall: records k v_1 k v_2 ..., ordinal queries, answers where the docs say, seeds, configs."""

import pytest
import torch

from ovq.tasks import IGNORE_INDEX, PositionalRecallConfig, PositionalRecallTask, get_task

SMALL = dict(vocab_size=64, seq_len=96, num_pairs=4, num_occurrences=2, num_filler_tokens=8)


def slow_check_positional(cfg: PositionalRecallConfig, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Walk one sequence as the docs describe it; answer each query by counting occurrences in the context."""
    x, y = inputs.tolist(), targets.tolist()
    T, C, Q, R = cfg.seq_len, cfg.context_len, cfg.resolved_num_queries, cfg.num_occurrences
    assert C == T - 3 * Q
    occurrences = {}                                  # key -> [(position, next token), ...] in the context
    for t in range(C):
        assert x[t] not in cfg.ordinal_tokens, "ordinal token in the context"
        if x[t] in cfg.key_tokens:
            assert t + 1 < C and x[t + 1] in cfg.value_tokens
            occurrences.setdefault(x[t], []).append((t, x[t + 1]))
        elif x[t] in cfg.value_tokens:
            assert t > 0 and x[t - 1] in cfg.key_tokens, f"value at {t} does not follow a key"
        else:
            assert x[t] in cfg.filler_tokens
    assert len(occurrences) == cfg.num_pairs
    for key, occ in occurrences.items():
        positions, values = zip(*occ)
        assert len(occ) == R, f"key {key} occurs {len(occ)} times, not {R}"
        assert list(positions) == list(range(positions[0], positions[0] + 2 * R, 2)), "record not contiguous"
        assert len(set(values)) == R, "values of one record repeat"
    for j in range(Q):
        ordinal, key, value = x[C + 3 * j: C + 3 * j + 3]
        r = cfg.ordinal_tokens.index(ordinal) + 1                      # "r-th occurrence"
        assert value == occurrences[key][r - 1][1] == y[C + 3 * j + 1]
    answer_positions = [t for t in range(T) if y[t] != IGNORE_INDEX]
    assert answer_positions == [C + 3 * j + 1 for j in range(Q)]
    return Q


@pytest.mark.parametrize("config", [
    SMALL,
    SMALL | dict(num_queries=8),                                   # sparse: every (key, ordinal) once
    SMALL | dict(num_occurrences=4, num_queries=20),               # more queries than combinations
    dict(vocab_size=8192, seq_len=600, num_pairs=16, num_occurrences=3),
    dict(vocab_size=16, seq_len=40, num_pairs=2, num_occurrences=3, num_filler_tokens=2),   # few values: distinctness
])
def test_sequences_are_valid(config):
    task = get_task("positional_recall", **config)
    batch = task.sample(16, seed=4)
    cfg = task.config
    assert batch.inputs.dtype == torch.long and batch.inputs.shape == (16, cfg.seq_len)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < cfg.vocab_size
    assert torch.equal(batch.mask, batch.targets != IGNORE_INDEX)
    checked = sum(slow_check_positional(cfg, batch.inputs[b], batch.targets[b]) for b in range(16))
    assert checked == batch.num_answers == 16 * cfg.resolved_num_queries


def test_vocabulary_split_and_dense_default():
    cfg = PositionalRecallConfig(num_occurrences=3)
    assert (cfg.filler_tokens, cfg.ordinal_tokens, cfg.key_tokens, cfg.value_tokens) == (
        range(0, 64), range(64, 67), range(67, 4129), range(4129, 8192))
    assert cfg.resolved_num_queries == 682 and cfg.context_len == 4096 - 3 * 682


def test_sparse_queries_name_distinct_key_ordinal_combinations():
    batch = get_task("positional_recall", **SMALL, num_queries=8).sample(64, seed=2)
    ordinals, keys = batch.inputs[:, -24::3], batch.inputs[:, -23::3]
    assert all(len(set(zip(o, k))) == 8 for o, k in zip(ordinals.tolist(), keys.tolist()))


def test_every_value_of_a_record_is_asked_for():
    """The ordinal matters: across a batch, both occurrences of keys are the answer equally often."""
    task = get_task("positional_recall", **SMALL)
    batch = task.sample(256, seed=9)
    ordinals = batch.inputs[:, task.config.context_len::3] - task.config.ordinal_tokens.start
    share_first = (ordinals == 0).float().mean().item()
    assert 0.45 < share_first < 0.55


def test_same_seed_same_batch_and_different_seeds_differ():
    task = get_task("positional_recall", **SMALL)
    a, b, c = task.sample(8, seed=21), task.sample(8, seed=21), task.sample(8, seed=22)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_occurrences=0), ValueError, "num_occurrences"),
    (dict(num_occurrences=1.5), TypeError, "num_occurrences"),
    (dict(seq_len=96, num_pairs=13, num_occurrences=2), ValueError, "context"),
    (dict(vocab_size=14, num_filler_tokens=8, num_occurrences=4, num_pairs=1, seq_len=40), ValueError,
     "num_occurrences"),
    (dict(vocab_size=10, num_filler_tokens=8, num_occurrences=1), ValueError, "vocab_size"),
    (dict(seq_len=5, num_pairs=1, num_occurrences=1), ValueError, "seq_len"),
    (dict(num_queries=-2), ValueError, "num_queries"),
])
def test_bad_configs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        PositionalRecallConfig(**kwargs)


def test_wrong_config_type_raises():
    with pytest.raises(TypeError, match="PositionalRecallConfig"):
        PositionalRecallTask(SMALL)
