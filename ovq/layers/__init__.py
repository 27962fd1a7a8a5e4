from .ovq_attention import OVQAttention
from .vq_attention import VQAttention

__all__ = ["OVQAttention", "VQAttention"]
