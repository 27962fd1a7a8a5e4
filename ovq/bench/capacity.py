"""Does a planted item keep a centroid of its own? OVQ's write alone, on synthetic keys, by N and length.

Why trained OVQ models lose recall at long lengths: the growth rule M(t) = N·t/(N + t) opens fewer new
centroids per chunk as t grows (about L·N²/(N + t)² per chunk of L tokens), so an item that arrives late
often gets no centroid of its own and is averaged into the nearest existing one. This probe measures that
directly, with no model: sequences of unit keys where filler tokens repeat a few directions (plus noise)
and ``num_items`` items, each a fresh random direction, sit at uniform random positions. After the whole
sequence is written (``OnlineDictionary.write``, chunk by chunk, exactly the op's write), each item's
*share* is its weight in the mean value of the centroid nearest its key (values are one-hot per item):
1 when it has a centroid of its own, 1/2 when merged with one other token. Reported: the fraction of
items *kept* (share >= 0.5, so the item still dominates what is read) and *alone* (share = 1).

    python -m ovq.bench.capacity --lengths 4096,16384,65536 --centroids 256,1024,4096,16384
"""

from __future__ import annotations

import argparse
import math

import torch

from ..ops.dictionary import OnlineDictionary
from ..ops.utils import GROWTH_RULES, check_growth, check_int, l2norm
from .common import environment, save_json


def synthetic_keys(batch: int, length: int, dim: int, num_items: int, num_filler: int, noise: float,
                   generator: torch.Generator, items_per_record: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unit keys [B, T, D], item positions [B, P], item directions [B, P, D]).

    ``items_per_record = R > 1`` places the items in records of R at positions s, s+2, ..., s+2(R-1) (the
    positional-recall layout ``k v_1 k v_2 ...``: R occurrences that must stay apart to be told apart).
    """
    for name, value in (("batch", batch), ("length", length), ("dim", dim), ("num_items", num_items),
                        ("num_filler", num_filler), ("items_per_record", items_per_record)):
        check_int(name, value)
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if num_items > length:
        raise ValueError(f"num_items ({num_items}) exceeds the length ({length})")
    filler_dirs = l2norm(torch.randn(batch, num_filler, dim, generator=generator))
    ids = torch.randint(0, num_filler, (batch, length), generator=generator)
    keys = filler_dirs.gather(1, ids[..., None].expand(-1, -1, dim))
    keys = l2norm(keys + noise / dim ** 0.5 * torch.randn(batch, length, dim, generator=generator))
    if items_per_record == 1:
        positions = torch.rand(batch, length, generator=generator).argsort(dim=-1)[:, :num_items].sort(dim=-1).values
    else:
        span, records = 2 * items_per_record, num_items // items_per_record
        if records * items_per_record != num_items or records > length // span:
            raise ValueError(f"{num_items} items do not make whole records of {items_per_record} in {length} tokens")
        starts = torch.rand(batch, length // span, generator=generator).argsort(dim=-1)[:, :records].sort(dim=-1).values
        positions = (starts[..., None] * span + 2 * torch.arange(items_per_record)).flatten(1)
    item_dirs = l2norm(torch.randn(batch, num_items, dim, generator=generator))
    keys.scatter_(1, positions[..., None].expand(-1, -1, dim), item_dirs)
    return keys, positions, item_dirs


def item_shares(keys: torch.Tensor, positions: torch.Tensor, item_dirs: torch.Tensor, max_centroids: int,
                chunk_size: int, growth: str = "saturating", growth_rate: float = 1.0) -> torch.Tensor:
    """[B, P]: each item's share of the mean value of its nearest centroid after the sequence (1: alone)."""
    b, length, dim = keys.shape
    check_int("max_centroids", max_centroids)
    check_int("chunk_size", chunk_size)
    if length % chunk_size:  # tokens past the last whole chunk are never written: items there would not count
        raise ValueError(f"the length ({length}) must be a multiple of chunk_size ({chunk_size})")
    num_items = positions.shape[1]
    rows, items = torch.arange(b)[:, None], torch.arange(num_items)[None, :]
    values = torch.zeros(b, length, num_items + 1)
    values[..., num_items] = 1.0                 # filler: the last one-hot
    values[rows, positions] = 0.0
    values[rows, positions, items] = 1.0         # item i: one-hot i
    dictionary = OnlineDictionary(keys.new_zeros(b, 1, 0, dim), keys.new_zeros(b, 1, 0, num_items + 1),
                                  keys.new_zeros(b, 1, 0), max_centroids, growth, growth_rate)
    for end in range(chunk_size, length + 1, chunk_size):
        dictionary = dictionary.write(keys[:, None, end - chunk_size:end], values[:, None, end - chunk_size:end], end)
    directions = l2norm(dictionary.sum_k[:, 0])                            # [B, m, D]
    means = dictionary.sum_v[:, 0] / dictionary.count[:, 0, :, None]        # [B, m, P + 1]
    nearest = (item_dirs @ directions.transpose(1, 2)).argmax(dim=-1)       # [B, P]
    own = means.gather(1, nearest[..., None].expand(-1, -1, num_items + 1))  # [B, P, P + 1]
    return own.diagonal(dim1=1, dim2=2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--centroids", default="256,1024,4096,16384")
    ap.add_argument("--items", type=int, default=16, help="planted items per sequence (the recall task's pairs)")
    ap.add_argument("--items-per-record", type=int, default=1,
                    help="items in records of this many, 2 tokens apart (positional recall: 2)")
    ap.add_argument("--filler-directions", type=int, default=64, help="distinct filler keys (the task's filler ids)")
    ap.add_argument("--noise", type=float, default=0.5, help="filler key noise (norm, before normalizing)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--growth", default="saturating", choices=GROWTH_RULES,
                    help="the growth rule (a deployment setting, like N and L)")
    ap.add_argument("--growth-rate", type=float, default=1.0,
                    help="linear growth: centroids per token, M(t) = min(N, r t); r = N / T fills N at length T")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/capacity_cpu.json")
    args = ap.parse_args(argv)
    try:
        check_growth(args.growth, args.growth_rate)
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        gen = torch.Generator().manual_seed(args.seed)
        keys, positions, item_dirs = synthetic_keys(args.sequences, length, args.dim, args.items,
                                                    args.filler_directions, args.noise, gen, args.items_per_record)
        for n in [int(x) for x in args.centroids.split(",")]:
            share = item_shares(keys, positions, item_dirs, n, args.chunk_size, args.growth,
                                args.growth_rate).flatten()
            kept, quarter = share >= 0.5, (positions * 4 // length).flatten()
            by_quarter = [kept[quarter == i].float().mean().item() for i in range(4)]
            rows.append({"length": length, "N": n, "kept": kept.float().mean().item(),
                         "alone": (share >= 1 - 1e-6).float().mean().item(), "kept_by_quarter": by_quarter})
            print(f"T={length:>6} N={n:>6} kept {rows[-1]['kept']:.3f} alone {rows[-1]['alone']:.3f}  kept by quarter "
                  "of the sequence " + " ".join(f"{x:.2f}" for x in by_quarter), flush=True)
    path = save_json(args.out, {"benchmark": "ovq.bench.capacity", "args": vars(args), "environment": environment(),
                                "results": rows})
    print(f"saved {path}")
    return {"results": rows}


if __name__ == "__main__":
    main()
