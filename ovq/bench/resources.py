"""Shared memory, registers and spills of the ovq Triton kernels compiled for an H200 (sm_90), without a GPU.

Why: whether a chunk size L fits on chip, and how much a kernel spills, decide its speed; this answers both
on any machine with Triton (3.6; it uses Triton's binder and compile stages, internals that may move).

Two phases:
  1. record (a subprocess under TRITON_INTERPRET=1): run a small ``ovq_attention(..., backend="triton")`` forward
     and backward on CPU with ``ovq.ops.triton_chunk._launch`` wrapped, and write down every kernel launch
     (kernel name, launch name, positional argument kinds/dtypes, constexprs) as JSON.
  2. compile (this process, no interpreter): for each kernel and each (L, num_stages), bind the recorded argument
     list with Triton's own specialization binder for the CUDA backend (so the signature, constexprs and
     divisibility attributes are what a real launch would produce), override the constexprs with the H200 values
     (D = Dv = 64, READ_PREC="bf16", ASSIGN_PREC="bf16x3", NB from the H200's SM count), compile with
     ``triton.compile`` for GPUTarget("cuda", 90, 32) and read ``metadata.shared``; registers and spills come
     from running the bundled ptxas -v on the produced PTX with the flags Triton uses (make_cubin) (and registers are
     cross-checked with the bundled cuobjdump -res-usage on Triton's cubin).

With ``--loops``, each cubin is also disassembled (the bundled nvdisasm) and every loop of its machine code is
described (:func:`sass_loops`): instructions per iteration, the source line at its head, and counts of the
instructions that decide a latency-bound loop's time (tensor-core products, barriers, global and shared memory,
spills, special-function math). The innermost loop over centroid blocks is where the kernels spend their time.

Usage:  python -m ovq.bench.resources [--L 64 128 256] [--stages 1 2] [--loops] [--json out.json]
(minutes per kernel and L on a 2-core CPU; ptxas on the L = 512 kernels takes much longer)
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ..ops import triton_chunk as tc
from .common import apply_kernel_settings, kernel_settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H200_SHARED = 232_448
H200_SMS = 132
KERNELS = ("ovq_fwd_kernel", "ovq_fwd_local_kernel", "ovq_bwd_local_kernel", "ovq_bwd_dict_kernel")


# ----------------------------------------------------------------------------------------------------- record
def numpy_breaks_interpreter() -> bool:
    """Whether numpy is too new for Triton 3.6's interpreter (>= 2.4 turns the interpreter's conversions of
    one-element arrays to scalars into errors; pyproject pins < 2.4, but a GPU image may bring its own)."""
    import numpy
    return tuple(int(x) for x in numpy.__version__.split(".")[:2]) >= (2, 4)


def record(path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch

    from ovq.ops import ovq_attention

    launches = []
    real_launch = tc._launch

    def spy(name, kernel, grid, chunk_size, d, dv, *args, **constexprs):
        kinds = []
        for a in args:
            if isinstance(a, torch.Tensor):
                kinds.append({"tensor": str(a.dtype).replace("torch.", "")})
            elif isinstance(a, bool):
                kinds.append({"bool": a})
            elif isinstance(a, int):
                kinds.append({"int": a})
            elif isinstance(a, float):
                kinds.append({"float": a})
            else:
                raise TypeError(f"{name}: unexpected argument {type(a)}")
        fn = getattr(kernel, "fn", kernel)
        launches.append({"name": name, "kernel": fn.__name__, "args": kinds,
                         "constexprs": {k: v for k, v in constexprs.items()}, "launch": list(tc.launch_settings(name, chunk_size))})
        return real_launch(name, kernel, grid, chunk_size, d, dv, *args, **constexprs)

    tc._launch = spy
    # launch as on a GPU: its precisions (so buffers get the GPU's dtypes) and the asked module settings
    gpu_read = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    tc._precisions = lambda dtype: (gpu_read.get(dtype, "ieee"), "ieee" if dtype == torch.float32 else tc.ASSIGN_PRECISION)
    apply_kernel_settings(json.loads(os.environ.get("OVQ_RESOURCES_SET", "{}")))
    g = torch.Generator().manual_seed(0)
    B, T, H, D = 1, 40, 2, 16
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
    beta = torch.tensor([3.0, 5.0], requires_grad=True)
    o, _ = ovq_attention(q, k, v, beta, chunk_size=16, max_centroids=24, backend="triton")
    o.float().sum().backward()
    seen, out = set(), []
    for rec in launches:  # backward_fits runs the backward once on zeros first: keep one record per kernel
        if rec["kernel"] not in seen:
            seen.add(rec["kernel"])
            out.append(rec)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


# ---------------------------------------------------------------------------------------------------- compile
def tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def run_ptxas(rows, timeout, jobs, loops=False):
    """ptxas -v (flags as Triton's make_cubin) on each saved PTX, ``jobs`` at a time, smallest L first; with
    ``loops``, the cubin's loops too (:func:`sass_loops`)."""
    import concurrent.futures as cf

    todo = sorted((r for r in rows if "ptx" in r), key=lambda r: (r["L"], r["kernel"], r["num_stages"]))

    def one(r):
        cmd = [tool("ptxas"), "-lineinfo", "-v", "--gpu-name=sm_90a", r["ptx"], "-o", r["ptx"] + ".cubin"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return r, None
        return r, p.stderr + p.stdout

    with cf.ThreadPoolExecutor(jobs) as ex:
        for r, log in ex.map(one, todo):
            if log is None:
                r["ptxas"] = f"timed out after {timeout} s"
            else:
                get = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else None  # noqa: E731,B023
                r.update(regs=get(r"Used (\d+) registers"), spill_stores=get(r"(\d+) bytes spill stores"),
                         spill_loads=get(r"(\d+) bytes spill loads"), stack=get(r"(\d+) bytes stack frame"),
                         static_smem=get(r"(\d+) bytes smem") or 0, ptxas_log=log.strip())
                if os.path.exists(r["ptx"] + ".cubin"):
                    r["cuobjdump_regs"] = cuobjdump_regs(r["ptx"] + ".cubin")
                    if loops:
                        listing = subprocess.run([tool("nvdisasm"), "-c", "-g", r["ptx"] + ".cubin"],
                                                 capture_output=True, text=True, check=True).stdout
                        r["loops"] = sass_loops(listing)
            print(f"ptxas {r['kernel']:22s} L={r['L']:4d} stages={r['num_stages']}: regs={r.get('regs')} "
                  f"spills(st/ld)={r.get('spill_stores')}/{r.get('spill_loads')} {r.get('ptxas', '')}", flush=True)


# Instruction classes counted per loop (SASS opcodes, by prefix of the opcode with its modifiers).
LOOP_CLASSES = {
    "mma": ("HGMMA", "HMMA"),                   # tensor-core products
    "barrier": ("BAR.",),                       # block-wide barriers
    "global_load": ("LDG.",), "global_store": ("STG.",), "global_atomic": ("RED", "ATOMG"),
    "async_copy": ("LDGSTS", "UBLKCP", "UTMALDG"),
    "shared_load": ("LDS", "LDSM"), "shared_store": ("STS",),
    "spill_load": ("LDL",), "spill_store": ("STL",),
    "special_math": ("MUFU.",),                 # exp2, log2, reciprocal, ...
}


def sass_loops(listing: str) -> list[dict]:
    """The loops of an ``nvdisasm -c -g`` listing: each backward branch to a label closes one. Per loop: start and
    end address, instructions in it, whether another loop lies inside (``innermost``), the source line (file:line)
    at its head, counts of :data:`LOOP_CLASSES`, the source lines with the most instructions (``lines``, the
    top ten as [file:line, instructions]), and the instructions and classes outside its nested loops
    (``outside_nested``)."""
    insts, labels, pending, line = [], {}, [], "?"
    for text in listing.splitlines():
        if m := re.search(r'File "([^"]+)", line (\d+)', text):
            line = f"{os.path.basename(m.group(1))}:{m.group(2)}"
        elif m := re.match(r"\s*(\.L_x_\d+):", text):
            pending.append(m.group(1))
        elif m := re.match(r"\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", text):
            address = int(m.group(1), 16)
            for label in pending:
                labels[label] = address
            pending = []
            insts.append((address, m.group(2), m.group(3), line))
    head_line = {a: src for a, _, _, src in insts}
    loops = []
    for address, opcode, rest, _ in insts:
        target = re.search(r"(\.L_x_\d+)", rest)
        if opcode.startswith("BRA") and target and labels.get(target.group(1), address + 1) <= address:
            start = labels[target.group(1)]
            body = [(op, src) for a, op, _, src in insts if start <= a <= address]
            counts = {name: sum(op.startswith(prefixes) for op, _ in body) for name, prefixes in LOOP_CLASSES.items()}
            lines = collections.Counter(src for _, src in body).most_common(10)
            loops.append({"start": hex(start), "end": hex(address), "instructions": len(body),
                          "head": head_line[start], **counts, "lines": [list(x) for x in lines]})
    spans = [(int(lp["start"], 16), int(lp["end"], 16)) for lp in loops]
    for lp, (lo, hi) in zip(loops, spans):
        nested = [(a, b) for a, b in spans if lo <= a and b <= hi and (a, b) != (lo, hi)]
        lp["innermost"] = not nested
        # what one iteration runs besides its nested loops (for a kernel's chunk loop: the per-chunk work)
        own = [op for a, op, _, _ in insts if lo <= a <= hi and not any(x <= a <= y for x, y in nested)]
        lp["outside_nested"] = {"instructions": len(own),
                                **{name: sum(op.startswith(prefixes) for op in own) for name, prefixes in
                                   LOOP_CLASSES.items()}}
    return loops


def cuobjdump_regs(cubin_path: str) -> int | None:
    """Registers of a cubin as cuobjdump reads them (a cross-check of ptxas -v)."""
    r = subprocess.run([tool("cuobjdump"), "-res-usage", cubin_path], capture_output=True, text=True)
    m = re.search(r"REG:(\d+)", r.stdout)
    return int(m.group(1)) if m else None


def compile_all(records, Ls, stages_list, ints, nb_fwd, nb_bwd, ptx_dir, warps_override=None):
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    import ovq.ops.kernels as K

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    # Stop after PTX: the shared memory Triton asks at launch (metadata.shared) is fixed by then, and ptxas on the
    # large, spilling kernels takes many minutes; ptxas runs afterwards on the saved PTX (see run_ptxas). The
    # cubin stage is replaced by a stub, so this uses its own Triton cache directory (never the real one).
    import triton.compiler.compiler as tcc

    class PtxOnly(type(backend)):
        def add_stages(self, stages, options, language):
            super().add_stages(stages, options, language)
            stages["cubin"] = lambda src, metadata: b""

    backend = PtxOnly(target)
    tcc.make_backend = lambda t: backend
    rows = []
    for rec in records:
        kernel = getattr(K, rec["kernel"])
        names = [p.name for p in kernel.params]
        n_pos = len(rec["args"])
        for L in Ls:
            warps = warps_override or tc.launch_settings(rec["name"], L)[0]  # the launcher's rule at this L
            for stages in stages_list:
                args = []
                for name, kind in zip(names[:n_pos], rec["args"]):
                    if "tensor" in kind:  # small CPU tensors: only dtype and 16-byte alignment matter to the binder
                        t = torch.empty(64, dtype=getattr(torch, kind["tensor"]))
                        assert t.data_ptr() % 16 == 0
                        args.append(t)
                    elif "int" in kind:
                        args.append(ints(name, L))
                    else:
                        args.append(next(iter(kind.values())))
                cx = dict(rec["constexprs"])
                cx.update(D=64, DV=64, L=L, BL=tc._pow2(L), BD=64, BDV=64, READ_PREC="bf16")
                if "KB" in cx:  # the in-chunk key block the launcher picks for this L (the record's was for its L)
                    cx["KB"] = min(cx["BL"], tc.LOCAL_BLOCK)
                if "NB" in cx:
                    cx["NB"] = nb_fwd if rec["name"] == "fwd" else nb_bwd
                if rec["name"] == "fwd":  # the forward's block width the launcher picks on the GPU (the record's is
                    # the interpreter's): wide with one slice, e.g. --BH 256 as at 4K
                    cx["BN"] = tc.fwd_block(nb_fwd, max(cx["D"], cx["DV"]), L, torch.device("cuda"))
                if "MERGE_ROWS" in cx:
                    cx["MERGE_ROWS"] = tc.merge_rows(cx["BL"], cx["NB"])
                if "GRAM_PICKS" in cx:  # the launcher's rule at this L for chunks that open many centroids (as at 4K)
                    cx["GRAM_PICKS"] = tc.gram_picks(cx["STATIC"], L, [(0, tc.GRAM_MIN_PICKS)])
                kwargs = dict(cx, num_warps=warps, num_stages=stages, debug=False)
                binder = create_function_from_signature(kernel.signature, kernel.params, backend)
                bound, spec, opts = binder(*args, **kwargs)
                options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
                row = {"kernel": rec["kernel"], "L": L, "num_warps": warps, "num_stages": stages,
                       "signature": {k: v for k, v in signature.items() if v != "constexpr"},
                       "constexprs": {k: v for k, v in cx.items()}, "ints": {n: ints(n, L) for n, k in
                                                                            zip(names, rec["args"]) if "int" in k}}
                try:
                    c = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                       options=options.__dict__)
                except Exception as e:  # noqa: BLE001 - report and go on
                    causes, cause = [], e.__cause__  # Triton nests the real error in __cause__
                    while cause is not None:
                        causes.append(f"{type(cause).__name__}: {str(cause)[-600:]}")
                        cause = cause.__cause__
                    row["error"] = " <- ".join([f"{type(e).__name__}: {str(e)[-1500:]}", *causes])
                    rows.append(row)
                    print(f"{rec['kernel']} L={L} stages={stages}: {row['error']}", flush=True)
                    continue
                row.update(shared=c.metadata.shared, fits=c.metadata.shared <= H200_SHARED)
                ptx_path = os.path.join(ptx_dir, f"{rec['kernel']}_L{L}_w{warps}_s{stages}.ptx")
                with open(ptx_path, "w") as f:
                    f.write(c.asm["ptx"])
                with open(ptx_path[:-len(".ptx")] + ".ttgir", "w") as f:  # the layouts Triton chose (for --keep)
                    f.write(c.asm["ttgir"])
                row["ptx"] = ptx_path
                rows.append(row)
                print(f"{rec['kernel']:22s} L={L:4d} warps={warps} stages={stages}: shared={c.metadata.shared:7d} "
                      f"fits={row['fits']}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", help=argparse.SUPPRESS)  # internal: phase 1, run under TRITON_INTERPRET=1
    ap.add_argument("--L", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--warps", type=int, default=None, help="override triton_chunk.LAUNCH's num_warps")
    ap.add_argument("--kernels", nargs="+", help="only these kernels (e.g. ovq_bwd_local_kernel)")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                    help="ovq.ops.triton_chunk settings for the recorded launch, e.g. FWD_CACHED_OPERANDS=False "
                         "FWD_TWO_PASS=True (the forward's variants)")
    ap.add_argument("--T", type=int, default=4096, help="sequence length the int arguments assume")
    ap.add_argument("--N", type=int, default=1024, help="capacity (max_centroids)")
    ap.add_argument("--H", type=int, default=8, help="heads")
    ap.add_argument("--BH", type=int, default=16, help="batch x heads (sets the slice counts NB)")
    ap.add_argument("--ptxas-timeout", type=int, default=600, help="seconds per ptxas run (0: skip registers)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="ptxas runs at once")
    ap.add_argument("--loops", action="store_true", help="also describe each kernel's loops in its machine code")
    ap.add_argument("--json", default="kernel_resources_sm90.json")
    ap.add_argument("--keep", metavar="DIR", help="keep each kernel's PTX, TTGIR and cubin here (read the machine code "
                    "with Triton's bundled nvdisasm -c -g)")
    a = ap.parse_args()
    if a.record:
        record(a.record)
        return
    for name, values in (("--L", a.L), ("--stages", a.stages), ("--T", [a.T]), ("--N", [a.N]), ("--H", [a.H]),
                         ("--BH", [a.BH]), ("--jobs", [a.jobs]), ("--warps", [a.warps or 1])):
        if min(values) < 1:
            ap.error(f"{name} must be >= 1, got {values if len(values) > 1 else values[0]}")
    unknown = sorted(set(a.kernels or []) - set(KERNELS))
    if unknown:
        ap.error(f"--kernels: unknown {unknown}; the kernels are {', '.join(KERNELS)}")
    if a.loops and a.ptxas_timeout <= 0:
        ap.error("--loops reads the cubins ptxas makes: it needs --ptxas-timeout > 0")
    settings = kernel_settings(ap, a.set)
    if numpy_breaks_interpreter():
        import numpy
        ap.error(f"recording the launches runs Triton 3.6's interpreter, which breaks with numpy >= 2.4 (here "
                 f"{numpy.__version__}): install requirements.txt's numpy")

    # the PTX-only backend must never write into (or read stubs from) the user's Triton cache
    scratch = tempfile.mkdtemp(prefix="ovq_sm90_")  # PTX files and a private Triton cache (stub cubins)
    os.environ["TRITON_CACHE_DIR"] = os.path.join(scratch, "triton_cache")
    try:
        _run(a, settings, scratch)
        if a.keep:
            shutil.copytree(os.path.join(scratch, "ptx"), a.keep, dirs_exist_ok=True)
            print(f"PTX and cubins: {a.keep}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(a, settings: dict, scratch: str) -> None:
    """Record the launches, compile each kernel for the H200, run ptxas; write and print the rows."""
    with tempfile.TemporaryDirectory() as tmp:
        rec_path = os.path.join(tmp, "launches.json")
        env = dict(os.environ, TRITON_INTERPRET="1", OVQ_RESOURCES_SET=json.dumps(settings))
        subprocess.run([sys.executable, "-m", "ovq.bench.resources", "--record", rec_path], env=env, check=True,
                       cwd=REPO)
        with open(rec_path) as f:
            records = json.load(f)
    apply_kernel_settings(settings)  # the compile step reads some of them too (LOCAL_BLOCK)
    if a.kernels:
        records = [r for r in records if r["kernel"] in a.kernels]
    print("recorded launches:", [(r["kernel"], r["launch"]) for r in records], flush=True)

    def ints(name, L):  # the int arguments' values in the assumed H200 call (they only matter for specialization)
        return {"T": a.T, "N": a.N, "H": a.H, "C": math.ceil(a.T / L)}[name]

    nb_fwd, nb_bwd = tc.slices_for(a.BH, a.N, H200_SMS)
    print(f"NB fwd={nb_fwd} bwd={nb_bwd}; ints T={a.T} N={a.N} H={a.H}", flush=True)
    ptx_dir = os.path.join(scratch, "ptx")
    os.makedirs(ptx_dir, exist_ok=True)
    rows = compile_all(records, a.L, a.stages, ints, nb_fwd, nb_bwd, ptx_dir, a.warps)
    with open(a.json, "w") as f:  # the shared-memory figures first: ptxas can take many minutes
        json.dump(rows, f, indent=1, default=str)
    if a.ptxas_timeout > 0:
        run_ptxas(rows, a.ptxas_timeout, a.jobs, a.loops)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"\n{'kernel':22s} {'L':>4s} {'warps':>5s} {'stages':>6s} {'shared':>8s} {'regs':>5s} {'spill st/ld':>12s}"
          f" {'fits 232448':>11s}")
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:22s} {r['L']:4d} {r['num_warps']:5d} {r['num_stages']:6d} ERROR {r['error'][:80]}")
            continue
        print(f"{r['kernel']:22s} {r['L']:4d} {r['num_warps']:5d} {r['num_stages']:6d} {r['shared']:8d} "
              f"{str(r.get('regs', '?')):>5s} {str(r.get('spill_stores', '?')) + '/' + str(r.get('spill_loads', '?')):>12s}"
              f" {str(r['fits']):>11s}")
    if a.loops:
        print(f"\ninnermost loops of 100+ instructions (per iteration; {', '.join(LOOP_CLASSES)}):")
        for r in rows:
            for lp in r.get("loops", []):
                if lp["innermost"] and lp["instructions"] >= 100:
                    print(f"{r['kernel']:22s} L={r['L']:4d} stages={r['num_stages']} {lp['head']:>16s} "
                          f"{lp['instructions']:5d}  " + " ".join(str(lp[c]) for c in LOOP_CLASSES))
        print("\nloops with nested loops (per iteration, outside the nested ones: e.g. a chunk's own work):")
        for r in rows:
            for lp in r.get("loops", []):
                if not lp["innermost"]:
                    own = lp["outside_nested"]
                    print(f"{r['kernel']:22s} L={r['L']:4d} stages={r['num_stages']} {lp['head']:>16s} "
                          f"{own['instructions']:5d}  " + " ".join(str(own[c]) for c in LOOP_CLASSES))
    print(f"\nfull rows (signature, constexprs, ptxas logs): {a.json}")


if __name__ == "__main__":
    main()
