"""Time the n-gram tilt's hint counting (train_gpt.NgramTilt) at the challenge's scale.

    python3 tests/bench_ngram.py [--tokens 40540160] [--docs 50000] [--device cpu]

Builds a validation-sized stream of log-normal documents (mean 811 tokens, sigma 1.0, as the
time model assumes) with repeated passages, plans it as per-document TTT would (the default
batch size and chunks) and times scoring_order + NgramTilt. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=40_540_160)
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.lognormal(0.0, 1.0, args.docs)
    lengths = np.maximum(2, (lengths / lengths.sum() * args.tokens).astype(np.int64))
    val = torch.from_numpy(rng.integers(2, 8192, int(lengths.sum()), dtype=np.int64))
    val[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = tg.BOS_ID
    # Boilerplate: copy a 1% slice of the stream into later documents, so contexts recur.
    n = len(val)
    for start in rng.integers(0, n - 2000, 200):
        dest = int(rng.integers(0, n - 2000))
        val[dest + 1:dest + 2000] = val[start + 1:start + 2000].clone()
    val = val.to(args.device)
    h = tg.Hyperparameters(environ={})
    started = time.perf_counter()
    docs = tg.split_documents(val.cpu(), tg.BOS_ID)
    plan = tg.plan_documents(docs, h, 1, 0)
    chunks = [h.doc_chunk_tokens(docs[b[0]][1]) for b in plan.batches]
    planned = time.perf_counter()
    order = tg.scoring_order(docs, plan.batches, chunks, val.device)
    ordered = time.perf_counter()
    tilt = tg.NgramTilt(val, order, tg.BOS_ID, h.ngram_order, h.ngram_threshold, h.ngram_beta)
    tilted = int(tilt.confident.sum())
    done = time.perf_counter()
    print(f"| tokens | documents | batches | plan | scoring order | hints | tilted targets |\n|---|---|---|---|---|---|---|\n"
          f"| {n:,} | {len(docs):,} | {len(plan.batches):,} | {planned - started:.1f} s | {ordered - planned:.1f} s | "
          f"{done - ordered:.1f} s | {tilted:,} |  (device {args.device}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
