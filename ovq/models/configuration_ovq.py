"""``OVQLMConfig``: a decoder-only language model whose layers each use one sequence mixer from a pattern."""

from __future__ import annotations

import math
from numbers import Real

from transformers import PretrainedConfig

from ..ops.utils import check_bool, check_growth, check_int

#: The sequence mixers a layer can use (``OVQLMConfig.mixers`` lists one per layer).
MIXERS = (
    "ovq",     # OVQ attention (ovq.layers.OVQAttention), no positional encoding
    "vq",      # Transformer-VQ attention (ovq.layers.VQAttention), no positional encoding
    "swa",     # sliding-window softmax attention over the last `window_size` tokens, RoPE
    "attn",    # full causal softmax attention, NoPE (default) or RoPE (`attn_rope=True`)
    "mamba2",  # fla.layers.Mamba2
    "gdn",     # fla.layers.GatedDeltaNet
)
FLA_MIXERS = ("mamba2", "gdn")
DICTIONARY_MIXERS = ("ovq", "vq")
ATTENTION_MIXERS = ("swa", "attn")


def _check_real(name: str, value, *, minimum: float, inclusive: bool = False, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    low_ok = value >= minimum if inclusive else value > minimum
    if not math.isfinite(value) or not low_ok or (maximum is not None and value >= maximum):
        bound = f"{'>=' if inclusive else '>'} {minimum}" + (f" and < {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return float(value)


class OVQLMConfig(PretrainedConfig):
    r"""Configuration of :class:`OVQForCausalLM`: pre-norm blocks (RMSNorm, mixer, RMSNorm, SwiGLU MLP).

    Args:
        vocab_size: tokens in the vocabulary.
        hidden_size: model width d.
        num_heads: heads of the attention-like mixers (ovq, vq, swa, attn); the default head size is
            ``hidden_size // num_heads``.
        head_dim: head size of those mixers (``None``: ``hidden_size // num_heads``, which must divide).
        intermediate_size: SwiGLU hidden size (``None``: 8/3·d rounded up to a multiple of 64).
        mixers: one mixer name per layer, from :data:`MIXERS`; its length is the number of layers.
        window_size: W, the tokens a ``swa`` query sees (itself and the W-1 before it).
        rope_theta: RoPE base (``swa`` always uses RoPE; ``attn`` when ``attn_rope``).
        attn_rope: give the ``attn`` mixer RoPE (default: no positional encoding, the paper's baseline).
        max_centroids: N, the OVQ dictionary cap (the memory budget; override at load time with
            ``from_pretrained(path, max_centroids=...)``: it is not a weight).
        chunk_size: L, the OVQ/VQ read/write chunk. 128 (the op's default is 64): on the H200 the kernels' fwd+bwd
            is 1.46x faster there at 64K, and recall trained on the 4K grid held better to 64K
            (``docs/kernels.md``, ``results/t4096-l128``).
        growth, growth_rate: OVQ's growth rule (``"saturating"`` or ``"linear"`` with rate r).
        count_prior: add ``log count`` to the centroid logits (OVQ and VQ).
        beta_init: initial inverse temperature of OVQ/VQ (learned per head).
        output_gate: sigmoid output gate on OVQ/VQ.
        codebook_size: S, the VQ codebook size.
        vq_ema_decay: EMA decay of the VQ codebook.
        vq_commit_weight: weight of the VQ commitment loss added to the LM loss in training (summed over
            the VQ layers).
        mamba2_state_size, mamba2_expand, mamba2_head_dim, mamba2_chunk_size: ``fla.layers.Mamba2``'s
            ``state_size``, ``expand``, ``head_dim`` (``None``: ``hidden_size // num_heads``), ``chunk_size``.
        gdn_num_heads, gdn_head_dim, gdn_expand_v: ``fla.layers.GatedDeltaNet``'s ``num_heads``
            (``None``: ``num_heads``), ``head_dim`` (``None``: ``hidden_size // gdn_num_heads``), ``expand_v``.
        conv_size: short-convolution width of the fla mixers.
        norm_eps: RMSNorm epsilon.
        initializer_range: std of a normal init of linear and embedding weights; ``None`` (the default):
            PyTorch's fan-in init for linear layers (U(±1/sqrt(fan_in))) and std 1/sqrt(hidden_size) for the
            embedding. The common 0.02 is ~3x smaller than fan-in at width 256 and made small models learn
            recall far slower (docs/experiments.md).
        tie_word_embeddings: share the input embedding and the output projection.

    Bad values fail here, at construction, with a ``ValueError``/``TypeError`` naming the argument.
    """

    model_type = "ovq_lm"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "num_heads"}

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        num_heads: int = 8,
        head_dim: int | None = None,
        intermediate_size: int | None = None,
        mixers: list[str] | tuple[str, ...] = ("swa", "ovq", "swa", "ovq"),
        window_size: int = 512,
        rope_theta: float = 10000.0,
        attn_rope: bool = False,
        max_centroids: int = 1024,
        chunk_size: int = 128,
        growth: str = "saturating",
        growth_rate: float = 1.0,
        count_prior: bool = True,
        beta_init: float = 12.0,
        output_gate: bool = False,
        codebook_size: int = 1024,
        vq_ema_decay: float = 0.99,
        vq_commit_weight: float = 1e-4,
        mamba2_state_size: int = 64,
        mamba2_expand: int = 2,
        mamba2_head_dim: int | None = None,
        mamba2_chunk_size: int = 64,
        gdn_num_heads: int | None = None,
        gdn_head_dim: int | None = None,
        gdn_expand_v: float = 1.0,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
        initializer_range: float | None = None,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        if isinstance(mixers, str) or not isinstance(mixers, (list, tuple)) or not mixers:
            raise TypeError(f"mixers must be a non-empty list of mixer names from {MIXERS}, got {mixers!r}")
        for i, name in enumerate(mixers):
            if name not in MIXERS:
                raise ValueError(f"mixers[{i}] = {name!r} is not a known mixer; choose from {MIXERS}")
        num_layers = kwargs.pop("num_hidden_layers", None)  # derived from `mixers`; saved configs carry it
        if num_layers is not None and num_layers != len(mixers):
            raise ValueError(f"num_hidden_layers ({num_layers}) must equal len(mixers) ({len(mixers)})")

        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("window_size", window_size), ("max_centroids", max_centroids),
                            ("chunk_size", chunk_size), ("codebook_size", codebook_size),
                            ("mamba2_state_size", mamba2_state_size), ("mamba2_expand", mamba2_expand),
                            ("mamba2_chunk_size", mamba2_chunk_size), ("conv_size", conv_size)):
            check_int(name, value)
        for name, value in (("head_dim", head_dim), ("intermediate_size", intermediate_size),
                            ("mamba2_head_dim", mamba2_head_dim), ("gdn_num_heads", gdn_num_heads),
                            ("gdn_head_dim", gdn_head_dim)):
            if value is not None:
                check_int(name, value)
        if head_dim is None and hidden_size % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide hidden_size ({hidden_size}) when head_dim is not given")
        check_bool("attn_rope", attn_rope)
        check_bool("count_prior", count_prior)
        check_bool("output_gate", output_gate)
        check_bool("tie_word_embeddings", tie_word_embeddings)
        check_growth(growth, growth_rate)
        _check_real("rope_theta", rope_theta, minimum=0.0)
        _check_real("beta_init", beta_init, minimum=0.0)
        _check_real("vq_ema_decay", vq_ema_decay, minimum=0.0, inclusive=True, maximum=1.0)
        _check_real("vq_commit_weight", vq_commit_weight, minimum=0.0, inclusive=True)
        _check_real("gdn_expand_v", gdn_expand_v, minimum=0.0)
        _check_real("norm_eps", norm_eps, minimum=0.0)
        if initializer_range is not None:
            _check_real("initializer_range", initializer_range, minimum=0.0)

        self.vocab_size, self.hidden_size, self.num_heads = vocab_size, hidden_size, num_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 64 * math.ceil(8 * hidden_size / 3 / 64)
        self.mixers = list(mixers)
        self.num_hidden_layers = len(self.mixers)
        self.window_size, self.rope_theta, self.attn_rope = window_size, float(rope_theta), attn_rope
        self.max_centroids, self.chunk_size = max_centroids, chunk_size
        self.growth, self.growth_rate, self.count_prior = growth, float(growth_rate), count_prior
        self.beta_init, self.output_gate = float(beta_init), output_gate
        self.codebook_size, self.vq_ema_decay, self.vq_commit_weight = codebook_size, float(vq_ema_decay), float(vq_commit_weight)
        self.mamba2_state_size, self.mamba2_expand, self.mamba2_chunk_size = mamba2_state_size, mamba2_expand, mamba2_chunk_size
        self.mamba2_head_dim = mamba2_head_dim if mamba2_head_dim is not None else hidden_size // num_heads
        self.gdn_num_heads = gdn_num_heads if gdn_num_heads is not None else num_heads
        self.gdn_head_dim = gdn_head_dim if gdn_head_dim is not None else hidden_size // self.gdn_num_heads
        self.gdn_expand_v, self.conv_size = float(gdn_expand_v), conv_size
        self.norm_eps = float(norm_eps)
        self.initializer_range = None if initializer_range is None else float(initializer_range)
        self.use_cache = use_cache
        self._check_fla_shapes()
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _check_fla_shapes(self) -> None:
        """The head arithmetic fla's layers need, checked here so a bad config fails before any layer is built."""
        if "mamba2" in self.mixers:
            inner = self.mamba2_expand * self.hidden_size
            if inner % self.mamba2_head_dim:
                raise ValueError(f"mamba2_head_dim ({self.mamba2_head_dim}) must divide mamba2_expand * hidden_size ({inner})")
        if "gdn" in self.mixers:
            head_v = self.gdn_head_dim * self.gdn_expand_v
            if head_v != int(head_v):
                raise ValueError(f"gdn_head_dim * gdn_expand_v must be an integer, got {self.gdn_head_dim} * {self.gdn_expand_v}")
