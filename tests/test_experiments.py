"""``python -m ovq.experiments`` end to end on CPU with the smoke profile (the pipeline, not the science)."""

import json

import pytest

from ovq.experiments import PROFILES, run


def test_smoke_recall_pipeline(tmp_path):
    summary = run("recall", "smoke", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
                  device="cpu")
    out = tmp_path / "results" / "recall"
    assert (out / "accuracy_vs_length.png").exists() and (out / "budget_sweep.png").exists()
    table = (out / "table.md").read_text()
    for label in PROFILES["smoke"].models:
        assert f"| {label} |" in table
    budgets = json.loads((out / "swa-ovq-1024-budgets.json").read_text())["results"]
    assert sorted({r["max_centroids"] for r in budgets}) == PROFILES["smoke"].budgets
    sizes = {m: info["state_at"] for m, info in summary["models"].items()}
    assert sizes["swa-attn"]["bytes_per_token"] > 0  # a KV cache grows
    assert sizes["swa-ovq-1024"]["bytes_per_token"] == 0 == sizes["swa"]["bytes_per_token"]  # flat caches
    # Rerunning finds everything done and only rebuilds the summary.
    again = run("recall", "smoke", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"),
                device="cpu")
    assert again["models"].keys() == summary["models"].keys()


def test_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        run("sorting", "smoke")
    with pytest.raises(ValueError, match="unknown model"):
        run("recall", "smoke", models=["transformer-xl"])
