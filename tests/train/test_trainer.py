"""The trainer on a toy recall task (CPU): learning, exact resume, crash-safe checkpoints, bad input."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ovq.tasks import get_task
from ovq.tasks.tiny_model import TinyModelConfig, TinySwaOvqModel
from ovq.train import CheckpointError, TaskSource, Trainer, TrainConfig, load_checkpoint, save_checkpoint, task_loss
from ovq.train.distributed import DistributedContext


def _trainer(out_dir, steps, **cfg):
    torch.manual_seed(0)
    task = get_task("recall", vocab_size=64, seq_len=32, num_pairs=4, num_filler_tokens=8)
    model = TinySwaOvqModel(TinyModelConfig(vocab_size=64, hidden_size=32, num_heads=2, window=8,
                                            chunk_size=8, max_centroids=16))
    config = TrainConfig(out_dir=str(out_dir), steps=steps, lr=3e-3, warmup_steps=2, log_every=1,
                         precision="fp32", progress=False, **cfg)
    # on the CPU also where a GPU is: exact resume means bit-identical losses, which CUDA's kernels do not promise
    return Trainer(model, TaskSource(task, 8, seed=1), config, loss_fn=task_loss(task),
                   dist=DistributedContext.from_env("cpu"))


def test_a_few_steps_lower_the_loss(tmp_path):
    history = _trainer(tmp_path, 30).fit()
    losses = [r["loss"] for r in history if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # nats
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 31  # 30 steps + the final record
    assert (tmp_path / "checkpoint.pt").exists()


def test_resume_continues_exactly(tmp_path):
    full = [r["loss"] for r in _trainer(tmp_path / "full", 8).fit() if "loss" in r]
    first = _trainer(tmp_path / "cut", 8).fit(until=3)  # stops at step 3 with a checkpoint
    assert load_checkpoint(tmp_path / "cut")["step"] == 3
    second = _trainer(tmp_path / "cut", 8).fit()  # a new process would do the same: resume from the file
    resumed = [r["loss"] for r in first + second if "loss" in r]
    assert resumed == full  # bit-identical on CPU


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({"step": 1}, tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2}, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_killed_during_save_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process while it writes a large checkpoint: the file on disk is the old one or the new one."""
    save_checkpoint({"step": 1, "blob": torch.zeros(10)}, tmp_path)
    script = textwrap.dedent(f"""
        import torch
        from ovq.train import save_checkpoint
        print("ready", flush=True)
        save_checkpoint({{"step": 2, "blob": torch.randn(40_000_000)}}, {str(tmp_path)!r})
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path)["step"] in (1, 2)


def test_corrupt_and_missing_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint({"step": 5}, tmp_path)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)
    torch.save({"something": "else"}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not an ovq checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("field,value,match", [("steps", 0, "steps must be an int >= 1"),
                                               ("lr", -1.0, "lr must be finite and > 0"),
                                               ("precision", "fp8", "precision must be"),
                                               ("grad_accum", 0, "grad_accum must be")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).validate()


def test_resume_with_other_data_settings_is_refused(tmp_path):
    _trainer(tmp_path, 2).fit()
    trainer = _trainer(tmp_path, 4)
    trainer.source.batch_size = 16
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit()


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path):
    full = [r["loss"] for r in _trainer(tmp_path / "full", 8).fit() if "loss" in r]
    trainer = _trainer(tmp_path / "cut", 8)
    inner, calls = trainer.loss_fn, []

    def loss_then_sigterm(model, batch):  # the signal arrives in the middle of step 3
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(model, batch)

    trainer.loss_fn = loss_then_sigterm
    before = signal.getsignal(signal.SIGTERM)
    first = trainer.fit()
    assert trainer.step == 3 and load_checkpoint(tmp_path / "cut")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    second = _trainer(tmp_path / "cut", 8).fit()
    assert [r["loss"] for r in first + second if "loss" in r] == full



def test_compile_gives_every_layer_its_graph_instead_of_running_the_rest_eagerly(monkeypatch):
    """On CUDA fla's layers have graph breaks (their Triton functions ask the device's properties), so each
    layer's forward is compiled as a frame of its own, guarded on the layer's integer ``layer_idx``: one graph
    per layer. Past ``recompile_limit`` (8) dynamo ran the remaining layers eagerly (session 9: the 60M
    Mamba2 LM was no faster compiled). A stack of that shape, with dynamo told to fail where it would fall back."""
    import torch._dynamo
    import torch.nn as nn

    from ovq.train.trainer import compile_model

    class Layer(nn.Module):
        def __init__(self, layer_idx):
            super().__init__()
            self.layer_idx, self.proj = layer_idx, nn.Linear(4, 4)

        def forward(self, x):
            x = self.proj(x) * (self.layer_idx + 1)
            torch._dynamo.graph_break()
            return torch.tanh(x)

    model = nn.Sequential(*[Layer(i) for i in range(10)])
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    x = torch.randn(2, 4)
    try:
        compiled = compile_model(model, backend="eager")
        out = compiled(x)
        model.eval()
        compiled(x)  # eval mode: the layers' graphs again, guarded on self.training
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, model(x))
