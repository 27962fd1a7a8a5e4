"""``python -m ovq.experiments`` end to end on CPU with the smoke profile (the pipeline, not the science)."""

import json

import pytest

from ovq.experiments import LM_PROFILES, PROFILES, report, run
from tests.data_helpers import prepare_sample


def test_smoke_recall_pipeline(tmp_path):
    summary = run("recall", "smoke", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
                  device="cpu")["recall"]
    out = tmp_path / "results" / "recall"
    assert (out / "accuracy_vs_length.png").exists() and (out / "budget_sweep.png").exists()
    table = (out / "table.md").read_text()
    for label in PROFILES["smoke"].models:
        assert f"| {label} |" in table
    assert summary["models"]["swa"]["environment"]["commit"]  # each result says where it was measured
    budgets = json.loads((out / "swa-ovq-1024-budgets.json").read_text())["results"]
    assert sorted({r["max_centroids"] for r in budgets}) == PROFILES["smoke"].budgets
    # the capacity sweep: every model at each (length, number of pairs), in a plot and a second table
    sweep = json.loads((out / "swa-sweep.json").read_text())["results"]
    assert [(r["length"], r["task_args"]["num_pairs"]) for r in sweep] == [(64, 4), (64, 8), (128, 4), (128, 8)]
    assert all(r["task_args"]["num_queries"] == 4 for r in sweep)  # the evaluation settings still apply
    assert (out / "accuracy_vs_num_pairs.png").exists()
    assert "| model | num_pairs=4 @ 64 | num_pairs=8 @ 64 | num_pairs=4 @ 128 | num_pairs=8 @ 128 |" in table
    sizes = {m: info["state_at"] for m, info in summary["models"].items()}
    assert sizes["swa-attn"]["bytes_per_token"] > 0  # a KV cache grows
    assert sizes["swa-ovq-1024"]["bytes_per_token"] == 0 == sizes["swa"]["bytes_per_token"]  # flat caches
    # Rerunning finds everything done and only rebuilds the summary.
    again = run("recall", "smoke", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
                device="cpu")["recall"]
    assert again["models"].keys() == summary["models"].keys() and not again["missing"]


def test_parallel_queue_stops_at_the_deadline_and_a_rerun_finishes(tmp_path):
    """Two jobs in subprocesses on two 'devices'; a deadline stops them (SIGTERM) and the report lists them as
    unfinished; the same command again finishes both from where they stopped."""
    kw = dict(models=["swa-ovq-1024", "swa"], runs_root=str(tmp_path / "runs"),
              results_root=str(tmp_path / "results"), devices=["cpu", "cpu"])
    cut = run("recall", "smoke", deadline=1.0, **kw)["recall"]
    assert sorted(cut["missing"]) == ["swa", "swa-ovq-1024"]
    done = run("recall", "smoke", **kw)["recall"]
    assert sorted(done["models"]) == ["swa", "swa-ovq-1024"] and not done["missing"]
    assert "| swa-ovq-1024 |" in (tmp_path / "results" / "recall" / "table.md").read_text()
    log = (tmp_path / "runs" / "recall" / "swa.log").read_text()
    assert '"step": 40' in log


def test_deadline_stops_a_single_device_run_too(tmp_path):
    """With one device the jobs still run in subprocesses under a deadline, so an evaluation cannot run past it."""
    kw = dict(models=["swa"], runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"), device="cpu")
    assert run("recall", "smoke", deadline=0.5, **kw)["recall"]["missing"] == ["swa"]
    assert (tmp_path / "runs" / "recall" / "swa.log").exists()  # it ran as a queued subprocess
    assert not run("recall", "smoke", **kw)["recall"]["missing"]


def test_smoke_lm_pipeline(tmp_path):
    prepare_sample(tmp_path / "data")
    summary = run("lm", "smoke", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
                  device="cpu", data=str(tmp_path / "data"))["lm"]
    out = tmp_path / "results" / "lm"
    assert (out / "loss_by_position.png").exists() and (out / "budget_sweep.png").exists()
    rows = json.loads((out / "swa-ovq-4096.json").read_text())["results"]
    assert rows[0]["block"] == 64 and sum(rows[0]["tokens"]) == 200 * rows[0]["documents"]
    table = (out / "table.md").read_text()
    assert "| swa-attn |" in table and "+0.00%" in table  # the reference row
    # an eval variant (the growth rule) for the OVQ model only, compared with attention's plain evaluation
    variant = json.loads((out / "swa-ovq-4096-linear.json").read_text())["results"]
    assert variant[0]["model_args"] == {"growth": "linear", "growth_rate": 0.25} and variant[0]["block"] == 64
    assert not (out / "swa-attn-linear.json").exists()
    assert table.count("| swa-ovq-4096 |") == 2 and "growth = linear, growth_rate = 0.25" in table
    assert summary["models"]["swa"]["state_at"]["bytes_per_token"] == 0
    # results from before the profile had a variant: the model is still reported, without that evaluation
    (out / "swa-ovq-4096-linear.json").unlink()
    again = report("lm", "smoke", LM_PROFILES["smoke"].models, str(tmp_path / "results"))
    assert "swa-ovq-4096" in again["models"] and again["incomplete"] == {"swa-ovq-4096": ["linear"]}
    table = (out / "table.md").read_text()
    assert table.count("| swa-ovq-4096 |") == 1 and "Not evaluated: swa-ovq-4096 (linear)." in table


def test_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        run("sorting", "smoke")
    with pytest.raises(ValueError, match="unknown model"):
        run("recall", "smoke", models=["transformer-xl"])
    with pytest.raises(ValueError, match="unknown model"):
        run("lm", "smoke", models=["swa-vq-1024"])  # not in the LM comparison
    with pytest.raises(ValueError, match="profile must be one of"):
        run("recall", "a100")


def test_profile_overrides_apply_to_every_task_or_one():
    from ovq.experiments import profile_of
    overrides = {"steps": 7, "recall.seq_len": 256, "lm.steps": 9}
    assert (profile_of("recall", "h200", overrides).seq_len, profile_of("recall", "h200", overrides).steps) == (256, 7)
    assert profile_of("linear_regression", "h200", overrides).seq_len == PROFILES["h200"].seq_len
    assert profile_of("lm", "h200", overrides).steps == 9
    # a profile's per-task settings apply to their task only, and --set still wins
    assert profile_of("recall", "h200-t256").task_args["num_pairs"] == 16
    assert profile_of("positional_recall", "h200-t256").task_args["num_occurrences"] == 2
    assert profile_of("linear_regression", "h200-t256").task_args == {"dim": 8}
    assert profile_of("linear_regression", "h200-t256").steps == 5000 != profile_of("recall", "h200-t256").steps
    assert profile_of("recall", "h200-t256", {"recall.task_args": {"num_pairs": 4}}).task_args == {"num_pairs": 4}
    with pytest.raises(ValueError, match="unknown profile field"):
        profile_of("recall", "h200", {"stpes": 1})
    with pytest.raises(ValueError, match="unknown task"):
        profile_of("recall", "h200", {"sorting.steps": 1})


def test_a_job_on_gpu_i_sees_only_that_gpu_as_cuda_0():
    from ovq.experiments import _job_device
    assert _job_device("cuda:3") == ({"CUDA_VISIBLE_DEVICES": "3"}, "cuda:0")
    assert _job_device("cpu") == ({}, "cpu")


def test_two_stage_training_and_evaluation_at_another_chunk_size(tmp_path):
    """warm_start trains a first stage (here shorter sequences) and continues from its weights; models with
    OVQ/VQ layers are also scored at each of eval_chunk_sizes, and the table shows it."""
    from ovq.train import load_checkpoint
    # the second stage also trains at another chunk size (the weights do not depend on it)
    overrides = {"warm_start": {"seq_len": 32, "steps": 10, "model_args": {"window_size": 8, "chunk_size": 8}},
                 "model_args": {"window_size": 8, "chunk_size": 16}, "eval_chunk_sizes": [32], "steps": 6,
                 "eval_variants": {"linear": {"growth": "linear", "growth_rate": 0.25}, "fill": {"fill_length": 128}}}
    summary = run("recall", "smoke", models=["swa-ovq-1024", "swa"], runs_root=str(tmp_path / "runs"),
                  results_root=str(tmp_path / "results"), device="cpu", overrides=overrides)["recall"]
    runs, out = tmp_path / "runs" / "recall", tmp_path / "results" / "recall"
    first, second = load_checkpoint(runs / "swa-ovq-1024-stage1"), load_checkpoint(runs / "swa-ovq-1024")
    assert (first["step"], first["extra"]["job"]["seq_len"]) == (10, 32)
    assert (second["step"], second["extra"]["job"]["seq_len"]) == (6, 64)
    assert first["extra"]["job"]["model_args"] == {"window_size": 8, "chunk_size": 8, "max_centroids": 1024}
    assert second["extra"]["job"]["model_args"]["chunk_size"] == 16
    assert second["extra"]["init_from"]["path"] == str(runs / "swa-ovq-1024-stage1")
    rows = json.loads((out / "swa-ovq-1024-chunk32.json").read_text())["results"]
    assert all(r["model_args"] == {"chunk_size": 32} for r in rows) and len(rows) == len(PROFILES["smoke"].eval_lengths)
    assert not (out / "swa-chunk32.json").exists() and "chunk32" not in summary["models"]["swa"]
    # another deployment setting (the growth rule), the same weights
    rows = json.loads((out / "swa-ovq-1024-linear.json").read_text())["results"]
    assert all(r["model_args"] == {"growth": "linear", "growth_rate": 0.25} for r in rows)
    assert not (out / "swa-linear.json").exists()
    # linear growth that fills each N at a length (ovq eval --fill-length), recorded with the rows
    rows = json.loads((out / "swa-ovq-1024-fill.json").read_text())["results"]
    assert all(r["fill_length"] == 128 and "model_args" not in r for r in rows)
    table = (out / "table.md").read_text()
    # rows: lengths, chunk 32 and the two growth variants (OVQ only), the capacity sweep (every model)
    assert table.count("| swa-ovq-1024 |") == 5 and table.count("| swa |") == 2
    assert "Evaluated with fill_length = 128 (`fill`" in table
    assert "Evaluated with chunk_size = 32 (`chunk32`" in table and "growth = linear, growth_rate = 0.25" in table


def test_growth_variants_apply_to_ovq_models_and_chunk_variants_to_vq_too(tmp_path):
    """A VQ model has no growth rule: a growth variant gives it no result file (its evaluation used to fail on
    `--fill-length` and leave the job unfinished), while a chunk-size variant does."""
    from ovq.experiments import profile_of, result_files
    profile = profile_of("recall", "smoke", {"eval_chunk_sizes": [32], "eval_variants": {
        "fill": {"fill_length": 128}, "linear": {"growth": "linear", "growth_rate": 0.25}}})
    names = {label: set(result_files(tmp_path, label, profile, "recall")) - {"lengths", "state", "budgets", "sweep"}
             for label in ("swa-ovq-1024", "swa-vq-1024", "swa")}
    assert names == {"swa-ovq-1024": {"chunk32", "fill", "linear"}, "swa-vq-1024": {"chunk32"}, "swa": set()}


def test_warm_start_must_name_profile_fields():
    from ovq.experiments import profile_of
    with pytest.raises(ValueError, match="warm_start may set profile fields"):
        profile_of("recall", "smoke", {"warm_start": {"sequence_length": 32}})
    with pytest.raises(ValueError, match=r"eval_overrides\['swa'\].*divides the 4 evaluation sequences"):
        profile_of("recall", "smoke", {"eval_overrides": {"swa": {"batch_size": 3}}})
    with pytest.raises(ValueError, match=r"eval_overrides\['swa'\]"):
        profile_of("recall", "smoke", {"eval_overrides": {"swa": {"batches": 2}}})
    with pytest.raises(ValueError, match=r"train_flags\['mamba2'\] must be a list"):
        profile_of("recall", "smoke", {"train_flags": {"mamba2": "--compile"}})
    with pytest.raises(ValueError, match="needs sweep_lengths"):
        profile_of("recall", "smoke", {"eval_sweeps": {"num_pairs": [4]}, "sweep_lengths": []})
    with pytest.raises(ValueError, match="non-empty list of values"):
        profile_of("recall", "smoke", {"eval_sweeps": {"num_pairs": 4}})
    for bad in ({"Chunk-1": {"chunk_size": 8}}, {"sweep": {"chunk_size": 8}}, {"linear": {}}):
        with pytest.raises(ValueError, match="eval_variants"):
            profile_of("recall", "smoke", {"eval_variants": bad})
    for fill in (0, 1.5, "64k"):  # checked before any training, not when the evaluation runs
        with pytest.raises(ValueError, match="fill_length must be a number of tokens >= 1"):
            profile_of("recall", "smoke", {"eval_variants": {"fill": {"fill_length": fill}}})
    with pytest.raises(ValueError, match="eval_chunk_sizes must be chunk sizes >= 1"):
        profile_of("recall", "smoke", {"eval_chunk_sizes": [0]})
    assert profile_of("recall", "h200-t4096").warm_start["steps"] == 3000
    regression = profile_of("linear_regression", "h200-t4096")  # d = 20, the curriculum in the first stage only
    assert (regression.task_args, regression.warm_start["steps"]) == ({"dim": 20}, 6000)
    assert regression.warm_start["task_args"]["curriculum_start_dim"] == 4


def test_per_model_evaluation_settings(tmp_path):
    """eval_overrides: a model evaluated with settings that keep its weights (fla's Mamba2 on its PyTorch path
    needs large blocks, one sequence at a time), on as many sequences as the others."""
    overrides = {"eval_overrides": {"swa": {"model_args": {"window_size": 4}, "batch_size": 2}}}
    run("recall", "smoke", models=["swa"], runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
        device="cpu", overrides=overrides)
    rows = json.loads((tmp_path / "results" / "recall" / "swa.json").read_text())["results"]
    smoke = PROFILES["smoke"]
    assert {(r["batch_size"], r["batches"]) for r in rows} == {(2, smoke.eval_batches * smoke.eval_batch_size // 2)}
    assert all(r["model_args"] == {"window_size": 4} for r in rows)
    assert PROFILES["h200-t4096"].eval_overrides["mamba2"]["model_args"] == {"mamba2_chunk_size": 256}


def test_the_two_layer_attention_baseline_joins_only_the_new_profile():
    from ovq.experiments import MODELS
    assert MODELS["swa-attn-2l"] == ("swa-attn", {"num_layers": 2})
    assert "swa-attn-2l" in PROFILES["h200-t4096"].models
    assert "swa-attn-2l" not in PROFILES["h200-t256"].models  # the published recipe keeps its model list


def test_per_model_training_flags(tmp_path, monkeypatch):
    """train_flags reach `ovq train` for that model only (e.g. --compile for fla's slow Mamba2 path)."""
    import ovq.cli.main as cli
    calls = []
    real = cli.main
    monkeypatch.setattr(cli, "main", lambda argv: (calls.append(list(argv)), real(argv))[1])
    overrides = {"train_flags": {"swa": ["--grad-clip", "0.5"]}}
    for label in ("swa", "swa-attn"):
        run("recall", "smoke", models=[label], runs_root=str(tmp_path / "runs"),
            results_root=str(tmp_path / "results"), device="cpu", overrides=overrides)
    trains = {c[c.index("--model") + 1]: c for c in calls if c[0] == "train"}
    assert trains["swa"][-2:] == ["--grad-clip", "0.5"] and "0.5" not in trains["swa-attn"]


def test_a_job_that_ran_out_of_gpu_memory_is_queued_once_more(tmp_path, monkeypatch, capsys):
    """A neighbour's evaluation can crowd a job out of GPU memory: it runs once more at the end of the queue.
    Other failures, and a second out-of-memory, are final."""
    import sys

    import ovq.experiments as ex

    script = """
import pathlib, sys
label, marker = sys.argv[1], pathlib.Path(sys.argv[2])
runs = int(marker.read_text()) + 1 if marker.exists() else 1
marker.write_text(str(runs))
if label == "flaky":       # out of memory the first time only
    sys.exit(0 if runs > 1 else (print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB") or 1))
if label == "broken":      # another error: not retried
    sys.exit(print("ValueError: bad") or 1)
sys.exit(print("torch.OutOfMemoryError: CUDA out of memory") or 1)   # "hungry": out of memory every time
"""
    monkeypatch.setattr(ex, "_job_argv", lambda task, label, *a: [sys.executable, "-c", script, label,
                                                                   str(tmp_path / f"{label}.runs")])
    jobs = [("recall", "flaky"), ("recall", "broken"), ("recall", "hungry")]
    codes = ex.run_parallel(jobs, "smoke", ["cpu"], runs_root=str(tmp_path / "runs"))
    assert codes == {("recall", "flaky"): 0, ("recall", "broken"): 1, ("recall", "hungry"): 1}
    runs = {label: int((tmp_path / f"{label}.runs").read_text()) for _, label in jobs}
    assert runs == {"flaky": 2, "broken": 1, "hungry": 2}
    assert capsys.readouterr().out.count("out of GPU memory: queued once more") == 2
