"""The block-step benchmark: its kernels compile for sm_90 on any machine; on a GPU each Gluon kernel computes
what its Triton twin does."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")


def _compile_only(tmp_path) -> dict:
    """``--compile-only`` in a process without Triton's interpreter (the tests run under it, which cannot compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; from ovq.bench.block_step import main; "
            "json.dump(main(['--compile-only']), open(sys.argv[1], 'w'))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.json")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gluon   sm_90" in proc.stdout
    return json.loads((tmp_path / "out.json").read_text())


def test_every_kernel_compiles_for_sm90_and_gluon_waits_less(tmp_path):
    payload = _compile_only(tmp_path)
    assert "rows" not in payload  # nothing timed without a GPU
    from ovq.bench.block_step import TRITON_TWIN_OF

    compiled = payload["compiled_sm90"]
    assert set(compiled) == {"step", "resident", "shared_g"}
    for design, kernels in compiled.items():
        # the same five products (as warpgroup instructions), but fewer waits for them: what the Gluon kernels are for;
        # shared_g has no Triton kernel (Triton cannot index shared memory): it is held to the step's
        assert ("triton" in kernels) == (design not in TRITON_TWIN_OF), design
        triton_twin = compiled[TRITON_TWIN_OF.get(design, design)]["triton"]
        assert triton_twin["wgmma"] == kernels["gluon"]["wgmma"] > 0, design
        assert 0 < kernels["gluon"]["wgmma_waits"] < triton_twin["wgmma_waits"], design
    # its G blocks fit beside the operands on an H200 (232,448 B of shared memory per block)
    assert compiled["step"]["gluon"]["shared_bytes"] < compiled["shared_g"]["gluon"]["shared_bytes"] <= 232_448


@pytest.mark.parametrize("arg", ["--programs", "--iterations"])
def test_counts_below_one_are_refused_by_name(arg, capsys):
    from ovq.bench import block_step

    with pytest.raises(SystemExit):
        block_step.main([arg, "0", "--compile-only"])
    assert f"{arg} must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gluon_kernels_match_their_triton_twins():
    """Each Gluon kernel against its Triton twin; shared_g against the step's, its G summed over shared blocks."""
    from ovq.bench import block_step

    result = block_step.check_and_time(programs=4, iterations=6)  # shared_g: blocks 0 and 1 take two iterations each
    assert set(result["gluon_vs_triton"]) == set(block_step.KERNELS)
    for design, errors in result["gluon_vs_triton"].items():
        assert all(err < 2e-2 for err in errors.values()), (design, errors)
