"""``python -m ovq.bench.ab`` on CPU: the kernels run in Triton's interpreter and a stand-in timer records which
settings were in force, so the alternation, the check and the restoring of the settings are tested without a GPU."""

import pytest
import torch

import ovq.bench.ab as ab
import ovq.ops.triton_chunk as tc


def _run(a, b, rounds=2):
    seen = []

    def timer(fn):  # runs the timed function once and records the setting it ran under
        fn()
        seen.append(tc.BWD_CACHED_OPERANDS)
        return 1.0 + len(seen)
    rows = ab.run([48], a, b, tokens=48, heads=2, head_dim=16, centroids=24, chunk=16, rounds=rounds, device="cpu",
                  dtype=torch.float32, timer=timer)
    return rows, seen


def test_settings_alternate_and_are_restored_and_the_check_compares_both():
    rows, seen = _run({}, {"BWD_CACHED_OPERANDS": False})
    assert tc.BWD_CACHED_OPERANDS is True  # restored
    assert [r["kind"] for r in rows] == ["check"] + ["time"] * 4
    assert [(r["setting"], r["round"]) for r in rows[1:]] == [("A", 0), ("B", 0), ("A", 1), ("B", 1)]
    assert seen == [True, True, False, False] * 2  # (forward, then forward+backward, per row)
    check = rows[0]
    # the cached and uncached backwards are one function in float32: the interpreter gives the same gradients
    assert all(check[f"d{x}_rel"] <= 1e-6 and check[f"d{x}_rel_a_twice"] == 0.0 for x in "qkv")
    assert check["o_rel"] == 0.0 and check["count_slots_differing"] == 0


def test_the_check_sees_a_setting_that_changes_the_function(monkeypatch):
    monkeypatch.setattr(tc, "OUTPUT_SCALE", 1.0, raising=False)  # a setting the stand-in op obeys

    class State:
        count = torch.zeros(3)

    def op(q, k, v, final_state=False):
        o = (q * k).sum(-1, keepdim=True) * v * tc.OUTPUT_SCALE
        return (o, State()) if final_state else o
    inputs = tuple(torch.randn(1, 8, 2, 4, requires_grad=True) for _ in range(3))
    row = ab.check(op, inputs, torch.randn(1, 8, 2, 4), {}, {"OUTPUT_SCALE": 2.0})
    assert row["o_rel"] == pytest.approx(1.0)
    assert row["dv_rel_a_twice"] == 0.0
    assert tc.OUTPUT_SCALE == 1.0


def test_the_table_puts_b_over_a():
    rows = [{"kind": "check", "T": 4096}]
    for rnd, (fa, fba, fb, fbb) in enumerate([(2.0, 10.0, 1.0, 9.0), (2.0, 12.0, 1.0, 11.0)]):
        rows += [{"kind": "time", "T": 4096, "B": 16, "setting": "A", "round": rnd, "fwd_ms": fa, "fwd_bwd_ms": fba},
                 {"kind": "time", "T": 4096, "B": 16, "setting": "B", "round": rnd, "fwd_ms": fb, "fwd_bwd_ms": fbb}]
    header, line = ab.table(rows).splitlines()
    cells = line.split()
    assert cells[:4] == ["4096", "16", "2.00", "1.00"] and cells[4] == "-50.0%"
    assert cells[5:8] == ["11.00", "10.00", "-9.1%"] and cells[8:] == ["10.00-12.00", "9.00-11.00"]


@pytest.mark.parametrize("argv, message", [
    (["--b"], "expected at least one argument"),
    (["--b", "NOT_A_SETTING=1"], "NAME a setting of ovq.ops.triton_chunk"),
    (["--a", "BWD_CACHED_OPERANDS=False", "--b", "BWD_CACHED_OPERANDS=False"], "the same settings"),
    (["--b", "BWD_CACHED_OPERANDS=False", "--rounds", "0"], "--rounds must be at least 1"),
    (["--b", "BWD_CACHED_OPERANDS=False", "--heads", "0"], "--heads must be at least 1"),
    (["--b", "BWD_CACHED_OPERANDS=False", "--seq-lens", "4k"], "--seq-lens must be comma-separated integers"),
    (["--b", "BWD_CACHED_OPERANDS=False", "--seq-lens", "4096,0"], "--seq-lens must be at least 1"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        ab.main(argv)
    assert message in capsys.readouterr().err


def test_without_a_gpu_it_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        ab.main(["--b", "BWD_CACHED_OPERANDS=False"])
    assert "no GPU here" in capsys.readouterr().err
