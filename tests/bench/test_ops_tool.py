"""``python -m ovq.bench.ops`` plumbing on CPU (the timings themselves need a GPU): a run stopped partway
keeps the rows it measured, marked unfinished."""

import json

import pytest
import torch

import ovq.bench.ops as ops


def test_a_stopped_run_keeps_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "environment", lambda: {"gpu": "none (test)"})

    def bench(*args, on_row):  # two rows measured, then the time limit
        rows = []
        for t in (2048, 4096):
            rows.append({"op": "ovq", "T": t, "fwd_bwd_ms": 1.0})
            on_row(rows)
        raise KeyboardInterrupt
    monkeypatch.setattr(ops, "bench", bench)
    out = tmp_path / "ops.json"
    with pytest.raises(KeyboardInterrupt):
        ops.main(["--no-check", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["unfinished"] is True and [r["T"] for r in saved["results"]] == [2048, 4096]
    assert saved["args"]["out"] == str(out) and saved["environment"] == {"gpu": "none (test)"}
