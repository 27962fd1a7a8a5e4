import pytest
import torch

from ovq.bench import profile_op


def test_passes_run_forward_and_backward_through_the_op(monkeypatch):
    calls = []
    real = profile_op.ovq_attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(profile_op, "ovq_attention", counting)
    profile_op.run_passes(1, 37, 2, 8, 16, 16, passes=2, dtype=torch.float32, device="cpu", backend="torch")
    assert [c["chunk_size"] for c in calls] == [16, 16]
    assert all(c["max_centroids"] == 16 and c["backend"] == "torch" for c in calls)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_the_cli_says_it_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        profile_op.main(["--seq-len", "64"])


def test_a_bad_shape_is_an_error_naming_it(capsys):
    with pytest.raises(SystemExit):
        profile_op.main(["--passes", "0"])
    assert "--passes must be >= 1, got 0" in capsys.readouterr().err


def test_kernel_times_are_per_kernel_largest_first():
    rows = profile_op.kernel_times(lambda: profile_op.run_passes(1, 37, 2, 8, 16, 16, passes=1, dtype=torch.float32,
                                                                 device="cpu", backend="torch"), device="cpu")
    assert rows and all(r["ms"] > 0 and r["launches"] >= 1 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert any("mm" in r["kernel"] or "bmm" in r["kernel"] for r in rows)
