import pytest
import torch

from ovq.train.evaluate import loss_by_position


@pytest.mark.parametrize("name,kwargs", [("block", {"block": 0}), ("prefill", {"prefill": -1})])
def test_loss_by_position_rejects_bad_sizes(name, kwargs):
    with pytest.raises(ValueError, match=f"{name} must be >= 1"):
        loss_by_position(None, [("doc", torch.arange(10))], **kwargs)


def test_load_run_overrides_keep_the_weights_and_the_function(tmp_path, monkeypatch):
    """Mamba2's block size is how fla's PyTorch path splits the scan, not part of the function: evaluating a
    run with larger blocks (what 64K needs there) gives the same logits; an override that changes the
    weights' shapes fails naming it."""
    import dataclasses

    from fla_torch import patch_fla_for_cpu

    from ovq.train.checkpoint import save_checkpoint
    from ovq.train.evaluate import load_run
    from ovq.train.jobs import JobConfig, build_model

    patch_fla_for_cpu(monkeypatch)
    job = JobConfig(task="recall", model="mamba2", size="tiny", seq_len=64,
                    task_args={"vocab_size": 64, "num_pairs": 4, "num_filler_tokens": 8},
                    model_args={"mamba2_chunk_size": 8})
    torch.manual_seed(0)
    model = build_model(job)
    save_checkpoint({"model": model.state_dict(), "extra": {"job": dataclasses.asdict(job)}}, tmp_path)
    ids = job.make_task().sample(2, seed=3).inputs
    small, _ = load_run(tmp_path)
    large, large_job = load_run(tmp_path, model_args={"mamba2_chunk_size": 64})
    assert large_job.model_args["mamba2_chunk_size"] == 64
    with torch.no_grad():
        torch.testing.assert_close(large(ids).logits, small(ids).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit the weights"):
        load_run(tmp_path, model_args={"hidden_size": 48})
