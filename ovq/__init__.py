"""ovq: Online Vector-Quantized attention (Alonso, Figliolia, Millidge 2026) with real kernels."""

from .ops import OVQState, VQState, ovq_attention, ovq_step
from . import models  # noqa: E402,F401  (registers the "ovq_lm" model type with transformers' Auto classes)

__version__ = "0.1.0"
__all__ = ["ovq_attention", "ovq_step", "OVQState", "VQState", "models", "__version__"]
