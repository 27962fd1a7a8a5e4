"""The ``ovq`` command line end to end at toy size on CPU: train, resume, eval, plot, LM, generate, DDP."""

import json
import os
import subprocess
import sys

import pytest

from ovq.cli.main import main

RECALL = ["--task", "recall", "--model", "swa-ovq", "--size", "tiny", "--seq-len", "64", "--batch-size", "8",
          "--lr", "3e-3", "--warmup", "5", "--precision", "fp32", "--log-every", "5", "--no-progress",
          "--task-arg", "vocab_size=64", "--task-arg", "num_pairs=4", "--task-arg", "num_filler_tokens=8",
          "--model-arg", "window_size=8", "--model-arg", "chunk_size=8", "--model-arg", "max_centroids=32"]


def _run(cmd, env):
    """Run a command; on failure show the end of its stderr (torchrun's workers report there)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_train_resume_eval_plot(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", *RECALL, "--steps", "10", "--out", str(run)])
    main(["train", *RECALL, "--steps", "20", "--out", str(run)])  # picks up at step 10
    assert "resumed from" in capsys.readouterr().out
    assert len(_losses(run)) == 4
    out = tmp_path / "eval.json"
    main(["eval", str(run), "--lengths", "64,128", "--max-centroids", "8,32", "--batches", "1",
          "--task-arg", "num_queries=4", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["length"], r["max_centroids"]) for r in rows] == [(64, 8), (128, 8), (64, 32), (128, 32)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    import matplotlib.pyplot as plt
    figures = len(plt.get_fignums())
    main(["plot", str(out), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert len(plt.get_fignums()) == figures  # closed: a report plots many in one process
    # the chunk size as a test-time knob, recorded with every row
    main(["eval", str(run), "--lengths", "128", "--max-centroids", "8", "--chunk-size", "32", "--batches", "1",
          "--task-arg", "num_queries=4", "--out", str(tmp_path / "l32.json")])
    l32 = json.loads((tmp_path / "l32.json").read_text())["results"]
    assert [(r["length"], r["max_centroids"], r["chunk_size"]) for r in l32] == [(128, 8, 32)]
    assert "chunk_size" not in rows[0]
    # linear growth filling each N by 128 tokens, recorded with every row and drawn as a variant
    main(["eval", str(run), "--lengths", "128", "--max-centroids", "8,32", "--fill-length", "128", "--batches", "1",
          "--task-arg", "num_queries=4", "--out", str(tmp_path / "fill.json")])
    fill = json.loads((tmp_path / "fill.json").read_text())["results"]
    assert [(r["max_centroids"], r["fill_length"]) for r in fill] == [(8, 128), (32, 128)]
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--lengths", "64", "--fill-length", "0", "--out", str(tmp_path / "bad.json")])
    assert "fill_length must be >= 1" in capsys.readouterr().err
    # the capacity axis: each number of pairs at each length, rows naming their task settings, plotted against P
    sweep = tmp_path / "pairs.json"
    main(["eval", str(run), "--lengths", "64,128", "--batches", "1", "--task-arg", "num_queries=2",
          "--task-sweep", "num_pairs=2,4", "--out", str(sweep)])
    rows = json.loads(sweep.read_text())["results"]
    assert [(r["length"], r["task_args"]) for r in rows] == [
        (n, {"num_queries": 2, "num_pairs": p}) for n in (64, 128) for p in (2, 4)]
    main(["plot", str(sweep), "--x", "num_pairs", "--out", str(tmp_path / "pairs.png")])
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no task setting 'num_filler_tokens'"):
        main(["plot", str(sweep), "--x", "num_filler_tokens", "--out", str(tmp_path / "bad.png")])
    with pytest.raises(SystemExit, match="--task-sweep must look like"):
        main(["eval", str(run), "--task-sweep", "num_pairs", "--out", str(tmp_path / "bad.json")])


def test_gradient_checkpointing_trains_the_same(tmp_path):
    for name, extra in (("plain", []), ("ckpt", ["--grad-checkpointing"])):
        main(["train", *RECALL, "--steps", "4", "--log-every", "1", "--out", str(tmp_path / name), *extra])
    assert _losses(tmp_path / "ckpt") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-6)


def test_torch_compile_trains_the_same(tmp_path):
    """--compile (torch.compile, inductor) gives the eager losses; ~2 min on CPU with a cold compile cache."""
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        main(["train", *RECALL, "--steps", "3", "--log-every", "1", "--out", str(tmp_path / name), *extra])
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-5)


def test_language_model_pipeline(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "lm"
    main(["prepare", "--source", "sample", "--out", str(data), "--vocab-size", "512", "--heldout-long-docs", "0",
          "--heldout-fraction", "0.4"])
    main(["train", "--task", "lm", "--data", str(data), "--size", "tiny", "--seq-len", "64", "--batch-size", "4",
          "--steps", "12", "--lr", "3e-3", "--warmup", "2", "--precision", "fp32", "--log-every", "4", "--no-progress",
          "--model-arg", "window_size=16", "--model-arg", "chunk_size=16", "--out", str(run)])
    losses = _losses(run)
    assert losses[-1] < losses[0]
    out = tmp_path / "pos.json"
    main(["eval", str(run), "--loss-by-position", "--max-len", "200", "--out", str(out)])
    row = json.loads(out.read_text())["results"][0]
    assert row["block"] == 1024 and len(row["loss"]) == 1 and row["tokens"][0] == 200
    capsys.readouterr()
    main(["generate", str(run), "--prompt", "It is", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("It is")


def test_init_from_continues_another_runs_weights_at_a_new_length(tmp_path, capsys):
    import torch

    from ovq.train.checkpoint import load_checkpoint
    first, second = tmp_path / "t64", tmp_path / "t128"
    main(["train", *RECALL, "--steps", "10", "--out", str(first)])
    # a second stage at twice the length; a vanishing lr keeps the weights where the first run left them
    stage2 = [*RECALL, "--seq-len", "128", "--steps", "1", "--lr", "1e-12", "--warmup", "0"]
    main(["train", *stage2, "--init-from", str(first), "--out", str(second)])
    assert "initialized from" in capsys.readouterr().out
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert b["step"] == 1 and b["extra"]["init_from"]["job"]["seq_len"] == 64
    assert b["extra"]["job"]["seq_len"] == 128
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=1e-9)
    # rerun: the stage resumes from its own checkpoint instead of reloading the first run's weights
    main(["train", *stage2[:-4], "--steps", "2", "--lr", "1e-12", "--init-from", str(first), "--out", str(second)])
    out = capsys.readouterr().out
    assert "resumed from" in out and "initialized from" not in out
    # weights of another architecture fail naming the cause
    with pytest.raises(SystemExit):
        main(["train", *RECALL, "--model-arg", "max_centroids=32", "--size", "small", "--steps", "1",
              "--init-from", str(first), "--out", str(tmp_path / "other")])
    assert "another model" in capsys.readouterr().err


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--task", "lm", "--out", str(tmp_path / "x")])  # no --data
    assert "needs data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "missing")])
    assert "no checkpoint" in capsys.readouterr().err


def test_two_process_data_parallel_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) at global batch 8 = one process at batch 8, step by step: DDP, and
    FSDP2 stopped at step 3 and resumed from its checkpoint (full state dicts gathered and restored).

    One test, run in order: two torchruns at once can race for the same free port."""
    common = [*RECALL, "--steps", "6", "--log-every", "1", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    _run([sys.executable, "-m", "ovq.cli", "train", *common, "--out", str(tmp_path / "one")], env)
    reference = _losses(tmp_path / "one")
    two_args = [a if a != "8" or common[i - 1] != "--batch-size" else "4" for i, a in enumerate(common)]

    def launch(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ovq.cli",
                "train", *two_args, "--out", str(out)]

    _run(launch(tmp_path / "ddp"), env)
    _run([*launch(tmp_path / "fsdp"), "--fsdp", "--stop-at", "3"], env)
    assert len(_losses(tmp_path / "fsdp")) == 3
    assert "resumed from" in _run([*launch(tmp_path / "fsdp"), "--fsdp"], env).stdout
    for mode in ("ddp", "fsdp"):
        losses = _losses(tmp_path / mode)
        assert len(losses) == len(reference) == 6
        assert max(abs(x - y) for x, y in zip(losses, reference)) < 1e-4, mode


def test_deployment_knobs_reach_every_dictionary_layer():
    from ovq.models import OVQForCausalLM, preset_config
    from ovq.train.jobs import set_chunk_size, set_max_centroids

    model = OVQForCausalLM(preset_config("swa-ovq", "tiny", vocab_size=32, num_layers=4, chunk_size=8))
    assert set_chunk_size(model, 16) == 2 and set_max_centroids(model, 64) == 2
    layers = [block.mixer for block in model.model.layers if hasattr(block.mixer, "max_centroids")]
    assert [(m.chunk_size, m.max_centroids) for m in layers] == [(16, 64), (16, 64)]
    assert (model.config.chunk_size, model.config.max_centroids) == (16, 64)
    assert set_chunk_size(OVQForCausalLM(preset_config("swa", "tiny", vocab_size=32)), 16) == 0
    with pytest.raises(ValueError, match="chunk_size"):
        set_chunk_size(model, 0)


def test_fill_length_gives_each_budget_the_rate_that_fills_it_there():
    from ovq.models import OVQForCausalLM
    from ovq.models.presets import preset_config
    from ovq.train.jobs import set_fill_length, set_max_centroids

    model = OVQForCausalLM(preset_config("swa-ovq", "tiny", vocab_size=32, max_centroids=64))
    layers = [block.mixer for block in model.model.layers if hasattr(block.mixer, "max_centroids")]
    assert set_fill_length(model, 1024) == len(layers) == 1
    assert [(m.growth, m.growth_rate) for m in layers] == [("linear", 64 / 1024)]
    set_max_centroids(model, 256)
    set_fill_length(model, 1024)  # after a new N: the rate follows it
    assert [m.growth_rate for m in layers] == [0.25] and model.config.growth_rate == 0.25
    assert model.config.growth == "linear"
    assert set_fill_length(OVQForCausalLM(preset_config("swa", "tiny", vocab_size=32)), 1024) == 0


def test_plot_dashes_evaluation_variants_only():
    """A row evaluated with other settings (growth, chunk size) is a dashed line in its run's color; Mamba2's SSD
    block size (memory only) is not a variant."""
    from ovq.cli.main import _line_label, _line_style
    growth = {"max_centroids": None, "model_args": {"growth": "linear", "growth_rate": 0.0625}}
    ssd = {"max_centroids": None, "model_args": {"mamba2_chunk_size": 256}}
    chunk = {"max_centroids": 4096, "chunk_size": 256}
    assert _line_style([growth], "C1", True) == {"color": "C1", "linestyle": "--", "marker": "s"}
    assert _line_style([chunk], "C1", False, 1) == {"color": "C1", "linestyle": "--", "marker": "^"}  # a 2nd variant
    assert _line_style([ssd], "C2", True) == {"color": "C2", "marker": "o"}
    assert _line_style([ssd], "C2", False) == {"marker": "o"}  # one run's several lines: their own colors
    # several runs in one figure (e.g. the capacity sweep at two lengths): a run's lines keep its color
    assert _line_style([ssd], "C2", False, 1, shared=True) == {"color": "C2", "linestyle": ":", "marker": "o"}
    assert _line_label(growth, "m") == "m growth=linear growth_rate=0.0625"
    assert _line_label(ssd, "mamba2") == "mamba2" and _line_label(chunk, "m") == "m N=4096 chunk_size=256"
