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
    assert set(compiled) == {"step", "resident", "shared_g", "shared_gv"}
    for design, kernels in compiled.items():
        # the same five products (as warpgroup instructions), but fewer waits for them: what the Gluon kernels are for;
        # shared_g and shared_gv have no Triton kernel (Triton cannot index shared memory): they are held to the step's
        assert ("triton" in kernels) == (design not in TRITON_TWIN_OF), design
        triton_twin = compiled[TRITON_TWIN_OF.get(design, design)]["triton"]
        assert triton_twin["wgmma"] == kernels["gluon"]["wgmma"] > 0, design
        assert 0 < kernels["gluon"]["wgmma_waits"] < triton_twin["wgmma_waits"], design
    # their G blocks fit beside the operands on an H200 (232,448 B of shared memory per block)
    for design in ("shared_g", "shared_gv"):
        assert compiled["step"]["gluon"]["shared_bytes"] < compiled[design]["gluon"]["shared_bytes"] <= 232_448


@pytest.mark.parametrize("arg", ["--programs", "--iterations"])
def test_counts_below_one_are_refused_by_name(arg, capsys):
    from ovq.bench import block_step

    with pytest.raises(SystemExit):
        block_step.main([arg, "0", "--compile-only"])
    assert f"{arg} must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gluon_kernels_match_their_triton_twins():
    """Each Gluon kernel against its Triton twin; shared_g and shared_gv against the step's, the G they keep in
    shared memory summed over the blocks that share a place there."""
    from ovq.bench import block_step

    # shared_g's 4 blocks: 0 and 1 take three iterations each; shared_gv's 8: 0 and 1 take two
    result = block_step.check_and_time(programs=4, iterations=10)
    assert set(result["gluon_vs_triton"]) == set(block_step.KERNELS)
    for design, errors in result["gluon_vs_triton"].items():
        assert all(err < 2e-2 for err in errors.values()), (design, errors)


@pytest.mark.parametrize("design", ["shared_g", "shared_gv"])
def test_shared_g_reference_folds_only_the_g_kept_in_shared_memory(design):
    """The check's expectation: block j's G lands in place j % blocks of its program, for the G a design keeps on chip;
    the G it adds atomically stays where the step puts it."""
    from ovq.bench.block_step import SHARED_G_OF, TILES, _shared_g_reference

    programs, iterations, bn, bd = 2, 10, TILES["BN"], TILES["BD"]
    value = torch.arange(programs * iterations, dtype=torch.float32)  # program p, iteration j: 10 p + j
    g = torch.zeros(programs * iterations * bn, bd)
    g[:] = value.repeat_interleave(bn)[:, None]
    dq = torch.randn(3, 3)
    out_dq, out_gk, out_gv = _shared_g_reference(design, (dq, g, g + 0.5), programs, iterations)
    assert out_dq is dq
    shared, blocks = SHARED_G_OF[design]
    for name, got, given in (("G_k", out_gk, g), ("G_v", out_gv, g + 0.5)):
        if name not in shared:
            assert torch.equal(got, given)
            continue
        per_block = got.view(-1, bn, bd)[:, 0, 0]
        for p in range(programs):
            for b in range(blocks):
                js = range(b, iterations, blocks)
                want = sum(10 * p + j + (0.5 if name == "G_v" else 0.0) for j in js)
                assert per_block[p * blocks + b].item() == want, (design, name, p, b)
        assert not per_block[programs * blocks:].any()  # nothing past the programs' places
