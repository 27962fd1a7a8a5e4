"""``OVQModel`` and ``OVQForCausalLM``: decoder-only language models with a per-layer mixer pattern."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers import OVQAttention, VQAttention
from .attention import AttentionMixer
from .cache import OVQCache
from .configuration_ovq import ATTENTION_MIXERS, DICTIONARY_MIXERS, FLA_MIXERS, OVQLMConfig
from .dictionary import dictionary_forward
from .fla_mixers import build_fla_mixer, fla_forward
from .padding import TokenLayout, token_layout


def build_mixer(kind: str, config: OVQLMConfig, layer_idx: int) -> nn.Module:
    """The sequence mixer of one layer, from its name in ``config.mixers``."""
    d, h, hd = config.hidden_size, config.num_heads, config.head_dim
    if kind in ATTENTION_MIXERS:
        return AttentionMixer(d, h, hd, window=config.window_size if kind == "swa" else None,
                              rope=kind == "swa" or config.attn_rope, rope_theta=config.rope_theta, layer_idx=layer_idx)
    if kind in DICTIONARY_MIXERS:
        common = dict(chunk_size=config.chunk_size, count_prior=config.count_prior, beta_init=config.beta_init,
                      output_gate=config.output_gate, layer_idx=layer_idx)
        if kind == "ovq":
            return OVQAttention(d, h, hd, max_centroids=config.max_centroids, growth=config.growth,
                                growth_rate=config.growth_rate, **common)
        return VQAttention(d, h, hd, codebook_size=config.codebook_size, ema_decay=config.vq_ema_decay, **common)
    return build_fla_mixer(kind, config, layer_idx)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class OVQBlock(nn.Module):
    """Pre-norm block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: OVQLMConfig, layer_idx: int):
        super().__init__()
        self.kind, self.layer_idx = config.mixers[layer_idx], layer_idx
        self.mixer_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = build_mixer(self.kind, config, layer_idx)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, layout: TokenLayout, cache: OVQCache | None = None) -> torch.Tensor:
        h = self.mixer_norm(x)
        if self.kind in FLA_MIXERS:
            h = fla_forward(self.mixer, h, layout, cache)
        elif self.kind in ATTENTION_MIXERS:
            h = self.mixer(h, layout, cache.layers[self.layer_idx] if cache is not None else None)
        else:
            h = dictionary_forward(self.mixer, h, layout, cache.layers[self.layer_idx] if cache is not None else None)
        x = x + h
        return x + self.mlp(self.mlp_norm(x))


class OVQPreTrainedModel(PreTrainedModel):
    config_class = OVQLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["OVQBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module is getattr(self, "lm_head", None) and self.config.tie_word_embeddings:
                return  # it is the embedding
            if std is None:
                module.reset_parameters()  # fan-in: U(±1/sqrt(fan_in)) weights and biases
            else:
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std if std is not None else module.embedding_dim ** -0.5)
        elif isinstance(module, nn.RMSNorm) and module.weight is not None:
            nn.init.ones_(module.weight)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own OVQCache (one cache kind per mixer)


class OVQModel(OVQPreTrainedModel):
    """Embedding, blocks and final norm; returns hidden states (and the cache with ``use_cache``)."""

    def __init__(self, config: OVQLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(OVQBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: OVQCache | None = None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPast | tuple:
        """Args follow Hugging Face's decoder models.

        attention_mask: ``[B, past + T]`` or ``[B, T]``, 0 for left padding only (see :mod:`.padding`).
        past_key_values: an :class:`OVQCache` to continue from (updated in place and returned).
        use_cache: return the cache (default: ``config.use_cache`` in eval mode, off in training).
        Positions come from the mask and the cache; ``position_ids`` is refused.
        """
        if kwargs.get("position_ids") is not None:
            raise ValueError("position_ids is not supported: positions follow from attention_mask and the cache")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if past_key_values is not None and not isinstance(past_key_values, OVQCache):
            raise TypeError(f"past_key_values must be an OVQCache, got {type(past_key_values).__name__}")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = hidden.shape
        if use_cache and past_key_values is None:
            past_key_values = OVQCache(self.config)
        cache = past_key_values if use_cache or past_key_values is not None else None
        past_columns = cache.get_seq_length() if cache is not None else 0
        layout = token_layout(attention_mask, b, t, past_columns, cache.lengths if cache is not None else None,
                              hidden.device)
        all_hidden = []
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing:
            if cache is not None:
                raise ValueError("gradient checkpointing recomputes the blocks and cannot update a cache: "
                                 "call with use_cache=False (the default in training)")
            if "vq" in self.config.mixers:
                raise ValueError("gradient checkpointing would run the VQ layers' EMA codebook update twice per step;"
                                 " it is not supported for models with vq mixers")
        for block in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            if checkpointing:  # keep only block inputs; recompute the rest in backward
                hidden = self._gradient_checkpointing_func(block.__call__, hidden, layout, None)
            else:
                hidden = block(hidden, layout, cache)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        if cache is not None:
            new_tokens = layout.valid.sum(-1) if layout.valid is not None else torch.full((b,), t, device=hidden.device)
            cache.record_lengths(new_tokens)
        out = BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache,
                                      hidden_states=tuple(all_hidden) if output_hidden_states else None)
        return out if return_dict is not False else out.to_tuple()


@dataclass
class OVQCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the VQ commitment loss (summed over VQ layers; training only).

    ``loss`` is the LM loss plus ``config.vq_commit_weight * commit_loss``.
    """

    commit_loss: torch.FloatTensor | None = None


class OVQForCausalLM(OVQPreTrainedModel, GenerationMixin):
    """:class:`OVQModel` with a language-modelling head (tied to the embedding when configured)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: OVQLMConfig):
        super().__init__(config)
        self.model = OVQModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def commit_loss(self) -> torch.Tensor | None:
        """Sum of the VQ layers' commitment losses from the last training forward (``None`` without any)."""
        losses = [block.mixer.commit_loss for block in self.model.layers
                  if isinstance(block.mixer, VQAttention) and block.mixer.commit_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: OVQCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> OVQCausalLMOutput | tuple:
        """As :meth:`OVQModel.forward`, plus ``labels`` (the inputs, shifted inside; -100 is ignored) and
        ``logits_to_keep`` (compute logits for the last n positions only; 0: all)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
                         position_ids=kwargs.pop("position_ids", None))
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        loss = commit = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            commit = self.commit_loss() if self.training else None
            if commit is not None:
                loss = loss + self.config.vq_commit_weight * commit
        result = OVQCausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                   hidden_states=out.hidden_states, commit_loss=commit)
        return result if return_dict is not False else result.to_tuple()
