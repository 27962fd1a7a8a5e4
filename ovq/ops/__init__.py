"""OVQ attention and the static-codebook VQ baseline: ops, references and their state."""

from .ovq import naive_ovq_attention, ovq_attention, ovq_step
from .vq import naive_vq_attention, vq_attention, vq_step
from .state import DictionaryState, OVQState, VQState, kv_cache_nbytes

__all__ = ["ovq_attention", "ovq_step", "naive_ovq_attention", "vq_attention", "vq_step", "naive_vq_attention", "OVQState", "VQState", "DictionaryState",
           "kv_cache_nbytes"]
