"""Evaluation of trained runs: task scores across lengths and budgets N, LM loss by position.

These are what ``ovq eval`` runs; each returns plain dicts ready for JSON.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F

from ..ops.utils import check_int
from .checkpoint import load_checkpoint, weight_mismatch
from .jobs import JobConfig, build_model, deploy_budget, evaluate_task


def score_name(rows: list[dict]) -> str:
    """The score task evaluation rows carry: ``"accuracy"`` (recall tasks) or ``"squared_error"`` (regression)."""
    return "accuracy" if "accuracy" in rows[0] else "squared_error"


def load_run(run_dir, device="cpu", model_args: dict | None = None):
    """(model in eval mode, JobConfig) from a run folder's checkpoint.

    ``model_args`` override the run's model config where the weights stay valid, e.g. Mamba2's
    ``mamba2_chunk_size`` (the same function computed in other blocks; fla's PyTorch path needs large
    blocks at 64K) or a window size; an override that changes the weights' shapes fails."""
    state = load_checkpoint(run_dir)
    job = JobConfig(**state["extra"]["job"])
    if model_args:
        job = dataclasses.replace(job, model_args=job.model_args | model_args)
    vocab = state["model"].get("lm.model.embed_tokens.weight", state["model"].get("model.embed_tokens.weight"))
    model = build_model(job, vocab_size=None if vocab is None else vocab.shape[0])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        cause = (f"the model overrides {model_args} do not fit" if model_args
                 else "the model its job builds does not fit")
        raise ValueError(f"{cause} the weights of {run_dir}: {weight_mismatch(model, state['model'])}") from e
    return model.to(device).eval(), job


@torch.no_grad()
def evaluate_lengths(model, job: JobConfig, lengths, budgets=(None,), batches: int = 4, batch_size: int = 8,
                     device="cpu", task_sweep: dict | None = None, fill_length: int | None = None,
                     **task_overrides) -> list[dict]:
    """Score at every (length, N): accuracy for recall tasks, squared error / d for regression.

    ``task_sweep`` ({name: [values]}) also scores every combination of those task settings, e.g.
    ``{"num_pairs": [16, 64]}``: the capacity axis of the recall tasks at each length. Rows name the task
    settings they override (``task_args``). ``fill_length``: each N is deployed with linear growth that
    reaches it at that many tokens (:func:`~ovq.train.jobs.set_fill_length`)."""
    names = list(task_sweep or {})
    combos = [dict(zip(names, values)) for values in itertools.product(*(task_sweep or {}).values())]
    rows = []
    for n in budgets:
        deploy_budget(model, n, fill_length)
        for length in lengths:
            for combo in combos:
                settings = task_overrides | combo
                task = job.make_task(seq_len=length, **settings)
                row = {"task": job.task, "model": job.model, "length": length, "max_centroids": n,
                       "batches": batches, "batch_size": batch_size,
                       **({"task_args": settings} if settings else {}),
                       **evaluate_task(model, task, batch_size, batches, job.seed, device)}
                rows.append(row)
    return rows


@torch.no_grad()
def loss_by_position(model, documents, block: int = 1024, prefill: int = 4096, device="cpu") -> dict:
    """Mean next-token loss per ``block``-token block over whole documents (chunked through the cache)."""
    check_int("block", block)
    check_int("prefill", prefill)
    sums, counts = None, None
    for _, tokens in documents:
        tokens = tokens.to(device)
        n_blocks = math.ceil((len(tokens) - 1) / block)
        doc_sum = torch.zeros(n_blocks, dtype=torch.float64)
        doc_cnt = torch.zeros(n_blocks, dtype=torch.float64)
        cache = None
        for s in range(0, len(tokens) - 1, prefill):
            ids = tokens[s:s + prefill][None]
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            targets = tokens[s + 1:s + 1 + ids.shape[1]]
            losses = F.cross_entropy(out.logits[0, :len(targets)].float(), targets, reduction="none").double().cpu()
            pos = torch.arange(s, s + len(targets))
            doc_sum.index_add_(0, pos // block, losses)
            doc_cnt.index_add_(0, pos // block, torch.ones_like(losses))
        if sums is None or len(doc_sum) > len(sums):
            grow = (0, len(doc_sum) - (0 if sums is None else len(sums)))
            sums = F.pad(torch.zeros(0, dtype=torch.float64) if sums is None else sums, grow)
            counts = F.pad(torch.zeros(0, dtype=torch.float64) if counts is None else counts, grow)
        sums[:len(doc_sum)] += doc_sum
        counts[:len(doc_cnt)] += doc_cnt
    if sums is None:
        raise ValueError("no documents to evaluate")
    return {"block": block, "loss": (sums / counts.clamp_min(1)).tolist(), "tokens": counts.tolist()}
