"""Helpers for the ovq.data tests: the built-in sample prepared into a temporary folder."""

import pytest

from ovq.data.prepare import prepare
from ovq.data.split import SplitConfig

SAMPLE_SPLIT = SplitConfig(heldout_long_docs=0, heldout_fraction=0.4, max_heldout_share=0.5, seed=0)


def prepare_sample(out, **kwargs):
    kwargs = {"vocab_size": 512, "split": SAMPLE_SPLIT, "log": lambda *a: None} | kwargs
    return prepare("sample", out, **kwargs)


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    """The built-in sample prepared once per test module (small shards: several per split)."""
    out = tmp_path_factory.mktemp("prepared") / "sample"
    prepare_sample(out, shard_tokens=2000)
    return out
