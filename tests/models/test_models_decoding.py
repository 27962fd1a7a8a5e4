"""Prefill + decoding from the cache equals the full forward; generate() works; cache memory is flat."""

import pytest
import torch
from model_helpers import ALL_MIXERS, MIXER_CASES, tolerance

from ovq.models import OVQCache

T, PREFILL = 37, 13  # crosses several OVQ/VQ chunks (L = 8) and sliding windows (W = 6)


def _tokens(batch=2, length=T, seed=1):
    return torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decode(model, ids, prefill, step=1):
    """Logits and hidden states of a prefill of ``prefill`` tokens, then calls of ``step`` tokens each."""
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True, output_hidden_states=True)
        logits, hidden, cache = [out.logits], [torch.stack(out.hidden_states)], out.past_key_values
        for t in range(prefill, ids.shape[1], step):
            out = model(ids[:, t:t + step], past_key_values=cache, use_cache=True, output_hidden_states=True)
            logits.append(out.logits)
            hidden.append(torch.stack(out.hidden_states))
    return torch.cat(logits, 1), torch.cat(hidden, 2), cache


@pytest.mark.parametrize("kind", MIXER_CASES)
def test_prefill_then_token_by_token_equals_full_forward(build, kind):
    model = build([kind, kind])
    ids = _tokens()
    with torch.no_grad():
        full = model(ids, use_cache=False, output_hidden_states=True)
    logits, hidden, cache = _decode(model, ids, PREFILL)
    tol = tolerance([kind])
    torch.testing.assert_close(hidden, torch.stack(full.hidden_states), atol=tol, rtol=0)
    torch.testing.assert_close(logits, full.logits, atol=tol, rtol=0)
    assert cache.get_seq_length() == T and cache.lengths.tolist() == [T, T]


def test_hybrid_of_every_mixer_decodes_like_its_full_forward(build):
    model = build(ALL_MIXERS)
    ids = _tokens()
    with torch.no_grad():
        full = model(ids).logits
    logits, _, _ = _decode(model, ids, PREFILL)
    torch.testing.assert_close(logits, full, atol=tolerance(ALL_MIXERS), rtol=0)


@pytest.mark.parametrize("kind", ["swa", "attn", "ovq", "vq"])
def test_continuing_with_several_tokens_per_call(build, kind):
    """Chunked prefill: calls of 5 tokens (across window and chunk boundaries) equal one pass."""
    model = build([kind, "swa"])
    ids = _tokens()
    with torch.no_grad():
        full = model(ids).logits
    logits, _, _ = _decode(model, ids, 7, step=5)
    torch.testing.assert_close(logits, full, atol=1e-10, rtol=0)


def _greedy_without_cache(model, ids, new_tokens):
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def test_generate_matches_greedy_decoding_without_cache(build):
    model = build(ALL_MIXERS)
    ids = _tokens(length=20)
    generated = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 32)
    assert torch.equal(generated, _greedy_without_cache(model, ids, 12))


@pytest.mark.parametrize("kind", MIXER_CASES)
def test_cache_memory_is_flat_except_full_attention(build, kind):
    model = build([kind])
    ids = _tokens(length=60)
    sizes = []
    with torch.no_grad():
        cache = model(ids[:, :10], use_cache=True).past_key_values
        for t in range(10, 60):
            sizes.append(cache.nbytes())
            model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
    assert isinstance(cache, OVQCache) and sizes[0] > 0
    if kind == "attn":
        growth = sizes[1] - sizes[0]
        assert growth > 0 and all(b - a == growth for a, b in zip(sizes, sizes[1:]))
    else:
        assert len(set(sizes)) == 1, sizes


def test_ovq_cache_size_follows_the_spec_bound(build):
    from ovq.ops import OVQState

    model = build(["ovq"], max_centroids=16)
    with torch.no_grad():
        cache = model(_tokens(batch=3, length=50), use_cache=True).past_key_values
    assert cache.nbytes() == OVQState.max_nbytes(2, 16, max_centroids=16, chunk_size=8, batch_size=3,
                                                 dtype=torch.float64)


def test_beam_search_and_chunked_prefill_match_runs_without_cache(build):
    """Beam search reorders every layer's cache; a user cache with prefill_chunk_size continues it."""
    model = build(["swa", "ovq", "attn", "vq", "gdn"])
    ids = _tokens(length=20)
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    beams = model.generate(ids, num_beams=3, **greedy)
    assert torch.equal(beams, model.generate(ids, num_beams=3, use_cache=False, **greedy))
    chunked = model.generate(ids, past_key_values=OVQCache(model.config), prefill_chunk_size=7, **greedy)
    assert torch.equal(chunked, model.generate(ids, **greedy))


def test_sliding_window_cache_holds_w_minus_1_tokens_and_fla_protocol_is_only_for_fla_layers(build):
    model = build(["swa", "gdn"], window_size=6)
    with torch.no_grad():
        cache = model(_tokens(batch=3, length=30), use_cache=True).past_key_values
    swa = cache.layers[0]
    assert swa.keys.shape == (3, 2, 5, 16) and swa.positions.tolist() == [[25, 26, 27, 28, 29]] * 3
    assert cache.layer_nbytes()[0] == 2 * 3 * 2 * 5 * 16 * 8 + 3 * 5 * 8  # keys + values (float64), positions
    assert set(cache[1]) >= {"recurrent_state", "conv_state"}  # fla's state dict for the gdn layer
    with pytest.raises(TypeError, match="only fla mixers use fla's cache protocol"):
        cache[0]
