"""Golden loss curves: a few tiny jobs trained on CPU must reproduce their recorded losses step by step.

Any change to what a model, mixer, op, task or the trainer computes moves these curves; a change that should
move them (a fix, a new default) regenerates them on purpose:

    OVQ_UPDATE_GOLDEN=1 python -m pytest -q tests/train/test_golden_losses.py

and the diff of ``golden_losses.json`` shows what moved. The jobs run in float32 on one thread, so the same
build of torch gives the same curve; the tolerance (``RTOL``) covers another summation order (other thread
counts, CPUs), not behaviour: a changed temperature, count prior or commitment weight moves the curves beyond it.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from ovq.train import Trainer, TrainConfig
from ovq.train.distributed import DistributedContext
from ovq.train.jobs import JobConfig, build_training

GOLDEN = Path(__file__).with_name("golden_losses.json")
UPDATE = os.environ.get("OVQ_UPDATE_GOLDEN") == "1"
STEPS = 12
RTOL = 1e-5  # measured: 1e-7 between 1 and 4 threads; doubling VQ's commitment weight moves VQ's curve 2e-5-1e-4

SMALL_MIXERS = dict(window_size=8, chunk_size=8, max_centroids=16, codebook_size=16)
JOBS = {
    "recall/swa-ovq": dict(task="recall", model="swa-ovq"),
    "recall/swa-vq": dict(task="recall", model="swa-vq"),
    "recall/swa-attn": dict(task="recall", model="swa-attn"),
    "recall/swa": dict(task="recall", model="swa"),
    "positional_recall/swa-ovq": dict(task="positional_recall", model="swa-ovq"),
    "linear_regression/swa-ovq": dict(task="linear_regression", model="swa-ovq"),
}
TASK_ARGS = {
    "recall": dict(vocab_size=64, num_pairs=4, num_filler_tokens=8),
    "positional_recall": dict(vocab_size=64, num_pairs=3, num_filler_tokens=8),
    "linear_regression": dict(dim=4),
}


def train_losses(name: str, out_dir: Path) -> list[float]:
    """The per-step training losses of job ``name`` (the path ``ovq train`` takes: build_training + Trainer)."""
    spec = JOBS[name]
    job = JobConfig(task=spec["task"], model=spec["model"], size="tiny", seq_len=64, batch_size=4,
                    task_args=TASK_ARGS[spec["task"]], model_args=dict(SMALL_MIXERS), eval_batches=1)
    model, source, loss_fn, eval_fn, _ = build_training(job)
    config = TrainConfig(out_dir=str(out_dir), steps=STEPS, lr=3e-3, warmup_steps=2, log_every=1, precision="fp32",
                         progress=False)
    # on the CPU even where there is a GPU: the curves are CPU float32's
    history = Trainer(model, source, config, loss_fn=loss_fn, eval_fn=eval_fn, dist=DistributedContext()).fit()
    return [r["loss"] for r in history if "loss" in r]


@pytest.mark.parametrize("name", sorted(JOBS))
def test_training_reproduces_the_golden_losses(name, tmp_path, one_thread):
    losses = train_losses(name, tmp_path)
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    if UPDATE:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = losses
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
        pytest.skip("golden losses written")
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden curve for {name}: regenerate with OVQ_UPDATE_GOLDEN=1"
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(golden[name], dtype=torch.float64), rtol=RTOL, atol=0.0,
                               msg=lambda m: f"{name} left its golden loss curve:\n{m}\n"
                                             f"now:    {[round(x, 5) for x in losses]}\n"
                                             f"golden: {[round(x, 5) for x in golden[name]]}")


def test_the_golden_file_has_exactly_the_jobs():
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(JOBS)
