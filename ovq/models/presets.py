"""Named model presets: the architectures the paper compares, at a few sizes.

``preset_config("swa-ovq", "60m")`` is an :class:`OVQLMConfig`; ``OVQForCausalLM(preset_config(...))`` a
model. Names say what the layers are (the pattern repeats over the depth):

==============  =====================================================================
``swa-ovq``     sliding-window attention (RoPE) alternating with OVQ (the paper's model)
``swa-vq``      sliding-window attention alternating with Transformer-VQ
``swa-attn``    sliding-window attention alternating with full NoPE attention ("sw-nope")
``swa``         sliding-window attention only
``attn``        full causal attention with RoPE in every layer (a plain Transformer)
``mamba2``      fla's Mamba2 in every layer
``gdn``         fla's Gated DeltaNet in every layer
==============  =====================================================================

Sizes fix width, depth and heads; the parameter counts (vocabulary 32,000, tied embeddings) are
printed by ``python -m ovq.models.presets`` (counted on the meta device, nothing is allocated).
"""

from __future__ import annotations

import argparse
import inspect
import logging

import torch

from .configuration_ovq import OVQLMConfig

PRESET_PATTERNS: dict[str, tuple[str, ...]] = {
    "swa-ovq": ("swa", "ovq"),
    "swa-vq": ("swa", "vq"),
    "swa-attn": ("swa", "attn"),
    "swa": ("swa",),
    "attn": ("attn",),
    "mamba2": ("mamba2",),
    "gdn": ("gdn",),
}

#: hidden size, layers, heads (head size 64). "tiny" is for tests and quick checks.
PRESET_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4),  # the synthetic-task experiments (issue 5)
    "20m": dict(hidden_size=320, num_layers=8, num_heads=5),
    "60m": dict(hidden_size=512, num_layers=14, num_heads=8),
    "150m": dict(hidden_size=768, num_layers=18, num_heads=12),
}


def preset_config(name: str, size: str = "20m", **overrides) -> OVQLMConfig:
    """The config of preset ``name`` at ``size``; any :class:`OVQLMConfig` argument can be overridden
    (``num_layers`` too: the preset's pattern is repeated to that depth)."""
    if name not in PRESET_PATTERNS:
        raise ValueError(f"unknown preset {name!r}; choose from {tuple(PRESET_PATTERNS)}")
    if size not in PRESET_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {tuple(PRESET_SIZES)}")
    dims = PRESET_SIZES[size] | {k: overrides.pop(k) for k in ("hidden_size", "num_layers", "num_heads") if k in overrides}
    if "mixers" in overrides:
        raise ValueError("a preset fixes mixers; build OVQLMConfig(mixers=...) directly for another pattern")
    # Hugging Face configs keep unknown keywords as attributes: a misspelled override would be ignored.
    known = set(inspect.signature(OVQLMConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config field(s) {unknown}; OVQLMConfig takes {sorted(known)} "
                         "and num_layers")
    pattern = PRESET_PATTERNS[name]
    mixers = [pattern[i % len(pattern)] for i in range(dims["num_layers"])]
    defaults = dict(attn_rope=True) if name == "attn" else {}
    return OVQLMConfig(hidden_size=dims["hidden_size"], num_heads=dims["num_heads"], mixers=mixers,
                       **(defaults | overrides))


def count_parameters(config: OVQLMConfig) -> int:
    """Parameters of ``OVQForCausalLM(config)`` (tied weights counted once), built on the meta device."""
    from .modeling_ovq import OVQForCausalLM

    fla_logger = logging.getLogger("fla")  # fla's Mamba2 warns about its CUDA kernels once per layer
    level = fla_logger.level
    fla_logger.setLevel(logging.ERROR)
    try:
        with torch.device("meta"):
            model = OVQForCausalLM(config)
    finally:
        fla_logger.setLevel(level)
    return sum(p.numel() for p in model.parameters())


def parameter_table(sizes: tuple[str, ...] = ("20m", "60m", "150m"), vocab_size: int = 32000) -> str:
    """A Markdown table of parameter counts (millions) of every preset at ``sizes``."""
    header = "| preset | " + " | ".join(f"{s} (d={PRESET_SIZES[s]['hidden_size']}, L={PRESET_SIZES[s]['num_layers']})"
                                         for s in sizes) + " |"
    lines = [header, "|" + " --- |" * (len(sizes) + 1)]
    for name in PRESET_PATTERNS:
        counts = [count_parameters(preset_config(name, s, vocab_size=vocab_size)) / 1e6 for s in sizes]
        lines.append(f"| `{name}` | " + " | ".join(f"{c:.1f}M" for c in counts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the parameter counts of the model presets.")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--sizes", nargs="+", default=["20m", "60m", "150m"], choices=list(PRESET_SIZES))
    args = parser.parse_args(argv)
    print(parameter_table(tuple(args.sizes), args.vocab_size))


if __name__ == "__main__":
    main()
