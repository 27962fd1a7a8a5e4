"""Hugging Face language models built on OVQ attention and the baselines it is compared with.

Importing this package (``import ovq`` does) registers ``OVQLMConfig`` (``model_type="ovq_lm"``),
``OVQModel`` and ``OVQForCausalLM`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import DictionaryLayer, FullAttentionLayer, OVQCache, SlidingWindowLayer
from .configuration_ovq import MIXERS, OVQLMConfig
from .modeling_ovq import OVQCausalLMOutput, OVQForCausalLM, OVQModel, OVQPreTrainedModel
from .padding import TokenLayout, token_layout
from .presets import PRESET_PATTERNS, PRESET_SIZES, count_parameters, parameter_table, preset_config

AutoConfig.register(OVQLMConfig.model_type, OVQLMConfig, exist_ok=True)
AutoModel.register(OVQLMConfig, OVQModel, exist_ok=True)
AutoModelForCausalLM.register(OVQLMConfig, OVQForCausalLM, exist_ok=True)

__all__ = ["OVQLMConfig", "MIXERS", "OVQModel", "OVQForCausalLM", "OVQPreTrainedModel", "OVQCausalLMOutput",
           "OVQCache", "SlidingWindowLayer", "FullAttentionLayer", "DictionaryLayer", "TokenLayout", "token_layout",
           "PRESET_PATTERNS", "PRESET_SIZES", "preset_config", "count_parameters", "parameter_table"]
