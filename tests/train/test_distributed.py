"""The process context: which device each process trains on."""

import torch

from ovq.train.distributed import DistributedContext


def test_device_cuda_without_an_index_is_this_process_gpu(monkeypatch):
    """`ovq train --device cuda` names this process's GPU (LOCAL_RANK under torchrun): torch.cuda.set_device
    rejects a device without an index, which made the flag fail before training started."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: chosen.append(torch.device(dev)))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert DistributedContext.from_env("cuda").device == torch.device("cuda", 1)
    assert DistributedContext.from_env("cuda:0").device == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 1), torch.device("cuda", 0)]
    assert DistributedContext.from_env("cpu").device == torch.device("cpu")
