"""Decoding benchmark of the Hugging Face models: cache memory and tokens/s vs context length.

    python -m ovq.bench.decode                      # swa-ovq vs swa-attn, 20m, contexts 4K, 64K, 256K (GPU)
    python -m ovq.bench.decode --size tiny --contexts 256,1024 --device cpu   # a quick check

For each model and context: the context is prefilled through the model's cache in chunks (``--prefill``
tokens per call, as a server would), then ``--new-tokens`` tokens are decoded one at a time. Reported:
the cache's bytes (``OVQCache.nbytes``), the device memory in use, and decode tokens/s (B = 1, greedy
steps timed with a device sync at both ends). Random weights: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..models import OVQForCausalLM, preset_config
from .common import environment, save_json


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(model, context: int, prefill: int, new_tokens: int, device) -> dict:
    vocab = model.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(context)
    cache = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    logits = None
    for s in range(0, context, prefill):
        ids = torch.randint(0, vocab, (1, min(prefill, context - s)), generator=g).to(device)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1:]
    _sync(device)
    prefill_s = time.perf_counter() - start
    cache_after_prefill = cache.nbytes()
    token = logits.argmax(-1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode_s = time.perf_counter() - start
    row = {"context": context, "prefill_s": prefill_s, "decode_tokens_per_s": new_tokens / decode_s,
           "ms_per_token": 1e3 * decode_s / new_tokens, "cache_bytes_after_prefill": cache_after_prefill,
           "cache_bytes_after_decode": cache.nbytes(), "new_tokens": new_tokens}
    if device.type == "cuda":
        row["allocated_bytes"] = torch.cuda.memory_allocated(device)
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="swa-ovq,swa-attn")
    ap.add_argument("--size", default="20m")
    ap.add_argument("--contexts", default="4096,65536,262144")
    ap.add_argument("--prefill", type=int, default=4096, help="tokens per prefill call")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-centroids", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/decode_h200.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name in args.models.split(","):
        config = preset_config(name, args.size, max_centroids=args.max_centroids)
        model = OVQForCausalLM(config).to(device=device, dtype=dtype).eval()
        measure(model, min(args.prefill, 256), args.prefill, 4, device)  # warm-up: compile kernels, allocator
        for context in (int(c) for c in args.contexts.split(",")):
            row = {"model": name, "size": args.size, "max_centroids": args.max_centroids, "dtype": str(dtype)}
            row |= measure(model, context, args.prefill, args.new_tokens, device)
            rows.append(row)
            print(row, flush=True)
        del model
    payload = {"benchmark": "ovq.bench.decode", "args": vars(args), "environment": environment(), "results": rows}
    path = save_json(args.out, payload)
    print(f"{'model':<10}{'context':>9}{'tok/s':>9}{'ms/tok':>8}{'cache MiB':>11}{'alloc MiB':>11}{'prefill s':>11}")
    for r in rows:
        alloc = r.get("allocated_bytes")
        print(f"{r['model']:<10}{r['context']:>9}{r['decode_tokens_per_s']:>9.1f}{r['ms_per_token']:>8.2f}"
              f"{r['cache_bytes_after_decode'] / 2**20:>11.2f}{(alloc / 2**20 if alloc else float('nan')):>11.1f}"
              f"{r['prefill_s']:>11.2f}")
    print(f"saved {path}")
    return payload


if __name__ == "__main__":
    main()
