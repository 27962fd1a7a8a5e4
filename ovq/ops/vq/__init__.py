from .chunk import vq_attention
from .naive import naive_vq_attention
from .recurrent import vq_step

__all__ = ["vq_attention", "vq_step", "naive_vq_attention"]
