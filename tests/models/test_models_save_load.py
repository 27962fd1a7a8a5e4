"""save_pretrained -> from_pretrained (safetensors) round trips; the OVQ budget N is a load-time knob."""

import pytest
import torch
from model_helpers import ALL_MIXERS
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ovq.models import OVQForCausalLM, OVQLMConfig, OVQModel
from ovq.ops import OVQState


def _ids(length=40):
    return torch.randint(1, 64, (2, length), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_round_trip_gives_identical_logits(build, tmp_path, tie):
    model = build(ALL_MIXERS, tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is OVQForCausalLM and loaded.config.mixers == ALL_MIXERS
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)  # VQ codebook buffers included


def test_auto_classes_know_the_model(tmp_path):
    config = OVQLMConfig(vocab_size=64, hidden_size=32, num_heads=2, mixers=["swa", "ovq"])
    config.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is OVQLMConfig
    assert type(AutoModel.from_config(config)) is OVQModel
    assert type(AutoModelForCausalLM.from_config(config)) is OVQForCausalLM


def test_changing_max_centroids_at_load_changes_the_state_size_and_nothing_else(build, tmp_path):
    # Linear growth (one centroid per 2 tokens) reaches neither cap on 40 tokens: the outputs must not move.
    model = build(["swa", "ovq", "vq"], max_centroids=32, growth="linear", growth_rate=0.5)
    model.save_pretrained(tmp_path)
    small = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    large = AutoModelForCausalLM.from_pretrained(tmp_path, max_centroids=64).eval()
    assert small.config.max_centroids == 32 and large.config.max_centroids == 64
    assert large.model.layers[1].mixer.max_centroids == 64
    small_config, large_config = small.config.to_dict(), large.config.to_dict()
    assert {k for k in small_config if small_config[k] != large_config.get(k)} == {"max_centroids"}
    small_state, large_state = small.state_dict(), large.state_dict()
    assert small_state.keys() == large_state.keys()
    assert all(torch.equal(small_state[k], large_state[k]) for k in small_state)

    ids = _ids()
    with torch.no_grad():
        out_small, out_large = small(ids, use_cache=True), large(ids, use_cache=True)
    torch.testing.assert_close(out_large.logits, out_small.logits, atol=1e-12, rtol=0)
    bytes_small, bytes_large = out_small.past_key_values.layer_nbytes(), out_large.past_key_values.layer_nbytes()
    for n, nbytes in ((32, bytes_small[1]), (64, bytes_large[1])):
        assert nbytes == OVQState.max_nbytes(2, 16, max_centroids=n, chunk_size=8, batch_size=2, dtype=torch.float64)
    assert bytes_small[0] == bytes_large[0] and bytes_small[2] == bytes_large[2]  # swa and vq caches unchanged


def test_a_smaller_budget_at_load_caps_the_dictionary(build, tmp_path):
    build(["ovq"], max_centroids=64).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, max_centroids=4).eval()
    with torch.no_grad():
        cache = model(_ids(200), use_cache=True).past_key_values
    state = cache.layers[0].groups[0].state
    assert state.max_centroids == 4 and state.num_centroids == 3  # saturating growth: floor(4t/(4+t)) < 4
