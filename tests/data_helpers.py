"""Helpers for the ovq.data tests: the built-in sample prepared into a temporary folder."""

from ovq.data.prepare import prepare
from ovq.data.split import SplitConfig

SAMPLE_SPLIT = SplitConfig(heldout_long_docs=0, heldout_fraction=0.4, max_heldout_share=0.5, seed=0)


def prepare_sample(out, **kwargs):
    kwargs = {"vocab_size": 512, "split": SAMPLE_SPLIT, "log": lambda *a: None} | kwargs
    return prepare("sample", out, **kwargs)

