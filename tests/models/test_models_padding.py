"""Left-padded batches give every real token the logits it gets when its sequence runs alone."""

import re

import pytest
import torch
from model_helpers import ALL_MIXERS, MIXER_CASES, tolerance

LENGTHS = [37, 30, 30, 19]  # pads 0, 7, 7, 18: not multiples of the chunk (8); two rows share a pad length
WIDTH = max(LENGTHS)


def _padded_batch(seed=2):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, 64, (n,), generator=g) for n in LENGTHS]
    ids = torch.zeros(len(seqs), WIDTH, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, WIDTH - len(s):], mask[r, WIDTH - len(s):] = s, 1
    return seqs, ids, mask


def _check_rows_alone(model, mixers, seqs, batch_logits, extra=None):
    """Row r of ``batch_logits`` (right-aligned) equals the model on sequence r alone (+ ``extra`` tokens)."""
    for r, s in enumerate(seqs):
        ids = s[None] if extra is None else torch.cat([s, extra[r]])[None]
        with torch.no_grad():
            alone = model(ids).logits[0]
        n = alone.shape[0] if extra is None else extra.shape[1]
        torch.testing.assert_close(batch_logits[r, -n:], alone[-n:], atol=tolerance(mixers), rtol=0,
                                   msg=lambda m, r=r: f"row {r}: {m}")


@pytest.mark.parametrize("kind", MIXER_CASES)
def test_left_padded_batch_equals_each_sequence_alone(build, kind):
    model = build([kind, kind])
    seqs, ids, mask = _padded_batch()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    _check_rows_alone(model, [kind], seqs, logits)


def test_left_padded_prefill_then_batched_decoding(build):
    """The cache of a padded prompt keeps every row separate while generating (all mixers in one model)."""
    model = build(ALL_MIXERS)
    seqs, ids, mask = _padded_batch()
    extra = torch.randint(1, 64, (len(seqs), 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).past_key_values
        steps = []
        for t in range(extra.shape[1]):
            mask = torch.cat([mask, torch.ones(len(seqs), 1, dtype=torch.long)], dim=1)
            steps.append(model(extra[:, t:t + 1], attention_mask=mask, past_key_values=cache).logits)
    _check_rows_alone(model, ALL_MIXERS, seqs, torch.cat(steps, 1), extra=extra)
    assert cache.lengths.tolist() == [n + 10 for n in LENGTHS]


def test_generate_on_a_left_padded_batch(build):
    model = build(ALL_MIXERS)
    seqs, ids, mask = _padded_batch()
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for r, s in enumerate(seqs):
        alone = model.generate(s[None], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(batch[r, WIDTH:], alone[0, len(s):]), r


@pytest.mark.parametrize("mask, message", [
    ([[1, 1, 0, 0], [1, 1, 1, 1]], "must be left padding"),
    ([[0, 1, 0, 1], [1, 1, 1, 1]], "must be left padding"),
    ([[0, 0, 0, 0], [1, 1, 1, 1]], "a row without any real token"),
    ([[0, 2, 1, 1], [1, 1, 1, 1]], "only 0 (padding) and 1"),
    ([[1, 1, 1], [1, 1, 1]], "must cover the new tokens (4)"),
])
def test_unsupported_masks_are_refused(build, mask, message):
    model = build(["swa"])
    with pytest.raises(ValueError, match=re.escape(message)):
        model(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor(mask))


def test_padding_after_the_prompt_is_refused(build):
    model = build(["ovq"])
    with torch.no_grad():
        cache = model(torch.ones(2, 4, dtype=torch.long), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="only left padding of the first call"):
            model(torch.ones(2, 1, dtype=torch.long), attention_mask=torch.tensor([[1] * 4 + [0], [1] * 5]),
                  past_key_values=cache)


def test_position_ids_are_refused(build):
    model = build(["swa"])
    with pytest.raises(ValueError, match="position_ids is not supported"):
        model(torch.ones(1, 4, dtype=torch.long), position_ids=torch.arange(4)[None])


def test_beam_search_on_a_left_padded_batch_regroups_the_cache_rows(build):
    """Beams move rows between the OVQ/VQ row groups (reorder_cache); results match the cacheless run."""
    model = build(["swa", "ovq", "vq"])
    _, ids, mask = _padded_batch()
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, num_beams=2)
    with_cache = model.generate(ids, attention_mask=mask, **greedy)
    assert torch.equal(with_cache, model.generate(ids, attention_mask=mask, use_cache=False, **greedy))


@pytest.mark.parametrize("reorder", ["reorder_cache", "batch_repeat_interleave"])
def test_reordering_a_padded_cache_moves_each_rows_state(build, reorder):
    """After reorder_cache(index) (beams: rows moved and duplicated) or batch_repeat_interleave, the cache
    continues exactly like a prompt batch built in that row order."""
    model = build(ALL_MIXERS)
    _, ids, mask = _padded_batch()
    index = torch.tensor([2, 0, 3, 1, 1]) if reorder == "reorder_cache" else torch.arange(4).repeat_interleave(2)
    extra = torch.randint(1, 64, (len(index), 4), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).past_key_values
        if reorder == "reorder_cache":
            cache.reorder_cache(index)
        else:
            cache.batch_repeat_interleave(2)
        full_mask = torch.cat([mask[index], torch.ones_like(extra)], dim=1)
        logits = torch.cat([model(extra[:, t:t + 1], attention_mask=full_mask[:, :WIDTH + t + 1],
                                  past_key_values=cache).logits for t in range(4)], dim=1)  # Mamba2: 1 per call
        expected = model(torch.cat([ids[index], extra], dim=1), attention_mask=full_mask).logits[:, -4:]
    torch.testing.assert_close(logits, expected, atol=tolerance(ALL_MIXERS), rtol=0)
