"""OVQLMConfig rejects bad configurations at construction, naming the argument; presets."""

import re

import pytest

from ovq.models import PRESET_PATTERNS, OVQLMConfig, count_parameters, parameter_table, preset_config

GOOD = dict(vocab_size=64, hidden_size=32, num_heads=2, mixers=["swa", "ovq"])


@pytest.mark.parametrize("overrides, error, message", [
    (dict(mixers=["swa", "lstm"]), ValueError, "mixers[1] = 'lstm' is not a known mixer"),
    (dict(mixers=[]), TypeError, "mixers must be a non-empty list"),
    (dict(mixers="swa"), TypeError, "mixers must be a non-empty list"),
    (dict(window_size=0), ValueError, "window_size must be >= 1, got 0"),
    (dict(window_size=-4), ValueError, "window_size must be >= 1, got -4"),
    (dict(window_size=2.5), TypeError, "window_size must be an int"),
    (dict(num_heads=3), ValueError, "num_heads (3) must divide hidden_size (32)"),
    (dict(num_heads=0), ValueError, "num_heads must be >= 1"),
    (dict(max_centroids=0), ValueError, "max_centroids must be >= 1"),
    (dict(chunk_size="64"), TypeError, "chunk_size must be an int"),
    (dict(growth="fast"), ValueError, "growth must be one of"),
    (dict(beta_init=0.0), ValueError, "beta_init must be finite and > 0"),
    (dict(vq_ema_decay=1.0), ValueError, "vq_ema_decay must be finite and >= 0.0 and < 1.0"),
    (dict(vq_commit_weight=-1.0), ValueError, "vq_commit_weight must be finite and >= 0.0"),
    (dict(attn_rope=1), TypeError, "attn_rope must be a bool"),
    (dict(num_hidden_layers=3), ValueError, "num_hidden_layers (3) must equal len(mixers) (2)"),
    (dict(mixers=["mamba2"], mamba2_head_dim=24), ValueError, "mamba2_head_dim (24) must divide"),
    (dict(mixers=["gdn"], gdn_head_dim=5, gdn_expand_v=0.5), ValueError, "gdn_head_dim * gdn_expand_v must be an integer"),
])
def test_bad_config_fails_at_construction(overrides, error, message):
    with pytest.raises(error, match=re.escape(message)):
        OVQLMConfig(**(GOOD | overrides))


def test_head_dim_given_explicitly_need_not_divide():
    config = OVQLMConfig(**(GOOD | dict(num_heads=3, head_dim=8)))
    assert config.head_dim == 8 and config.num_attention_heads == 3


def test_config_defaults_and_derived_values():
    config = OVQLMConfig(**GOOD)
    assert config.num_hidden_layers == 2 and config.head_dim == 16 and config.intermediate_size == 128
    assert config.model_type == "ovq_lm" and config.tie_word_embeddings


def test_presets_build_the_named_patterns():
    assert preset_config("swa-ovq", "tiny").mixers == ["swa", "ovq"]
    assert preset_config("swa-attn", "20m").mixers == ["swa", "attn"] * 4
    assert preset_config("attn", "tiny").attn_rope and not preset_config("swa-attn", "tiny").attn_rope
    config = preset_config("gdn", "tiny", num_layers=3, vocab_size=100, max_centroids=7)
    assert config.mixers == ["gdn"] * 3 and config.vocab_size == 100 and config.max_centroids == 7
    with pytest.raises(ValueError, match="unknown preset 'swa-lstm'"):
        preset_config("swa-lstm")
    with pytest.raises(ValueError, match="unknown size '1b'"):
        preset_config("swa", "1b")
    with pytest.raises(ValueError, match="a preset fixes mixers"):
        preset_config("swa", mixers=["ovq"])
    with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['windowsize'\]"):
        preset_config("swa", "tiny", windowsize=4)  # a typo is not silently kept as an attribute


def test_preset_sizes_span_20m_to_150m_parameters():
    for name in PRESET_PATTERNS:
        small = count_parameters(preset_config(name, "20m")) / 1e6
        large = count_parameters(preset_config(name, "150m")) / 1e6
        assert 15 < small < 30 and 120 < large < 190, (name, small, large)
    table = parameter_table(("20m",))
    assert table.count("\n") == len(PRESET_PATTERNS) + 1 and all(f"`{name}`" in table for name in PRESET_PATTERNS)


def test_default_init_is_fan_in_and_initializer_range_gives_a_normal_init():
    """Fan-in init by default (the 0.02 convention made small models learn recall far slower: docs/experiments.md);
    a float initializer_range still gives normal(0, range) weights."""
    import torch

    from ovq.models import OVQForCausalLM
    from ovq.models.presets import preset_config

    torch.manual_seed(0)
    model = OVQForCausalLM(preset_config("swa-ovq", "tiny", vocab_size=512, hidden_size=256, num_heads=4))
    q_proj = model.model.layers[0].mixer.q_proj.weight
    assert abs(q_proj.std().item() - (3 * 256) ** -0.5) < 0.003  # U(±1/sqrt(fan_in))
    assert abs(model.model.embed_tokens.weight.std().item() - 256 ** -0.5) < 0.003
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, and initialized once
    model = OVQForCausalLM(preset_config("swa-ovq", "tiny", vocab_size=512, hidden_size=256, num_heads=4,
                                         initializer_range=0.02))
    assert abs(model.model.layers[0].mixer.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(model.model.embed_tokens.weight.std().item() - 0.02) < 0.002
