"""``python -m ovq.bench.ops`` plumbing on CPU (the timings themselves need a GPU): a run stopped partway
keeps the rows it measured, marked unfinished."""

import json

import pytest
import torch

import ovq.bench.ops as ops


def test_a_stopped_run_keeps_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "environment", lambda: {"gpu": "none (test)"})

    def bench(*args, on_row, **kwargs):  # two rows measured, then the time limit
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


def test_the_table_shows_the_detached_overhead_only_when_measured():
    rows = [{"op": "ovq", "D": 64, "T": 4096, "N": 4096, "fwd_ms": 2.0, "fwd_bwd_ms": 6.0},
            {"op": "vq", "D": 64, "T": 4096, "N": 4096, "fwd_ms": 2.0, "fwd_bwd_ms": 5.0},
            {"op": "sdpa", "D": 64, "T": 4096, "fwd_ms": 1.0, "fwd_bwd_ms": 3.0}]
    header, line = ops.table(rows).splitlines()
    assert "det upd%" not in header and line.split()[8] == "20.00"  # upd%: 6 / 5 - 1
    rows += [{"op": "ovq_detached", "D": 64, "T": 4096, "N": 4096, "fwd_ms": 2.0, "fwd_bwd_ms": 5.5},
             {"op": "vq_detached", "D": 64, "T": 4096, "N": 4096, "fwd_ms": 2.0, "fwd_bwd_ms": 5.0}]
    header, line = ops.table(rows).splitlines()
    assert header.split()[-1] == "upd%" and header.split()[-2] == "det" and line.split()[-1] == "10.00"


def test_a_stopped_check_keeps_its_cases_and_takes_only_the_dtypes_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "environment", lambda: {"gpu": "none (test)"})
    asked = []

    def check(dtypes, on_row):  # one case checked, then the time limit
        asked.append(dtypes)
        on_row([{"T": 4096, "dtype": "bfloat16", "o_rel": 4e-3}])
        raise KeyboardInterrupt
    monkeypatch.setattr(ops, "check", check)
    out = tmp_path / "check.json"
    with pytest.raises(KeyboardInterrupt):
        ops.main(["--check", "--check-dtypes", "bfloat16", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert asked == [["bfloat16"]] and saved["unfinished"] is True and saved["check"][0]["o_rel"] == 4e-3


def test_a_bad_check_dtype_is_named(capsys):
    with pytest.raises(SystemExit):
        ops.main(["--check", "--check-dtypes", "float16"])
    assert "--check-dtypes: float32 and/or bfloat16, not 'float16'" in capsys.readouterr().err


def test_decode_rounds_below_one_are_an_error(capsys):
    with pytest.raises(SystemExit):
        ops.main(["--decode-only", "--decode-rounds", "0"])
    assert "--decode-rounds must be at least 1, got 0" in capsys.readouterr().err


def test_decode_lines_show_the_median_the_fastest_and_the_gpu_time():
    row = {"backend": "triton", "context": 4096, "active_centroids": 2048, "ms_per_token": 0.105,
           "ms_per_token_min": 0.098, "ms_per_token_rounds": [0.098, 0.105, 0.175], "gpu_ms_per_token": 0.0139,
           "state_bytes": 33.25 * 2**20, "max_abs_diff_vs_torch": 2.4e-4}
    torch_row = row | {"backend": "torch", "gpu_ms_per_token": None}
    triton_line, torch_line = ops.decode_lines([row, torch_row])
    assert "0.105 ms/token, fastest 0.098 (rounds 0.098/0.105/0.175, GPU 13.9 us) state 33.25 MiB" in triton_line
    assert "GPU" not in torch_line and torch_line.startswith("decode  torch ctx=    4096 m= 2048")
