"""The paper's synthetic-task experiments from one command (issue 5).

    python -m ovq.experiments recall --profile h200                 # every model, on the GPU
    python -m ovq.experiments recall --profile h200 --models swa-ovq-4096,swa-attn   # a subset (split runs)
    python -m ovq.experiments recall --profile smoke                # CPU, about a minute: checks the pipeline

For each model: train at the profile's length (``runs/<task>/<model>``; an interrupted run resumes), then
evaluate across lengths (``results/<task>/<model>.json``); the budget model is also evaluated at several
dictionary sizes N (the deployment knob); every model's cache is measured at two lengths and its size at
64K tokens computed (caches are affine in length). Last: plots and a Markdown table in ``results/<task>/``.
Steps already done are skipped, so the command can be rerun after a crash or split across sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: label -> (preset, OVQLMConfig overrides). The paper's comparison.
MODELS: dict[str, tuple[str, dict]] = {
    "swa-ovq-1024": ("swa-ovq", {"max_centroids": 1024}),
    "swa-ovq-4096": ("swa-ovq", {"max_centroids": 4096}),
    "swa-attn": ("swa-attn", {}),
    "swa-vq-1024": ("swa-vq", {"codebook_size": 1024}),
    "swa-vq-4096": ("swa-vq", {"codebook_size": 4096}),
    "mamba2": ("mamba2", {}),
    "gdn": ("gdn", {}),
    "swa": ("swa", {}),
}

#: training task config and the evaluation overrides (sparse queries: every answer must come from the context)
TASK_ARGS = {
    "recall": ({"vocab_size": 8192, "num_pairs": 64}, {"num_queries": 64}),
    "positional_recall": ({"vocab_size": 8192, "num_pairs": 32, "num_occurrences": 2}, {"num_queries": 32}),
    "linear_regression": ({"dim": 20}, {}),
}


@dataclass
class Profile:
    size: str
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    eval_lengths: list[int]
    eval_batches: int
    eval_batch_size: int
    budget_model: str
    budgets: list[int]
    models: list[str]
    precision: str = "bf16"
    model_args: dict = field(default_factory=dict)
    task_args: dict = field(default_factory=dict)  # per-profile overrides of TASK_ARGS' training config
    eval_task_args: dict = field(default_factory=dict)
    state_length: int = 65536


PROFILES = {
    # Sized for one H200: small models (d = 256, 4 layers) trained at 4K, evaluated to 64K.
    "h200": Profile(size="small", seq_len=4096, batch_size=16, steps=2000, lr=1e-3, warmup=100,
                    eval_lengths=[4096, 8192, 16384, 32768, 65536], eval_batches=4, eval_batch_size=4,
                    budget_model="swa-ovq-4096", budgets=[256, 1024, 4096, 16384], models=list(MODELS)),
    # A CPU check of the whole pipeline at toy size (no fla mixers: their kernels need a GPU).
    "smoke": Profile(size="tiny", seq_len=64, batch_size=16, steps=40, lr=3e-3, warmup=5, eval_lengths=[64, 128],
                     eval_batches=1, eval_batch_size=4, budget_model="swa-ovq-1024", budgets=[8, 32],
                     models=["swa-ovq-1024", "swa-attn", "swa-vq-1024", "swa"], precision="fp32",
                     model_args={"window_size": 8, "chunk_size": 8},
                     task_args={"vocab_size": 64, "num_pairs": 4, "num_filler_tokens": 8, "dim": 4},
                     eval_task_args={"num_queries": 4}, state_length=4096),
}


def _args(d: dict, flag: str) -> list[str]:
    return [x for k, v in d.items() for x in (flag, f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")]


def _task_config(task: str, profile: Profile) -> tuple[dict, dict]:
    train, evaluation = TASK_ARGS[task]
    from .tasks.registry import TASKS
    fields = {f.name for f in dataclasses.fields(TASKS[task].config_class)}
    train = {k: v for k, v in (train | profile.task_args).items() if k in fields}
    evaluation = {k: v for k, v in (evaluation | profile.eval_task_args).items() if k in fields}
    return train, evaluation


def _finished(run: Path, steps: int) -> bool:
    from .train import load_checkpoint
    try:
        return load_checkpoint(run)["step"] >= steps
    except (FileNotFoundError, ValueError):
        return False


@torch.no_grad()
def cache_bytes_at(run: Path, length: int, device) -> dict:
    """The model's cache at ``length`` tokens, from its measured size after two short prefills (affine)."""
    from .train.evaluate import load_run
    from .train.jobs import backbone_of
    model, _ = load_run(run, device)
    backbone = backbone_of(model)
    config = backbone.config
    sizes = []
    for n in (256, 512):
        if hasattr(backbone, "model"):  # OVQForCausalLM
            out = backbone(input_ids=torch.randint(0, config.vocab_size, (1, n), device=device), use_cache=True)
        else:  # OVQModel behind a regression read-in
            out = backbone(inputs_embeds=torch.randn(1, n, config.hidden_size, device=device), use_cache=True)
        sizes.append(out.past_key_values.nbytes())
    slope = (sizes[1] - sizes[0]) / 256
    return {"length": length, "cache_bytes": int(sizes[0] + slope * (length - 256)), "bytes_per_token": slope,
            "measured": {"256": sizes[0], "512": sizes[1]}}


def run(task: str, profile_name: str = "h200", models: list[str] | None = None, runs_root: str = "runs",
        results_root: str = "results", device: str | None = None) -> dict:
    from .cli.main import main as cli

    if task not in TASK_ARGS:
        raise ValueError(f"task must be one of {tuple(TASK_ARGS)}, got {task!r}")
    if profile_name not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile_name!r}")
    profile = PROFILES[profile_name]
    models = models or profile.models
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {tuple(MODELS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_args, eval_args = _task_config(task, profile)
    out_dir = Path(results_root) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"task": task, "profile": dataclasses.asdict(profile), "models": {}}
    for label in models:
        preset, overrides = MODELS[label]
        run_dir = Path(runs_root) / task / label
        if not _finished(run_dir, profile.steps):
            cli(["train", "--task", task, "--model", preset, "--size", profile.size, "--seq-len", str(profile.seq_len),
                 "--batch-size", str(profile.batch_size), "--steps", str(profile.steps), "--lr", str(profile.lr),
                 "--warmup", str(profile.warmup), "--precision", profile.precision, "--log-every", "25",
                 "--device", device, "--no-progress", "--out", str(run_dir),
                 *_args(train_args, "--task-arg"), *_args(profile.model_args | overrides, "--model-arg")])
        evals = {"lengths": out_dir / f"{label}.json"}
        if label == profile.budget_model:
            evals["budgets"] = out_dir / f"{label}-budgets.json"
        for kind, path in evals.items():
            if not path.exists():
                cli(["eval", str(run_dir), "--lengths", ",".join(map(str, profile.eval_lengths)),
                     "--batches", str(profile.eval_batches), "--batch-size", str(profile.eval_batch_size),
                     "--device", device, "--out", str(path), *_args(eval_args, "--task-arg"),
                     *(["--max-centroids", ",".join(map(str, profile.budgets))] if kind == "budgets" else [])])
        summary["models"][label] = {"run": str(run_dir), **{k: str(v) for k, v in evals.items()},
                                    "state_at": cache_bytes_at(run_dir, profile.state_length, device)}
    lengths_files = [summary["models"][m]["lengths"] for m in models]
    cli(["plot", *lengths_files, "--out", str(out_dir / "accuracy_vs_length.png")])
    if profile.budget_model in models:
        cli(["plot", summary["models"][profile.budget_model]["budgets"], "--out", str(out_dir / "budget_sweep.png")])
    (out_dir / "table.md").write_text(table(summary))
    from .io import atomic_write_json
    atomic_write_json(out_dir / "summary.json", summary)
    print((out_dir / "table.md").read_text())
    return summary


def table(summary: dict) -> str:
    """Markdown: score per model and length, and each model's cache at the profile's state length."""
    first = json.loads(Path(next(iter(summary["models"].values()))["lengths"]).read_text())["results"]
    metric = "accuracy" if "accuracy" in first[0] else "squared_error"
    lengths = [r["length"] for r in first]
    state_len = summary["profile"]["state_length"]
    lines = ["| model | " + " | ".join(f"{metric} @ {n:,}" for n in lengths) + f" | cache MiB @ {state_len:,} |",
             "| --- |" + " --- |" * (len(lengths) + 1)]
    for label, info in summary["models"].items():
        rows = {r["length"]: r[metric] for r in json.loads(Path(info["lengths"]).read_text())["results"]}
        lines.append(f"| {label} | " + " | ".join(f"{rows[n]:.3f}" for n in lengths)
                     + f" | {info['state_at']['cache_bytes'] / 2**20:,.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ovq.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=tuple(TASK_ARGS))
    ap.add_argument("--profile", default="h200", choices=tuple(PROFILES))
    ap.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--results", default="results")
    ap.add_argument("--device")
    args = ap.parse_args(argv)
    return run(args.task, args.profile, args.models.split(",") if args.models else None, args.runs, args.results,
               args.device)


if __name__ == "__main__":
    main()
