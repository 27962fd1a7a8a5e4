"""The Gluon dictionary backward (``ovq.ops.gluon_bwd``, opt-in with ``OVQ_GLUON_BWD=1``) against the Triton one.

Gluon kernels do not run in Triton's interpreter: on any machine the kernel is compiled for sm_90 and held to the
H200's shared memory; on a GPU one forward's gradients go through both backwards and must agree."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import random_qkv

from ovq.ops import ovq_attention, vq_attention

pytest.importorskip("triton.experimental.gluon")


def test_scope():
    from ovq.ops.gluon_bwd import MAX_SLICE_BLOCKS, applies, slice_blocks

    assert applies(64, 64, 128, "bf16", False, 8) and applies(64, 64, 128, "fp16", False, 1)
    assert not applies(128, 128, 128, "bf16", False, 8)  # G_v of 512 slots would not fit beside D = 128 operands
    assert not applies(64, 64, 64, "bf16", False, 8)
    assert not applies(64, 64, 128, "ieee", False, 8)  # float32 inputs
    assert not applies(64, 64, 128, "bf16", True, 8)  # detach_state: no G at all
    assert not applies(64, 64, 128, "bf16", False, MAX_SLICE_BLOCKS + 1)
    assert (slice_blocks(4096, 8), slice_blocks(4096, 2), slice_blocks(1000, 8), slice_blocks(64, 32)) == (8, 32, 2, 1)


def _compile(tmp_path, variants) -> list:
    """Compile the kernel for sm_90 in a process without the interpreter (the tests run under it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from ovq.ops.gluon_bwd import NUM_WARPS, ovq_bwd_dict_gluon_kernel as kernel
ints = {"z_ptr": "*i32", "sched_ptr": "*i32", "T": "i32", "N": "i32", "H": "i32", "C": "i32", "P": "i32"}
out = []
for consts in json.loads(sys.argv[2]):
    sig = {name: "constexpr" if name in consts else ints.get(name, "*fp32") for name in kernel.arg_names}
    compiled = triton.compile(GluonASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": NUM_WARPS})
    ptx = compiled.asm["ptx"]
    out.append({"shared": compiled.metadata.shared, "wgmma": ptx.count("wgmma.mma_async")})
json.dump(out, open(sys.argv[1], "w"))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.json"), json.dumps(variants)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def test_compiles_for_sm90_within_an_h200s_shared_memory(tmp_path):
    base = dict(D=64, L=128, BN=64, NB=8, SLICE_BLOCKS=8, COUNT_PRIOR=True, STATIC=False, FP16=False)
    variants = [base, base | dict(SLICE_BLOCKS=2, COUNT_PRIOR=False, STATIC=True, FP16=True)]
    for compiled in _compile(tmp_path, variants):
        # the read's two products and the gradient's three, as warpgroup instructions (as bench.block_step's step)
        assert compiled["wgmma"] == 28, compiled
        assert compiled["shared"] <= 232_448, compiled  # an H200's shared memory per block


def test_the_flag_changes_nothing_where_the_kernel_cannot_run(monkeypatch):
    """Off a compiled GPU (here: the interpreter) the Triton backward runs whatever OVQ_GLUON_BWD says."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the flag switches kernels: test_gluon_backward_matches_triton")
    q, k, v = random_qkv(1, 40, 2, 16, dtype=torch.float32, seed=1, requires_grad=True)
    grads = []
    for flag in ("0", "1"):
        monkeypatch.setenv("OVQ_GLUON_BWD", flag)
        o, _ = ovq_attention(q, k, v, 4.0, chunk_size=16, max_centroids=24, backend="triton")
        grads.append(torch.autograd.grad(o.square().sum(), (q, k, v)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


GPU_CASES = [  # (H, T, N, dtype, static, count_prior, carried state)
    (16, 4096, 4096, torch.bfloat16, False, True, False),  # the 64K layout: 8 slices of 512 slots (8 blocks)
    (8, 1536, 2048, torch.bfloat16, False, True, False),  # 16 slices of 128 slots (2 blocks)
    (2, 1000, 512, torch.float16, False, False, True),  # a partial last chunk, no count prior, a carried state
    (4, 777, 1024, torch.bfloat16, True, True, False),  # VQ: a static codebook
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"H{c[0]}-T{c[1]}-N{c[2]}-{str(c[3])[6:]}"
                         f"{'-vq' if c[4] else ''}{'' if c[5] else '-noprior'}{'-carried' if c[6] else ''}")
def test_gluon_backward_matches_triton(case, monkeypatch):
    import ovq.ops.gluon_bwd as gluon_bwd

    h, t, n, dtype, static, count_prior, carried = case
    q, k, v = random_qkv(1, t, h, 64, dtype=dtype, seed=0, device="cuda", requires_grad=True)
    beta = torch.full((h,), 8.0, device="cuda", requires_grad=True)
    do = torch.randn(1, t, h, 64, device="cuda")
    kw = dict(chunk_size=128, count_prior=count_prior, backend="triton", output_final_state=True)
    if static:
        codebook = torch.randn(h, n, 64, generator=torch.Generator().manual_seed(1)).cuda()
        o, state = vq_attention(q, k, v, beta, codebook, **kw)
    elif carried:  # the state after the first 300 tokens carries gradient into the rest
        _, mid = ovq_attention(q[:, :300], k[:, :300], v[:, :300], beta, max_centroids=n, **kw)
        o, state = ovq_attention(q[:, 300:], k[:, 300:], v[:, 300:], beta, max_centroids=n, initial_state=mid, **kw)
        do = do[:, 300:]
    else:
        o, state = ovq_attention(q, k, v, beta, max_centroids=n, **kw)
    # the final state's value sums enter the backward as G_v's starting value
    loss = (o.float() * do).sum() + state.sum_v.float().mean() * 100
    real_launch, launches = gluon_bwd.launch, []

    def counted(*args, **kwargs):
        launches.append(kwargs["slices"])
        return real_launch(*args, **kwargs)
    monkeypatch.setattr(gluon_bwd, "launch", counted)
    grads = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("OVQ_GLUON_BWD", flag)
        grads[flag] = torch.autograd.grad(loss, (q, k, v, beta), retain_graph=True)
    assert launches, "the Gluon kernel did not run"
    for name, a, b in zip(("dq", "dk", "dv", "dbeta"), grads["1"], grads["0"]):
        assert not torch.isnan(a).any(), name
        err = ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-6)).item()
        assert err < 2e-3, (name, err)



class _Launched(Exception):
    pass


def test_the_op_binds_every_kernel_argument_by_name(monkeypatch):
    """Drive the op's backward into the Gluon launch (its kernel swapped for a recorder; on the CPU through the
    interpreter, on a GPU compiled): every argument the kernel takes is given, the tensors are the ones its names say
    (checked by shape and type), and the constexprs are the scope's."""
    import ovq.ops.gluon_bwd as gluon_bwd
    import ovq.ops.triton_chunk as tc

    kernel = gluon_bwd.ovq_bwd_dict_gluon_kernel
    constexprs = {"D", "L", "BN", "NB", "SLICE_BLOCKS", "COUNT_PRIOR", "STATIC", "FP16"}
    names = [a for a in kernel.arg_names if a not in constexprs]
    b, t, h, n = 1, 300, 2, 256
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                if args[names.index("T")] != t:  # the forward's probe (one chunk) of whether the backward loads
                    return
                calls.append((grid, args, kwargs))
                raise _Launched
            return run
    monkeypatch.setattr(gluon_bwd, "ovq_bwd_dict_gluon_kernel", Recorder())
    monkeypatch.setattr(tc, "_gluon_backward", lambda *a: True)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # (Triton launches CPU tensors only when interpreting)
    q, k, v = random_qkv(b, t, h, 64, dtype=torch.float32, seed=2, device=device, requires_grad=True)
    o, _ = ovq_attention(q, k, v, 4.0, chunk_size=128, max_centroids=n, backend="triton")
    with pytest.raises(_Launched):
        o.sum().backward()
    (grid, args, kwargs), = calls
    assert len(args) == len(names) and set(kwargs) == constexprs | {"num_warps"}
    arg = dict(zip(names, args))
    slices, bh = grid
    assert bh == b * h and kwargs["NB"] == slices and kwargs["D"] == 64 and kwargs["L"] == 128
    # (the buffers hold the slots this call opens: 128 of the 256, the saturating growth's M(256))
    slots = tc.used_slots(tc._schedule(t, 128, 0, 0, n, "saturating", 1.0, False), 0, n, False)
    assert slots == 128 and (arg["T"], arg["N"], arg["H"], arg["C"]) == (t, slots, h, 3)
    padded = arg["P"]
    assert padded % (slices * 64) == 0 and kwargs["SLICE_BLOCKS"] == padded // slices // 64
    for name in ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr"):
        assert arg[name].shape == (bh, t, 64) and arg[name].dtype == torch.float32, name
    for name in ("lse_ptr", "delta_ptr"):
        assert arg[name].shape == (bh, t), name
    assert arg["z_ptr"].shape == (bh, t) and arg["z_ptr"].dtype == torch.int32
    assert arg["sched_ptr"].shape == (3, 2) and arg["beta_ptr"].shape == (h,)
    for name, width in (("sk_ptr", 64), ("sv_ptr", 64)):
        assert arg[name].shape == (bh, padded, width), name
    assert arg["cnt_ptr"].shape == (bh, padded) and arg["off_ptr"].shape == (bh, padded)
    assert arg["off_ptr"].dtype == torch.float32
    for name in ("gk_ptr", "gv_ptr"):
        assert arg[name].shape == (bh, slots, 64) and arg[name].dtype == torch.float32, name
    assert arg["dbeta_ptr"].shape == (bh, slices)
