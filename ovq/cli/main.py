"""``ovq``: train, evaluate, plot, sample and benchmark from one command.

    ovq train --task recall --model swa-ovq --size tiny --seq-len 256 --steps 300 --out runs/recall
    ovq eval runs/recall --lengths 256,1024,4096 --max-centroids 64,256 --out results/recall.json
    ovq plot results/recall.json --out results/recall.png
    ovq train --task lm --data data/books --model swa-ovq --size 20m --seq-len 4096 --out runs/lm
    ovq eval runs/lm --loss-by-position --max-len 65536
    ovq generate runs/lm --prompt "It is a truth universally acknowledged"
    torchrun --standalone --nproc_per_node 2 -m ovq.cli train ...      # data parallel (DDP; --fsdp for FSDP2)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
from pathlib import Path


def _kv(pairs: list[str] | None, what: str) -> dict:
    """``["num_pairs=64", "noise_std=0.1"]`` -> ``{"num_pairs": 64, "noise_std": 0.1}``."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"{what} must look like name=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _sweep(pairs: list[str] | None) -> dict:
    """``["num_pairs=16,32"]`` -> ``{"num_pairs": [16, 32]}`` (each value parsed as by ``_kv``)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[1]:
            raise SystemExit(f"--task-sweep must look like name=v1,v2,..., got {pair!r}")
        key, values = pair.split("=", 1)
        out[key] = [_kv([f"{key}={v}"], "--task-sweep")[key] for v in values.split(",")]
    return out


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


def cmd_train(args) -> None:
    from ..train import DistributedContext, TrainConfig
    from ..train.jobs import JobConfig

    job = JobConfig(task=args.task, model=args.model, size=args.size, seq_len=args.seq_len,
                    batch_size=args.batch_size, task_args=_kv(args.task_arg, "--task-arg"),
                    model_args=_kv(args.model_arg, "--model-arg"), data=args.data, eval_batches=args.eval_batches,
                    seed=args.seed).validate()
    cfg = TrainConfig(out_dir=args.out, steps=args.steps, lr=args.lr, warmup_steps=args.warmup,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, grad_accum=args.grad_accum,
                      precision=args.precision, compile=args.compile, seed=args.seed, log_every=args.log_every,
                      eval_every=args.eval_every, ckpt_every=args.ckpt_every, fsdp=args.fsdp,
                      progress=not args.no_progress).validate()
    dist = DistributedContext.from_env(args.device)
    try:
        _train(args, job, cfg, dist)
    finally:
        dist.close()
    if dist.world_size > 1:
        # A torchrun worker leaves without the interpreter's finalization. There, a gloo worker thread can still be
        # freeing the last collective's tensors; it needs the GIL, finalization ends such threads, and the C++
        # runtime aborts the process ("terminate called without an active exception", exit -6: in a core dump,
        # ProcessGroupGloo::runLoop in ~AsyncBarrierWork under Py_FinalizeEx). torchrun then reported finished
        # runs as failed: 7 of ~360 two-process CPU launches (session 18). Everything is written by now (the log
        # is flushed per record, the checkpoint written atomically).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _train(args, job, cfg, dist) -> None:
    """``cmd_train`` within its process group."""
    from ..train import Trainer
    from ..train.checkpoint import CHECKPOINT_NAME, load_model_weights
    from ..train.jobs import backbone_of, build_training

    model, source, loss_fn, eval_fn, extra = build_training(job, dist.rank, dist.world_size, dist.device)
    if args.init_from and (args.restart or not (Path(args.out) / CHECKPOINT_NAME).exists()):
        source_job = load_model_weights(model, args.init_from)  # a resumed run already holds its weights
        extra["init_from"] = {"path": str(args.init_from), "job": source_job}
        if dist.is_main:
            print(f"initialized from {args.init_from}")
    if args.grad_checkpointing:
        backbone_of(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(p.numel() for p in model.parameters())
    if dist.is_main:
        print(f"{job.task} | {job.model} ({job.size}): {n_params / 1e6:.2f}M parameters | "
              f"{dist.world_size} process(es) on {dist.device}")
    trainer = Trainer(model, source, cfg, loss_fn=loss_fn, eval_fn=eval_fn, flops_per_token=6 * n_params,
                      extra_state=extra, dist=dist)
    history = trainer.fit(resume=not args.restart, until=args.stop_at)
    if dist.is_main:
        final = history[-1]
        print(json.dumps({k: v for k, v in final.items() if k != "time"}))


def cmd_eval(args) -> None:
    import torch

    from ..io import atomic_write_json
    from ..train.evaluate import evaluate_lengths, load_run, loss_by_position
    from ..train.jobs import deploy_budget, set_chunk_size, set_fill_length

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = _kv(args.model_arg, "--model-arg")
    model, job = load_run(args.run, device, model_args=overrides)
    budgets = _ints(args.max_centroids) or [None]
    if args.chunk_size is not None and not set_chunk_size(model, args.chunk_size):
        raise SystemExit(f"--chunk-size: the run's model ({job.model}) has no OVQ or VQ layers")
    if args.fill_length is not None and not set_fill_length(model, args.fill_length):
        raise SystemExit(f"--fill-length: the run's model ({job.model}) has no OVQ layers")
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if job.task == "lm" or args.loss_by_position:
            from ..data import HeldOutDocuments
            docs = HeldOutDocuments(args.data or job.data, min_tokens=args.max_len + 1, max_tokens=args.max_len + 1)
            rows = []
            for n in budgets:
                deploy_budget(model, n, args.fill_length)
                rows.append({"max_centroids": n, "documents": len(docs),
                             **loss_by_position(model, docs, block=args.block, prefill=args.prefill, device=device)})
        else:
            rows = evaluate_lengths(model, job, _ints(args.lengths), budgets, args.batches, args.batch_size, device,
                                    task_sweep=_sweep(args.task_sweep), fill_length=args.fill_length,
                                    **_kv(args.task_arg, "--task-arg"))
    from ..bench.common import environment
    if args.chunk_size is not None:
        rows = [row | {"chunk_size": args.chunk_size} for row in rows]
    if args.fill_length is not None:
        rows = [row | {"fill_length": args.fill_length} for row in rows]
    if overrides:
        rows = [row | {"model_args": overrides} for row in rows]
    payload = {"run": str(args.run), "job": dataclasses.asdict(job), "environment": environment(), "results": rows}
    if args.out:
        atomic_write_json(args.out, payload)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k not in ("loss", "tokens")} |
                         ({"mean_loss": sum(row["loss"]) / len(row["loss"])} if "loss" in row else {})))


def cmd_plot(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.evaluate import score_name

    fig, ax = plt.subplots(figsize=(8, 4))
    colors: dict[str, str] = {}  # one color per run: its evaluation variants are dashed lines in that color
    variants: dict[str, int] = {}  # evaluation variants drawn so far per run (each its own marker)
    for path in args.inputs:
        payload = json.loads(Path(path).read_text())
        rows, job = payload["results"], payload["job"]
        name = Path(payload.get("run", job["model"])).name  # the run folder names the variant (e.g. swa-ovq-4096)
        color = colors.setdefault(name, f"C{len(colors) % 10}")

        def style(line_rows: list[dict], only_line: bool, index: int) -> dict:
            if any(_eval_settings(r) for r in line_rows):  # a variant: numbered among this run's variants
                index = variants[name] = variants.get(name, -1) + 1
            return _line_style(line_rows, color, only_line, index, len(args.inputs) > 1)
        if "loss" in rows[0]:
            for index, row in enumerate(rows):
                xs = [(i + 1) * row["block"] for i in range(len(row["loss"]))]
                ax.plot(xs, row["loss"], label=_line_label(row, name), markevery=max(1, len(xs) // 8), markersize=4,
                        **style([row], len(rows) == 1, index))  # sparse markers
            ax.set_xlabel("position (tokens)")
            ax.set_ylabel("loss (nats/token)")
            continue
        metric = score_name(rows)
        lines = _plot_lines(rows, args.x, name)
        for index, (label, sel) in enumerate(lines.items()):
            ax.plot([x for x, _ in sel], [y[metric] for _, y in sel], label=label,
                    **style([r for _, r in sel], len(lines) == 1, index))
        ax.set_xlabel("evaluation length (tokens)" if args.x == "length" else f"{args.x} (evaluation)")
        ax.set_ylabel(metric.replace("_", " "))
        if metric == "squared_error":
            ax.set_yscale("log")  # errors span orders of magnitude (a learned model vs predicting 0)
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines, not over them
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    plt.close(fig)  # pyplot keeps every figure until closed: the experiments' report plots many in one process
    print(f"saved {args.out}")


def _eval_settings(row: dict) -> dict:
    """The evaluation-time model settings a result row ran with that change what is computed (Mamba2's SSD
    block size changes nothing but memory)."""
    settings = row.get("model_args", {}) | {k: row[k] for k in ("chunk_size", "fill_length") if k in row}
    return {k: v for k, v in settings.items() if k != "mamba2_chunk_size"}


def _line_label(row: dict, name: str) -> str:
    """A result row's line: the run's name, its budget N and its evaluation-time settings."""
    parts = [] if row["max_centroids"] is None else [f"N={row['max_centroids']}"]
    parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in _eval_settings(row).items()]
    return " ".join([name, *parts])


# A run's plain lines when runs share a figure ("--" is for evaluation variants), and its variants' markers.
PLAIN_STYLES = ("-", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
VARIANT_MARKERS = ("s", "^", "D", "v")


def _line_style(rows: list[dict], color: str, only_line: bool, index: int = 0, shared: bool = False) -> dict:
    """Evaluation variants dashed in their run's color (the ``index``-th variant of a run with its own marker);
    a run's only plain line in that color too. When several runs share the figure, a run's plain lines
    (``index``-th: another length or budget) keep its color and differ by line style; one run's several lines
    take their own colors."""
    if any(_eval_settings(r) for r in rows):
        return {"color": color, "linestyle": "--", "marker": VARIANT_MARKERS[index % len(VARIANT_MARKERS)]}
    if only_line:
        return {"color": color, "marker": "o"}
    style = {"color": color, "linestyle": PLAIN_STYLES[index % len(PLAIN_STYLES)]} if shared else {}
    return style | {"marker": "o"}


def _plot_lines(rows: list[dict], x: str, name: str) -> dict[str, list[tuple]]:
    """Rows of task scores -> {line label: [(x, row)] sorted by x}: one line per budget N and per value of
    every other setting that varies (the length, when x is a task setting such as num_pairs)."""
    def x_of(row):
        if x == "length":
            return row["length"]
        if x not in row.get("task_args", {}):
            raise SystemExit(f"--x {x}: the results have no task setting {x!r} (evaluate with --task-sweep {x}=...)")
        return row["task_args"][x]

    def others(row):
        parts = []
        if x != "length" and len({r["length"] for r in rows}) > 1:
            parts.append(f"T={row['length']}")
        varying = {k for k in row.get("task_args", {}) if len({str(r.get("task_args", {}).get(k)) for r in rows}) > 1}
        parts += [f"{k}={row['task_args'][k]}" for k in sorted(varying - {x})]
        return " ".join([_line_label(row, name), *parts])

    lines: dict[str, list[tuple]] = {}
    for row in sorted(rows, key=lambda r: (-1 if r["max_centroids"] is None else r["max_centroids"], x_of(r))):
        lines.setdefault(others(row), []).append((x_of(row), row))
    return lines


def cmd_generate(args) -> None:
    import torch

    from ..data import decode_ids, encode_texts, load_tokenizer
    from ..train.evaluate import load_run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, job = load_run(args.run, device)
    if job.task != "lm":
        raise SystemExit(f"{args.run} is a {job.task} run; generate needs a language model (--task lm)")
    tok = load_tokenizer(args.tokenizer or job.data)
    ids = torch.as_tensor(encode_texts(tok, [args.prompt])[0].astype("int64"), device=device)[None]
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                         temperature=args.temperature or None, pad_token_id=0)
    print(decode_ids(tok, out[0].tolist()))


# Commands that hand their arguments to a module's own ``main`` (each has its own --help).
DELEGATES = {"prepare": ("ovq.data.prepare", "prepare LM data"),
             "models": ("ovq.models.presets", "parameter counts of the presets"),
             "bench-cpu": ("ovq.bench.cpu", "CPU benchmark of the op"),
             "bench-ops": ("ovq.bench.ops", "GPU benchmark of the kernels"),
             "bench-decode": ("ovq.bench.decode", "decoding benchmark of the models")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ovq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a task or on text")
    t.add_argument("--task", required=True, choices=["recall", "positional_recall", "linear_regression", "lm"])
    t.add_argument("--model", default="swa-ovq", help="preset (ovq.models.presets)")
    t.add_argument("--size", default="tiny")
    t.add_argument("--seq-len", type=int, default=4096)
    t.add_argument("--batch-size", type=int, default=8, help="per process")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    t.add_argument("--compile", action="store_true")
    t.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block in backward (less activation memory; not with vq mixers)")
    t.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP under torchrun")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=0)
    t.add_argument("--eval-batches", type=int, default=4)
    t.add_argument("--ckpt-every", type=int, default=0)
    t.add_argument("--task-arg", action="append", help="task config, name=value (repeatable)")
    t.add_argument("--model-arg", action="append", help="OVQLMConfig override, name=value (repeatable)")
    t.add_argument("--data", help="prepared data folder (lm)")
    t.add_argument("--device", default="auto")
    t.add_argument("--out", required=True, help="run folder: log.jsonl, checkpoint.pt")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    t.add_argument("--init-from", metavar="RUN",
                   help="start from the weights of another run (a folder or checkpoint) with a fresh optimizer, "
                        "schedule and data: e.g. a model trained at 256 tokens continued at 4,096")
    t.add_argument("--stop-at", type=int, help="stop at this step with a checkpoint (rerun to continue): splits a "
                                                "long run across sessions; the schedule still follows --steps")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run across lengths and budgets N (or LM loss by position)")
    e.add_argument("run")
    e.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    e.add_argument("--max-centroids", default="", help="comma-separated N values (the budget knob)")
    e.add_argument("--fill-length", type=int, default=None,
                   help="deploy OVQ with linear growth that reaches each N at this many tokens (rate N / fill length)")
    e.add_argument("--chunk-size", type=int, default=None,
                   help="evaluate with this OVQ/VQ chunk size L instead of the trained one")
    e.add_argument("--batches", type=int, default=4)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--task-arg", action="append", help="task config overrides for evaluation, name=value")
    e.add_argument("--task-sweep", action="append", metavar="NAME=V1,V2,...",
                   help="also score each of these task settings at every length, e.g. num_pairs=16,32,64 "
                        "(the recall tasks' capacity axis; repeatable: every combination)")
    e.add_argument("--model-arg", action="append",
                   help="model config overrides that keep the weights, name=value (e.g. mamba2_chunk_size=1024)")
    e.add_argument("--loss-by-position", action="store_true")
    e.add_argument("--max-len", type=int, default=65536)
    e.add_argument("--prefill", type=int, default=4096,
                   help="loss by position: tokens per forward through the cache (--max-len: one forward per document)")
    e.add_argument("--block", type=int, default=1024, help="loss by position: tokens per reported block")
    e.add_argument("--data")
    e.add_argument("--device")
    e.add_argument("--out")
    e.set_defaults(fn=cmd_eval)

    p = sub.add_parser("plot", help="PNG of eval results (accuracy vs length, or loss by position)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--x", default="length", help="x axis of task scores: length, or a swept task setting "
                                                  "(e.g. num_pairs)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_plot)

    g = sub.add_parser("generate", help="sample from a language-model run (constant-memory cache)")
    g.add_argument("run")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--tokenizer")
    g.add_argument("--device")
    g.set_defaults(fn=cmd_generate)

    for name, (_, what) in DELEGATES.items():
        sub.add_parser(name, help=what + " (see ovq " + name + " --help)", add_help=False)
    return ap


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATES:
        import importlib
        importlib.import_module(DELEGATES[argv[0]][0]).main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"ovq {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
