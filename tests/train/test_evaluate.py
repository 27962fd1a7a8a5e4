import pytest
import torch

from ovq.train.evaluate import loss_by_position


@pytest.mark.parametrize("name,kwargs", [("block", {"block": 0}), ("prefill", {"prefill": -1})])
def test_loss_by_position_rejects_bad_sizes(name, kwargs):
    with pytest.raises(ValueError, match=f"{name} must be >= 1"):
        loss_by_position(None, [("doc", torch.arange(10))], **kwargs)
