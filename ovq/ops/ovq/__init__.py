from .chunk import ovq_attention
from .naive import naive_ovq_attention
from .recurrent import ovq_step

__all__ = ["ovq_attention", "ovq_step", "naive_ovq_attention"]
