"""The block-step benchmark: both steps compile for sm_90 on any machine; on a GPU, Gluon's step computes Triton's."""
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


def test_both_steps_compile_for_sm90_and_gluon_waits_less(tmp_path):
    payload = _compile_only(tmp_path)
    assert "rows" not in payload  # nothing timed without a GPU
    triton_step, gluon_step = payload["compiled_sm90"]["triton"], payload["compiled_sm90"]["gluon"]
    # the same five products (as warpgroup instructions), but fewer waits for them: what the Gluon step is for
    assert triton_step["wgmma"] == gluon_step["wgmma"] > 0
    assert 0 < gluon_step["wgmma_waits"] < triton_step["wgmma_waits"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gluon_step_matches_triton_step():
    from ovq.bench import block_step

    result = block_step.check_and_time(programs=4, blocks=3)
    assert all(err < 2e-2 for err in result["gluon_vs_triton"].values()), result["gluon_vs_triton"]
