"""An arithmetic time model of train_gpt.py on 8xH100 SXM: training steps, GPTQ, evaluation, size.

    python3 tests/bench_time_model.py                                  # the script's defaults
    python3 tests/bench_time_model.py --env NUM_LOOPS=0 TTT_MODE=docs --json out.json
    python3 tests/bench_time_model.py --data-path data/datasets/fineweb10B_sp8192   # real documents

Nothing runs on a GPU and nothing is measured: the script reads a configuration the way
train_gpt.py does (every knob an environment variable, --env on top), counts the work the code
does (matmul and attention FLOPs of every virtual layer, Newton-Schulz, the bytes of every
collective, GPTQ's Hessians and solve, every evaluation stage with its padding) and converts it
to seconds with the assumptions printed under the table. One parameter, the fraction of the
H100's bf16 peak that training achieves (MFU), is fitted to the #1 record (PR #1855: 4,945
steps in 599.6 s) and then checked, not re-fitted, against the 2026-04-09 record (PR #1493).

How far to trust it: training steps for shapes near the records' (11 x 512, 786K-token
batches) to within the #1493 check's error, a few percent; for very different shapes the
achieved fraction changes and the numbers are a guide only. GPTQ's FLOP count is a lower bound
(eager, fp32, launch-bound); its calibrated column scales PR #1855's measured Hessian time.
Evaluation at training's MFU is optimistic for per-document TTT (thousands of small chunk
steps): use its calibrated column, fitted to PR #1855's phased TTT and checked against PR #1530.
Compile time, data loading and Python overhead outside the step are not modelled.
Not collected by pytest (the name does not start with test_); tests/test_time_model.py runs it.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

# --- The public records the model is fitted to and checked against ---------------------------

RECORD_SHAPE = {
    "VOCAB_SIZE": "8192", "NUM_LAYERS": "11", "MODEL_DIM": "512", "NUM_HEADS": "8", "NUM_KV_HEADS": "4",
    "MLP_MULT": "4", "LOOP_START": "3", "LOOP_END": "5", "NUM_LOOPS": "2", "ENABLE_LOOPING_AT": "0.35",
    "TRAIN_BATCH_TOKENS": "786432", "TRAIN_SEQ_LEN": "2048", "PROGRESSIVE_CONTEXT": "", "EVAL_SEQ_LEN": "2048",
    "GPTQ_CALIB_BATCHES": "16",
}
# PR #1855 (#1 record): 4,945 steps in 599,592 ms of training (looping on at step 2,178, 35 % of
# the time), ~8.2M tokens/s before looping; Hessians 4.6-4.9 s; phased TTT 455-509 s on
# 47,851,520 validation tokens, of which the three global phases 75-84 s.
PR1855 = {**RECORD_SHAPE, "DOC_ATTENTION": "1", "MAX_WALLCLOCK_SECONDS": "599.592", "GPTQ_RESERVE_SECONDS": "0",
          "TTT_MODE": "phased", "TTT_LORA_RANK": "80", "TTT_DOC_CHUNK_TOKENS": "48", "TTT_DOC_BATCH": "64",
          "PHASED_TTT_PREFIX_DOCS": "2500", "PHASED_TTT_PHASES": "3", "GLOBAL_TTT_CHUNK_TOKENS": "32768",
          "TTT_SHORT_DOC_CHUNKS": "0", "TTT_LORA_TARGETS": "q,k,v,o,mlp,head"}
PR1855_STEPS = 4945
# PR #2014: PR #1855's shape with progressive context (1024 to 10 %, 2048 to 70 %, then 3072),
# eval context 3072 and a 4 s GPTQ reserve: 122.0 ms per step on average. A check, not a fit.
PR2014 = {**PR1855, "TRAIN_SEQ_LEN": "3072", "PROGRESSIVE_CONTEXT": "1024:0.1,2048:0.7", "EVAL_SEQ_LEN": "3072",
          "MAX_WALLCLOCK_SECONDS": "600", "GPTQ_RESERVE_SECONDS": "4"}
PR2014_MS_PER_STEP = 122.0
PR1855_TOKENS_PER_S_BEFORE = 8.2e6
PR1855_VAL_TOKENS = 47_851_520
PR1855_HESSIAN_S = (4.6, 4.9)
PR1855_TTT_S = (455.0, 509.0)
PR1855_PHASES_S = (75.0, 84.0)
# PR #1493 (2026-04-09 record): the same shape with plain causal attention, 4,550 steps in
# 588 s of training, 7.7M tokens/s before looping and ~6.1M after.
PR1493 = {**RECORD_SHAPE, "DOC_ATTENTION": "0", "MAX_WALLCLOCK_SECONDS": "600", "GPTQ_RESERVE_SECONDS": "12"}
PR1493_STEPS = 4550
PR1493_TOKENS_PER_S = (7.7e6, 6.1e6)
# PR #1530: per-document LoRA TTT (rank 96, 32-token chunks, no phases) in 338 s; assumed here
# on PR #1493's shape, the SP8192 validation split and batches of 64 documents.
PR1530 = {**PR1493, "TTT_MODE": "docs", "TTT_LORA_RANK": "96", "TTT_DOC_CHUNK_TOKENS": "32", "TTT_DOC_BATCH": "64",
          "TTT_SHORT_DOC_CHUNKS": "0", "TTT_LORA_TARGETS": "q,k,v,o,mlp,head"}
PR1530_TTT_S = 338.0
# Our own code, measured (README, First GPU run, 2026-11-26, one H200, PyTorch 2.11, document
# attention through flex_attention, before the varlen kernels and the fused loss): 938.7 ms per
# 786,432-token step before looping, 1,559.8 ms after (117.3 / 195.0 ms as 8-GPU steps). The H200
# has the H100's bf16 peak, so a second MFU fitted to it predicts what our code achieves.
OURS_H200 = {**RECORD_SHAPE, "DOC_ATTENTION": "1", "MICRO_BATCH_SEQS": "48"}
OURS_H200_STEP_S = (0.9387, 1.5598)

TTT_MODES = ("chunked", "docs", "phased")
EVAL_BUDGET_S = 600.0
ADAM_BYTES_PER_PARAM = 28  # read param, grad, two moments; write param, two moments (fp32)
SGD_BYTES_PER_PARAM = 32  # momentum SGD (read p, g, buf; write p, buf) + grad-norm clip (read g, scale g)


@dataclass(frozen=True)
class Assumptions:
    """Every number the conversion to seconds rests on (printed under the table)."""
    peak_flops: float = 989e12  # H100 SXM dense bf16 tensor-core peak, per GPU
    tf32_peak_flops: float = 494.5e12  # H100 SXM dense TF32: GPTQ's fp32 matmuls (allow_tf32 is on)
    bus_bandwidth: float = 400e9  # achieved NCCL bus bandwidth on 8xH100 SXM NVLink, bytes/s
    hbm_bandwidth: float = 2.6e12  # achieved HBM3 bandwidth of elementwise optimizer steps (~80 % of 3.35 TB/s)
    gptq_column_s: float = 60e-6  # GPTQ's per-column loop is launch-bound: ~8 small eager kernels per column
    val_tokens: int = 40_540_160  # FineWeb SP8192 validation split
    val_docs: int = 50_000
    doc_sigma: float = 1.0  # log-normal shape of document lengths (mean = val_tokens / val_docs)
    data_path: str = ""  # real shards instead of the log-normal: documents start at BOS (id 1)
    window_samples: int = 4096  # random training windows sampled for document-attention pairs
    seed: int = 0


@dataclass(frozen=True)
class Rates:
    """The fitted efficiencies (fractions of the bf16 peak) and the GPTQ time scale."""
    mfu: float  # training, fitted to PR #1855's steps
    our_mfu: float  # training, fitted to our own step before looping as measured on one H200
    docs_mfu: float  # per-document LoRA TTT scoring and training, fitted to PR #1855's TTT minus its phases
    phase_mfu: float  # the global SGD phases, fitted to PR #1855's phase time
    hessian_scale: float  # measured / FLOP-predicted seconds of PR #1855's GPTQ calibration + Hessians


# --- Documents: lengths, and attended pairs under the document mask ---------------------------


def lognormal_lengths(total: int, count: int, sigma: float, seed: int) -> np.ndarray:
    """`count` document lengths from a log-normal of shape `sigma`, scaled to sum to `total`."""
    raw = np.random.default_rng(seed).lognormal(0.0, sigma, count)
    lengths = np.maximum(1, np.round(raw * (total / raw.sum()))).astype(np.int64)
    lengths[np.argmax(lengths)] += total - int(lengths.sum())
    return lengths


def shard_document_lengths(files: list[Path]) -> np.ndarray:
    """Document lengths of concatenated shards: a document runs from a BOS to the next one."""
    tokens = np.concatenate([np.asarray(tg.load_data_shard(f)) for f in files])
    starts = np.flatnonzero(tokens == tg.BOS_ID)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    return np.diff(np.append(starts, len(tokens))).astype(np.int64)


@functools.lru_cache(maxsize=4)
def validation_lengths(a: Assumptions) -> np.ndarray:
    if a.data_path:
        return shard_document_lengths(tg.shard_files(a.data_path, "val"))
    return lognormal_lengths(a.val_tokens, a.val_docs, a.doc_sigma, a.seed)


@functools.lru_cache(maxsize=4)
def training_lengths(a: Assumptions) -> np.ndarray:
    """A training stream: the first train shard, else 100,000 documents like the validation's."""
    if a.data_path:
        train = sorted(Path(a.data_path).glob("fineweb_train_*.bin"))
        return shard_document_lengths(train[:1] or tg.shard_files(a.data_path, "val"))
    mean = a.val_tokens / a.val_docs
    return lognormal_lengths(int(mean * 100_000), 100_000, a.doc_sigma, a.seed + 1)


class DocStream:
    """A token stream cut into documents, for counting attended pairs under the document mask."""

    def __init__(self, lengths: np.ndarray):
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.length = int(np.sum(lengths))
        self.square_sums = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) ** 2)])

    def pairs(self, window_starts: np.ndarray, width: int) -> np.ndarray:
        """Sum of len^2 / 2 over the document pieces inside each window [start, start + width)."""
        starts = np.asarray(window_starts, dtype=np.int64)
        ends = starts + width
        first = np.searchsorted(self.starts, starts, side="right")  # first document start inside
        last = np.searchsorted(self.starts, ends, side="left") - 1  # last document start inside
        inside = last >= first  # at least one document starts inside: cut into head, whole documents, tail
        first, last = np.minimum(first, len(self.starts) - 1), np.maximum(last, 0)
        head = np.where(inside, self.starts[first] - starts, width)
        tail = np.where(inside, ends - self.starts[last], 0)
        middle = np.where(inside, self.square_sums[last] - self.square_sums[first], 0)
        return (head.astype(np.float64) ** 2 + middle + tail.astype(np.float64) ** 2) / 2


@functools.lru_cache(maxsize=16)
def training_pairs_per_window(seq_len: int, a: Assumptions) -> float:
    """Expected attended pairs of a training window at a random offset, document mask on."""
    stream = DocStream(training_lengths(a))
    offsets = np.random.default_rng(a.seed + 2).integers(0, max(stream.length - seq_len, 1), a.window_samples)
    return float(stream.pairs(offsets, seq_len).mean())


# --- Counting the model ----------------------------------------------------------------------


class Counts:
    """Parameter and FLOP counts of one configuration."""

    def __init__(self, h: tg.Hyperparameters):
        self.h, self.cfg = h, h.model_config()
        with torch.device("meta"):
            self.model = tg.GPT(self.cfg)
        c = self.cfg
        self.D, self.kv, self.M, self.V = c.model_dim, c.kv_dim, c.mlp_dim, c.vocab_size
        self.unlooped = tg.virtual_layers(c.num_layers, c.loop_start, c.loop_end, c.num_loops, False)
        self.looped = tg.virtual_layers(c.num_layers, c.loop_start, c.loop_end, c.num_loops, True)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.banks = [tuple(p.shape) for p in self.model.bank_parameters()]
        self.bank_params = sum(math.prod(s) for s in self.banks)

    def matmul_params(self, schedule: list[tuple[int, int]]) -> int:
        """Matmul weights one token touches: q, k, v, o, MLP up/down of every virtual layer,
        the per-pass LoRA on repeated passes, and the tied output head."""
        D, kv, M = self.D, self.kv, self.M
        dims = {"q": (D, D), "k": (kv, D), "v": (kv, D), "o": (D, D), "up": (M, D), "down": (D, M)}
        per_layer = sum(o * i for o, i in dims.values())
        lora = self.cfg.pass_lora_rank * sum(o + i for t, (o, i) in dims.items() if t in self.cfg.pass_lora_targets)
        repeats = sum(1 for _, p in schedule if p > 0)
        return len(schedule) * per_layer + repeats * lora + self.V * D

    def attention_flops(self, schedule: list[tuple[int, int]], pairs: float) -> float:
        """Forward FLOPs of QK^T and AV over `pairs` attended (query, key) pairs, all layers."""
        return 4.0 * self.cfg.num_heads * self.cfg.head_dim * pairs * len(schedule)

    def ttt_lora_params(self, rank: int) -> int:
        """Per-document TTT adapter weights of one document (= matmul weights per token): rank-r
        factors on each of TTT_LORA_TARGETS (q, k, v, o and a D x D MLP adapter per virtual
        layer; the head once)."""
        D, kv, targets = self.D, self.kv, self.h.ttt_targets()
        sizes = {"q": D + D, "k": D + kv, "v": D + kv, "o": D + D, "mlp": D + D}
        per_slot = rank * sum(size for t, size in sizes.items() if t in targets)
        return len(self.looped) * per_slot + (rank * (D + self.V) if "head" in targets else 0)

    def newton_schulz_flops(self, world_size: int) -> float:
        """One rank's Newton-Schulz FLOPs: its ceil(matrices / world_size) of every bank."""
        total = 0.0
        for count, rows, cols in self.banks:
            r, c = min(rows, cols), max(rows, cols)
            total += math.ceil(count / world_size) * self.h.newton_schulz_steps * (4 * r * r * c + 2 * r ** 3)
        return total

    def step_comm_bytes(self, world_size: int) -> float:
        """Bytes one rank moves per step (ring): bank gradients reduce-scattered in fp32, updates
        all-gathered in bf16 (banks padded to a multiple of the world size), AdamW all-reduce."""
        if world_size == 1:
            return 0.0
        share = (world_size - 1) / world_size
        padded = sum(math.ceil(count / world_size) * world_size * rows * cols for count, rows, cols in self.banks)
        return share * padded * 4 + share * padded * 2 + 2 * share * (self.params - self.bank_params) * 4


def allreduce_seconds(params: int, world_size: int, a: Assumptions) -> float:
    return 0.0 if world_size == 1 else 2 * (world_size - 1) / world_size * params * 4 / a.bus_bandwidth


def padded_rows(count: int, batch: int) -> int:
    """Rows score_windows() runs for `count` windows: whole batches (fewer windows than a
    batch are padded to the next power of two)."""
    if count <= 0:
        return 0
    batch = min(batch, 1 << (count - 1).bit_length())
    return math.ceil(count / batch) * batch


# --- Training --------------------------------------------------------------------------------


def state_fractions(h: tg.Hyperparameters) -> list[tuple[tuple[int, bool], float]]:
    """((row length, looping), fraction of the budget) of each stretch of training, in order, as
    train_model switches them (h.context_at and ENABLE_LOOPING_AT at the stretch's start)."""
    loop_at = h.enable_looping_at if h.num_loops > 0 else 1.0
    points = sorted({0.0, 1.0, *(until for _, until in h.context_phases()[:-1]), *([loop_at] if 0 < loop_at < 1 else [])})
    return [((h.context_at(p0), h.num_loops > 0 and p0 >= loop_at), p1 - p0) for p0, p1 in zip(points, points[1:])]


def training(counts: Counts, world_size: int, a: Assumptions, mfu: float) -> dict:
    """Step time of every (row length, looping) state, and the steps the budget holds.
    "before" / "after" are the unlooped / looped states at the longest rows each reaches."""
    h = counts.h
    tokens = h.train_batch_tokens
    comm_bytes = counts.step_comm_bytes(world_size)
    comm_s = comm_bytes / a.bus_bandwidth
    ns = counts.newton_schulz_flops(world_size)
    out = {"comm_bytes_per_rank": comm_bytes, "comm_s": comm_s, "newton_schulz_flops_per_rank": ns, "states": []}
    for (length, looped), fraction in state_fractions(h):
        schedule = counts.looped if looped else counts.unlooped
        full_pairs = length ** 2 / 2
        pairs = training_pairs_per_window(length, a) if h.doc_attention else full_pairs
        matmul = 6.0 * tokens * counts.matmul_params(schedule)
        attention = 3.0 * tokens / length * counts.attention_flops(schedule, pairs)
        per_rank = (matmul + attention) / world_size + ns
        step_s = per_rank / (a.peak_flops * mfu) + comm_s
        out["states"].append({"seq_len": length, "looped": looped, "fraction": fraction, "virtual_layers": len(schedule),
                              "matmul_params_per_token": counts.matmul_params(schedule), "pairs_per_window": pairs,
                              "pairs_fraction_of_causal": pairs / full_pairs, "matmul_flops": matmul,
                              "attention_flops": attention, "flops_per_rank": per_rank, "step_s": step_s,
                              "tokens_per_s_per_gpu": tokens / world_size / step_s})
    for name, looped in (("before", False), ("after", True)):  # a run without one of them: the other twice
        chosen = [st for st in out["states"] if st["looped"] == looped] or out["states"]
        out[name] = max(chosen, key=lambda st: st["seq_len"])
    out.update(steps_in_budget(h, out["states"]))
    return out


def steps_in_budget(h: tg.Hyperparameters, states: list[dict]) -> dict:
    """Steps before the clock (MAX_WALLCLOCK_SECONDS - GPTQ_RESERVE_SECONDS) runs out, each state
    taking its fraction of it at its own step time; ITERATIONS caps it (and alone, without a clock)."""
    clock = h.max_wallclock_seconds - h.gptq_reserve_seconds if h.max_wallclock_seconds > 0 else 0.0
    steps, seconds, loop_from = 0.0, 0.0, None
    for st in states:
        if st["looped"] and loop_from is None:
            loop_from = steps
        n = min(st["fraction"] * clock / st["step_s"], h.iterations - steps) if clock else st["fraction"] * h.iterations
        st["steps"] = n
        steps, seconds = steps + n, seconds + n * st["step_s"]
    return {"clock_s": clock, "steps": steps, "loop_from_step": steps if loop_from is None else loop_from,
            "train_s": seconds, "ms_per_step": 1000 * seconds / max(steps, 1e-9)}


# --- GPTQ ------------------------------------------------------------------------------------


def gptq(counts: Counts, world_size: int, a: Assumptions, mfu: float) -> dict:
    """Calibration forwards + Hessian sums (X^T X, fp32 as TF32) + the solve, on the busiest rank."""
    h, D, M = counts.h, counts.D, counts.M
    if h.quant_method != "gptq":
        return {"calib_flops": 0.0, "hessian_flops": 0.0, "solve_flops": 0.0, "columns": 0, "hessian_s": 0.0, "solve_s": 0.0}
    tokens = h.gptq_calib_batches * h.train_batch_tokens / world_size
    windows = tokens / h.train_seq_len
    # Eager calibration: a document mask goes through SDPA as a dense mask (all T^2 pairs).
    pairs = h.train_seq_len ** 2 if h.doc_attention else h.train_seq_len ** 2 / 2
    calib = 2.0 * tokens * counts.matmul_params(counts.looped) + windows * counts.attention_flops(counts.looped, pairs)
    # Inputs recorded per visit: attention in (q, k, v), attention out (o), MLP in (up), MLP act (down); final (embedding).
    hessian = tokens * (len(counts.looped) * 2.0 * (3 * D * D + M * M) + 2.0 * D * D)
    params = dict(counts.model.named_parameters())
    solve, columns = [0.0] * world_size, [0] * world_size
    for i, (name, _, _) in enumerate(tg.quant_units(counts.model)):
        rows, cols = params[name].shape[-2:]
        solve[i % world_size] += rows * cols * cols + cols ** 3  # error propagation + Cholesky inverse
        columns[i % world_size] += cols
    rank_s = [s / (a.tf32_peak_flops * mfu) + c * a.gptq_column_s for s, c in zip(solve, columns)]
    busiest = int(np.argmax(rank_s))
    hessian_s = calib / (a.peak_flops * mfu) + hessian / (a.tf32_peak_flops * mfu)
    return {"calib_flops": calib, "hessian_flops": hessian, "solve_flops": solve[busiest], "columns": columns[busiest],
            "hessian_s": hessian_s, "solve_s": rank_s[busiest]}


# --- Evaluation ------------------------------------------------------------------------------


def val_documents(lengths: np.ndarray) -> list[tuple[int, int]]:
    """(start, targets) of every document, as train_gpt.split_documents gives them."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    targets = lengths.copy()
    targets[-1] -= 1
    return [(int(s), int(n)) for s, n in zip(starts, targets) if n > 0]


def mean_pairs(h: tg.Hyperparameters, stream: DocStream, starts: np.ndarray, width: int) -> float:
    """Mean attended pairs of windows [start, start + width): document mask or plain causal."""
    return float(stream.pairs(starts, width).mean()) if h.doc_attention else width ** 2 / 2


def stream_eval(counts: Counts, world_size: int, stream: DocStream, a: Assumptions, rate: float) -> dict:
    """Roundtrip, sliding and chunked TTT: windows over the whole stream, split over ranks."""
    h, W = counts.h, counts.h.eval_seq_len
    P = counts.matmul_params(counts.looped)
    targets = stream.length - 1

    def forward(rows: int, width: int, pairs: float) -> float:
        return rows * (2.0 * P * width + counts.attention_flops(counts.looped, pairs))

    full = tg.sliding_windows(stream.length, W, W)
    width = int(full.ends[0] - full.starts[0])
    roundtrip = forward(padded_rows(math.ceil(len(full) / world_size), h.eval_batch_seqs), width,
                        mean_pairs(h, stream, full.starts, width))
    win = tg.sliding_windows(stream.length, W, h.eval_stride)
    pairs = mean_pairs(h, stream, win.starts, width)
    sliding = forward(padded_rows(math.ceil(len(win) / world_size), h.eval_batch_seqs), width, pairs)
    out = {"roundtrip": {"flops_per_rank": roundtrip, "seconds": roundtrip / rate},
           "sliding": {"flops_per_rank": sliding, "seconds": sliding / rate, "enabled": bool(h.sliding_enabled)}}

    # Chunked TTT: each chunk's sliding windows scored (split over ranks), then TTT_EPOCHS of
    # training on its tokens in steps of TTT_BATCH_SEQS sequences (each rank a fixed share of rows).
    per_chunk = np.bincount(win.score_from // h.ttt_chunk_tokens)
    score = forward(sum(padded_rows(math.ceil(int(c) / world_size), h.eval_batch_seqs) for c in per_chunk), width, pairs)
    frozen = 0 if h.ttt_params == "all" else counts.bank_params + counts.V * counts.D
    matmul_factor = 6.0 if h.ttt_params == "all" else 4.0  # frozen banks/embedding: no weight gradients
    train, steps = 0.0, 0
    per_rank = math.ceil(h.ttt_batch_seqs / world_size)
    for chunk in range(len(per_chunk) - 1):  # the last chunk is never trained on
        end = min((chunk + 1) * h.ttt_chunk_tokens, targets)
        starts, _ = tg.chunk_training_pieces(chunk * h.ttt_chunk_tokens, end, W)
        piece = min(W, end)
        chunk_steps = math.ceil(len(starts) / h.ttt_batch_seqs) * h.ttt_epochs
        steps += chunk_steps
        train += chunk_steps * per_rank * (matmul_factor * P * piece
                                           + 3 * counts.attention_flops(counts.looped, mean_pairs(h, stream, starts, piece)))
    trainable = counts.params - frozen
    other = steps * (allreduce_seconds(trainable, world_size, a) + trainable * SGD_BYTES_PER_PARAM / a.hbm_bandwidth)
    out["chunked"] = {"flops_per_rank": score + train, "optimizer_steps": steps, "other_s": other,
                      "seconds": (score + train) / rate + other}
    return out


@dataclass
class DocWork:
    """Per-document TTT work of one plan, ready to be turned into seconds at any FLOP rate."""
    flops: np.ndarray  # per batch, on the rank that owns it
    adam_s: np.ndarray  # per batch: the adapters' Adam steps (memory-bound)
    owner: np.ndarray
    stretch: np.ndarray  # which stretch between global phases each batch falls in
    phase_flops: list  # per phase, busiest rank
    phase_other_s: list  # per phase: gradient all-reduces and SGD steps
    padded_tokens: int
    chunk_steps: int  # forward(+backward) passes over a batch, all ranks

    def loads(self, docs_rate: float) -> np.ndarray:
        """Seconds of per-document work of every (stretch between phases, rank)."""
        load = np.zeros((int(self.stretch.max()) + 1, int(self.owner.max()) + 1))
        np.add.at(load, (self.stretch, self.owner), self.flops / docs_rate + self.adam_s)
        return load

    def seconds(self, docs_rate: float, phase_rate: float) -> tuple[float, float]:
        """(per-document scoring and training, global phases): each stretch lasts as long as its busiest rank."""
        phases = sum(f / phase_rate + o for f, o in zip(self.phase_flops, self.phase_other_s))
        return float(self.loads(docs_rate).max(axis=1).sum()), float(phases)


def doc_work(counts: Counts, world_size: int, lengths: np.ndarray, phases: int, a: Assumptions) -> DocWork:
    """TTT_MODE=docs (phases=0) or phased: per batch of TTT_DOC_BATCH documents (longest first),
    chunk c runs every row at width min((c+1)*chunk, EVAL_SEQ_LEN), padding included; every chunk
    but the batch's last also runs backward (frozen base: input gradients only) and an Adam step."""
    h, W, R = counts.h, counts.h.eval_seq_len, counts.h.ttt_doc_batch
    docs = val_documents(lengths)
    plan = tg.plan_documents(docs, h, world_size, phases)
    P = counts.matmul_params(counts.looped)
    lora = counts.ttt_lora_params(h.ttt_lora_rank)
    flops, adam_s, padded, chunk_steps = [], [], 0, 0
    for batch in plan.batches:
        C = h.doc_chunk_tokens(docs[batch[0]][1])  # short batches: 8- or 24-token chunks (PR #2014)
        chunks = math.ceil(docs[batch[0]][1] / C)
        widths = np.minimum((np.arange(chunks) + 1) * C, W).astype(np.float64)
        fwd_tokens, train_tokens = R * widths.sum(), R * widths[:-1].sum()
        fwd_pairs, train_pairs = R * (widths ** 2).sum() / 2, R * (widths[:-1] ** 2).sum() / 2
        forward = fwd_tokens * 2.0 * (P + lora) + counts.attention_flops(counts.looped, fwd_pairs)
        backward = train_tokens * (2.0 * P + 4.0 * lora) + 2 * counts.attention_flops(counts.looped, train_pairs)
        flops.append(forward + backward)
        adam_s.append((chunks - 1) * R * lora * ADAM_BYTES_PER_PARAM / a.hbm_bandwidth)
        padded += int(fwd_tokens)
        chunk_steps += chunks
    stretch = np.searchsorted(np.array(plan.phase_ends, dtype=np.int64), np.arange(len(plan.batches)), side="right")
    phase_flops, phase_other = [], []
    for end in plan.phase_ends:
        done = [docs[d][1] + 1 for b in plan.batches[:end] for d in b]
        f, o = phase_work(counts, world_size, np.array(done, dtype=np.int64), a)
        phase_flops.append(f)
        phase_other.append(o)
    return DocWork(np.array(flops), np.array(adam_s), np.array(plan.owner), stretch, phase_flops, phase_other,
                   padded, chunk_steps)


def phase_work(counts: Counts, world_size: int, lengths: np.ndarray, a: Assumptions) -> tuple[float, float]:
    """One global SGD phase (one epoch over the scored documents, every weight trained) on the
    busiest rank: (FLOPs, seconds of gradient all-reduces and SGD steps)."""
    h, W, G = counts.h, counts.h.eval_seq_len, counts.h.global_ttt_chunk_tokens
    stream = DocStream(lengths)
    P = counts.matmul_params(counts.looped)
    targets = stream.length - 1
    per_step = math.ceil(G / W)
    per_rank = math.ceil(per_step / world_size)
    flops, steps = 0.0, 0
    for k in range(math.ceil(targets / G)):
        end = min((k + 1) * G, targets)
        starts, _ = tg.chunk_training_pieces(k * G, end, W)
        piece = min(W, end)
        chunk_steps = math.ceil(len(starts) / per_step)
        steps += chunk_steps
        flops += chunk_steps * per_rank * (6.0 * P * piece
                                           + 3 * counts.attention_flops(counts.looped, mean_pairs(h, stream, starts, piece)))
    other = steps * (allreduce_seconds(counts.params, world_size, a) + counts.params * SGD_BYTES_PER_PARAM / a.hbm_bandwidth)
    return flops, other


def ngram_seconds(h: tg.Hyperparameters, val_tokens: int, a: Assumptions) -> float:
    """NgramTilt's counts (docs and phased modes), computed up front on the device by every rank:
    memory-bound sorts and scans over the validation targets, at the achieved HBM bandwidth."""
    if not h.ngram_tilt:
        return 0.0
    sorts = 3 * 8 * 2 * 16 * val_tokens  # 3 radix sorts of int64 keys (order, context, pair): 8 passes, key + index in and out
    hashes = h.ngram_order * 3 * 8 * val_tokens  # per context token: read the shifted token and the hash, write the hash
    scans = 40 * 8 * val_tokens  # ~40 int64 passes of gathers, cumsums and cummaxes
    return (sorts + hashes + scans) / a.hbm_bandwidth


def evaluation(counts: Counts, world_size: int, lengths: np.ndarray, a: Assumptions, rates: Rates) -> dict:
    h = counts.h
    rate = a.peak_flops * rates.mfu
    out = stream_eval(counts, world_size, DocStream(lengths), a, rate)
    out["ngram_s"] = ngram_seconds(h, int(lengths.sum()), a)
    for mode, phases in (("docs", 0), ("phased", h.phased_ttt_phases)):
        work = doc_work(counts, world_size, lengths, phases, a)
        docs_s, phase_s = work.seconds(rate, rate)
        docs_cal, phase_cal = work.seconds(a.peak_flops * rates.docs_mfu, a.peak_flops * rates.phase_mfu)
        docs_rate = a.peak_flops * rates.docs_mfu
        loads = work.loads(docs_rate)
        out[mode] = {"flops_total": float(work.flops.sum() + world_size * sum(work.phase_flops)),
                     "longest_doc": int(lengths.max()),
                     "first_batch_s_calibrated": float(work.flops[0] / docs_rate + work.adam_s[0]),
                     "busiest_rank_s_calibrated": float(loads.max(axis=1).sum()),
                     "mean_rank_s_calibrated": float(loads.mean(axis=1).sum()),
                     "padded_tokens": work.padded_tokens, "chunk_steps": work.chunk_steps,
                     "phase_seconds": phase_s, "seconds": docs_s + phase_s,
                     "phase_seconds_calibrated": phase_cal, "seconds_calibrated": docs_cal + phase_cal}
    fixed = out["roundtrip"]["seconds"] + (out["sliding"]["seconds"] if h.sliding_enabled else 0.0)
    for mode in TTT_MODES:
        ttt = out[mode].get("seconds_calibrated", out[mode]["seconds"]) + (out["ngram_s"] if mode != "chunked" else 0.0)
        out[mode]["stage_total_s"] = fixed + ttt
        out[mode]["fits"] = fixed + ttt <= EVAL_BUDGET_S
    out["configured_mode"] = h.ttt_mode if h.ttt_enabled else "none"
    out["val_tokens"], out["val_docs"] = int(lengths.sum()), len(lengths)
    return out


# --- Calibration -----------------------------------------------------------------------------


def record(env: dict[str, str]) -> Counts:
    h = tg.Hyperparameters(environ=dict(env))
    h.validate(8)
    return Counts(h)


def solve_increasing(f, target: float, lo: float = 1e-4, hi: float = 1.0) -> float:
    """x in [lo, hi] with f(x) = target, for f increasing in x (bisection)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def scaled_lengths(lengths: np.ndarray, total: int) -> np.ndarray:
    """The same documents scaled to `total` tokens (another tokenizer's count of the same text)."""
    scaled = np.maximum(1, np.round(lengths * (total / lengths.sum()))).astype(np.int64)
    scaled[np.argmax(scaled)] += total - int(scaled.sum())
    return scaled


@functools.lru_cache(maxsize=4)
def calibrate(a: Assumptions) -> tuple[Rates, dict]:
    """Fit the training MFU to PR #1855's steps, the per-document TTT and phase efficiencies to
    its TTT time (on its validation documents: ours scaled to its 47,851,520 tokens), the GPTQ
    scale to its Hessian time; then check the MFU on PR #1493 and the TTT fit on PR #1530."""
    c1855 = record(PR1855)
    mfu = solve_increasing(lambda m: training(c1855, 8, a, m)["steps"], PR1855_STEPS)
    fit = training(c1855, 8, a, mfu)
    lengths = validation_lengths(a)
    scaled = scaled_lengths(lengths, PR1855_VAL_TOKENS)
    work = doc_work(c1855, 8, scaled, c1855.h.phased_ttt_phases, a)
    phases_s = sum(PR1855_PHASES_S) / 2
    docs_s = sum(PR1855_TTT_S) / 2 - phases_s
    docs_mfu = solve_increasing(lambda m: -work.seconds(a.peak_flops * m, a.peak_flops)[0], -docs_s)
    phase_mfu = solve_increasing(lambda m: -work.seconds(a.peak_flops, a.peak_flops * m)[1], -phases_s)
    hessian_scale = sum(PR1855_HESSIAN_S) / 2 / gptq(c1855, 8, a, mfu)["hessian_s"]
    ours = record(OURS_H200)
    our_mfu = solve_increasing(lambda m: -training(ours, 1, a, m)["before"]["step_s"], -OURS_H200_STEP_S[0])
    rates = Rates(mfu, our_mfu, docs_mfu, phase_mfu, hessian_scale)

    check = training(record(PR1493), 8, a, mfu)
    progressive = training(record(PR2014), 8, a, mfu)
    c1530 = record(PR1530)
    ttt_1530 = doc_work(c1530, 8, lengths, 0, a).seconds(a.peak_flops * docs_mfu, a.peak_flops)[0]
    checks = {
        "pr1855_steps": fit["steps"], "pr1855_ms_per_step": fit["ms_per_step"],
        "pr1855_tokens_per_s_before": fit["before"]["tokens_per_s_per_gpu"] * 8,
        "pr1855_tokens_per_s_after": fit["after"]["tokens_per_s_per_gpu"] * 8,
        "pr1493_steps": check["steps"], "pr1493_steps_error_pct": 100 * (check["steps"] / PR1493_STEPS - 1),
        "pr1493_tokens_per_s_before": check["before"]["tokens_per_s_per_gpu"] * 8,
        "pr1493_tokens_per_s_after": check["after"]["tokens_per_s_per_gpu"] * 8,
        "pr2014_ms_per_step": progressive["ms_per_step"],
        "pr2014_error_pct": 100 * (progressive["ms_per_step"] / PR2014_MS_PER_STEP - 1),
        "pr1530_ttt_s": ttt_1530, "pr1530_ttt_error_pct": 100 * (ttt_1530 / PR1530_TTT_S - 1),
        "ours_before_s": training(ours, 1, a, our_mfu)["before"]["step_s"],
        "ours_after_s": training(ours, 1, a, our_mfu)["after"]["step_s"],
    }
    return rates, checks


# --- The prediction --------------------------------------------------------------------------


def predict(h: tg.Hyperparameters, world_size: int, assumptions: Assumptions) -> dict:
    """Everything the table shows, as plain numbers (seconds, FLOPs, bytes)."""
    h.validate(world_size)
    rates, checks = calibrate(assumptions)
    counts = Counts(h)
    train = training(counts, world_size, assumptions, rates.mfu)
    train["at_our_mfu"] = training(counts, world_size, assumptions, rates.our_mfu)
    quant = gptq(counts, world_size, assumptions, rates.mfu)
    quant["seconds"] = quant["hessian_s"] + quant["solve_s"]
    quant["seconds_calibrated"] = quant["hessian_s"] * rates.hessian_scale + quant["solve_s"]
    quant["reserve_s"] = h.gptq_reserve_seconds
    quant["reserve_enough"] = quant["seconds_calibrated"] <= h.gptq_reserve_seconds
    lengths = validation_lengths(assumptions)
    ev = evaluation(counts, world_size, lengths, assumptions, rates)
    model_bytes = tg.predicted_model_bytes(counts.model, h)
    code_bytes = Path(tg.__file__).stat().st_size
    artifact = {"model_bytes": model_bytes, "code_bytes": code_bytes, "total_bytes": model_bytes + code_bytes,
                "limit_bytes": h.artifact_limit_bytes}
    artifact["fits"] = artifact["total_bytes"] <= artifact["limit_bytes"]
    return {"world_size": world_size, "params": counts.params, "train": train, "gptq": quant, "eval": ev,
            "artifact": artifact, "rates": asdict(rates), "checks": checks, "assumptions": asdict(assumptions)}


# --- Output ----------------------------------------------------------------------------------


def flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.3g} FLOP"


def rows(p: dict) -> list[tuple[str, str]]:
    t, q, e, art, n = p["train"], p["gptq"], p["eval"], p["artifact"], p["world_size"]
    b, f = t["before"], t["after"]
    out = [
        ("virtual layers, before / after looping", f"{b['virtual_layers']} / {f['virtual_layers']}"),
        ("matmul parameters per token, before / after", f"{b['matmul_params_per_token']:,} / {f['matmul_params_per_token']:,}"),
        ("training FLOPs per step (matmul + attention), before / after",
         f"{flops(b['matmul_flops'])} + {flops(b['attention_flops'])} / "
         f"{flops(f['matmul_flops'])} + {flops(f['attention_flops'])}"),
        ("attended pairs per row, longest unlooped rows (fraction of causal)",
         f"{b['pairs_per_window']:,.0f} ({b['pairs_fraction_of_causal']:.2f}) in rows of {b['seq_len']:,}"),
        ("training stretches: rows, looping, share of the clock: step time, steps",
         "; ".join(f"{st['seq_len']} {'looped' if st['looped'] else 'unlooped'} {100 * st['fraction']:.0f} %: "
                   f"{1000 * st['step_s']:.1f} ms, {st['steps']:,.0f}" for st in t["states"])),
        ("Newton-Schulz FLOPs per rank per step", flops(t["newton_schulz_flops_per_rank"])),
        ("collectives per rank per step", f"{t['comm_bytes_per_rank'] / 1e6:.0f} MB, {1000 * t['comm_s']:.2f} ms"),
        ("step time, before / after looping", f"{1000 * b['step_s']:.1f} / {1000 * f['step_s']:.1f} ms"),
        ("tokens/s per GPU, before / after looping", f"{b['tokens_per_s_per_gpu']:,.0f} / {f['tokens_per_s_per_gpu']:,.0f}"),
        (f"steps in the {t['clock_s']:.0f} s clock" if t["clock_s"] else "steps (no clock: ITERATIONS)",
         f"{t['steps']:,.0f} (looping from step {t['loop_from_step']:,.0f}), {t['ms_per_step']:.1f} ms/step average"),
        (f"steps at our measured MFU ({p['rates']['our_mfu']:.3f}; PR #1855's fit above: {p['rates']['mfu']:.3f})",
         f"{t['at_our_mfu']['steps']:,.0f}, {1000 * t['at_our_mfu']['before']['step_s']:.1f} / "
         f"{1000 * t['at_our_mfu']['after']['step_s']:.1f} ms per step before / after looping"),
        ("GPTQ: calibration + Hessians / solve (FLOP estimate)", f"{q['hessian_s']:.2f} s / {q['solve_s']:.2f} s "
                                                              f"({q['columns']:,} columns on the busiest rank)"),
        ("GPTQ total: FLOP estimate / scaled from PR #1855", f"{q['seconds']:.1f} s / {q['seconds_calibrated']:.1f} s vs "
         f"GPTQ_RESERVE_SECONDS={q['reserve_s']:g}: {'enough' if q['reserve_enough'] else 'NOT enough'}"),
        ("eval: roundtrip", f"{flops(e['roundtrip']['flops_per_rank'])} per rank, {e['roundtrip']['seconds']:.1f} s"),
        ("eval: sliding" + ("" if e["sliding"]["enabled"] else " (off; optional)"),
         f"{flops(e['sliding']['flops_per_rank'])} per rank, {e['sliding']['seconds']:.1f} s"),
        ("eval: TTT chunked", f"{flops(e['chunked']['flops_per_rank'])} per rank, {e['chunked']['seconds']:.1f} s "
                              f"({e['chunked']['optimizer_steps']:,} steps)"),
    ]
    for mode in ("docs", "phased"):
        m = e[mode]
        phases = f", phases {m['phase_seconds']:.1f} / {m['phase_seconds_calibrated']:.1f} s" if mode == "phased" else ""
        out.append((f"eval: TTT {mode} (training MFU / calibrated)",
                    f"{m['seconds']:.0f} / {m['seconds_calibrated']:.0f} s{phases}; {flops(m['flops_total'])} total, "
                    f"{m['padded_tokens'] / e['val_tokens']:.1f}x tokens with padding and context"))
    out.append(("eval: n-gram tilt counts (docs, phased; modelled at HBM bandwidth)",
                f"{e['ngram_s']:.2f} s" if e["ngram_s"] else "off"))
    d = e["docs"]
    out.append(("per-document TTT critical path (calibrated, docs mode)",
                f"the first batch (longest document: {d['longest_doc']:,} tokens) "
                f"{d['first_batch_s_calibrated']:.0f} s on one rank; "
                f"busiest rank {d['busiest_rank_s_calibrated']:.0f} s, mean rank {d['mean_rank_s_calibrated']:.0f} s"))
    extra = " + sliding" if e["sliding"]["enabled"] else ""
    for mode in TTT_MODES:
        mark = " (configured)" if mode == e["configured_mode"] else ""
        out.append((f"eval budget, roundtrip{extra} + TTT {mode}{mark}",
                    f"{e[mode]['stage_total_s']:.0f} s of {EVAL_BUDGET_S:.0f}: {'fits' if e[mode]['fits'] else 'OVER'}"))
    out.append(("artifact bytes (predicted model + code)",
                f"{art['total_bytes']:,} ({art['model_bytes']:,} + {art['code_bytes']:,}) vs {art['limit_bytes']:,}: "
                f"{'fits' if art['fits'] else 'OVER'}"))
    return out


def assumption_lines(p: dict) -> list[str]:
    a, r, c, e, n = p["assumptions"], p["rates"], p["checks"], p["eval"], p["world_size"]
    docs = (f"real shards in {a['data_path']}" if a["data_path"] else
            f"log-normal, sigma {a['doc_sigma']}, mean {a['val_tokens'] / a['val_docs']:.0f} tokens, seed {a['seed']}")
    return [
        f"- Hardware: {n} x H100 SXM, dense bf16 peak {a['peak_flops'] / 1e12:.0f} TFLOP/s per GPU "
        f"(TF32 {a['tf32_peak_flops'] / 1e12:.1f} for GPTQ's fp32 matmuls).",
        f"- Achieved fraction (MFU) {r['mfu']:.3f}: ONE parameter, fitted so PR #1855's shape (document attention, "
        f"599.592 s clock) gives {PR1855_STEPS:,} steps; it absorbs everything not counted (norms, rotary, "
        f"softcap, loss, optimizer elementwise work, kernel launches). Fit: {c['pr1855_steps']:,.0f} steps, "
        f"{c['pr1855_ms_per_step']:.1f} ms/step; {c['pr1855_tokens_per_s_before'] / 1e6:.2f}M tok/s before looping "
        f"(measured ~{PR1855_TOKENS_PER_S_BEFORE / 1e6:.1f}M), {c['pr1855_tokens_per_s_after'] / 1e6:.2f}M after.",
        f"- Check (not fitted), PR #1493 (no document attention, 588 s clock): {c['pr1493_steps']:,.0f} steps predicted vs "
        f"{PR1493_STEPS:,} measured ({c['pr1493_steps_error_pct']:+.1f} %); {c['pr1493_tokens_per_s_before'] / 1e6:.2f}M / "
        f"{c['pr1493_tokens_per_s_after'] / 1e6:.2f}M tok/s before / after looping vs ~{PR1493_TOKENS_PER_S[0] / 1e6:.1f}M / "
        f"~{PR1493_TOKENS_PER_S[1] / 1e6:.1f}M measured.",
        f"- Check (not fitted), PR #2014 (progressive context 1024/2048/3072, 596 s clock): "
        f"{c['pr2014_ms_per_step']:.1f} ms/step predicted vs {PR2014_MS_PER_STEP:.1f} measured ({c['pr2014_error_pct']:+.1f} %).",
        f"- Our own fit (second MFU, {r['our_mfu']:.3f}): our code as measured on one H200 (2026-11-26, flex_attention, "
        f"before the varlen kernels): {OURS_H200_STEP_S[0] * 1000:.1f} ms per step before looping (fitted), "
        f"{c['ours_after_s'] * 1000:.1f} ms predicted after vs {OURS_H200_STEP_S[1] * 1000:.1f} ms measured. Until a GPU "
        f"measures the varlen path, the truth for our code lies between the two fits.",
        f"- FLOPs: matmul 6 x tokens x weights touched (2x forward only); attention forward 4 x head_dim x heads per "
        f"attended pair per layer, x3 with backward; causal = T^2/2 pairs, document attention = sum of len^2/2 over the "
        f"documents in each window (block granularity of flex_attention ignored). Newton-Schulz "
        f"5 x (4r^2c + 2r^3) per matrix, ceil(matrices / world size) per rank.",
        f"- Collectives: ring, per rank (N-1)/N x size for reduce-scatter (fp32) and all-gather (bf16), 2(N-1)/N for "
        f"all-reduce (fp32), banks padded to a multiple of the world size as ParallelMuon pads them, at "
        f"{a['bus_bandwidth'] / 1e9:.0f} GB/s achieved NCCL bus bandwidth; assumed NOT overlapped "
        f"with compute (an upper bound: the reduce-scatter is launched async before the AdamW all-reduce).",
        f"- Documents: {docs}; validation {e['val_tokens']:,} tokens in {e['val_docs']:,} documents. Training windows: "
        f"{a['window_samples']:,} random offsets over a stream of such documents.",
        f"- GPTQ: calibration forwards (eager; a document mask runs dense) + X^T X per recorded input per visit "
        f"(2 d_in^2 per token) + solve (rows x cols^2 + cols^3 per matrix, round-robin over ranks) + "
        f"{a['gptq_column_s'] * 1e6:.0f} us per column (launch-bound loop; a guess, not measured). Calibrated column: "
        f"calibration + Hessians x {r['hessian_scale']:.2f} so PR #1855's shape takes its measured "
        f"{PR1855_HESSIAN_S[0]}-{PR1855_HESSIAN_S[1]} s.",
        f"- Evaluation at the training MFU, forward 2 x weights per token; padded score batches and the per-document "
        f"padding counted. Per-document TTT: frozen base, so backward = input gradients (2 x weights) + LoRA weight "
        f"gradients; Adam over the adapters memory-bound at {a['hbm_bandwidth'] / 1e12:.1f} TB/s "
        f"({ADAM_BYTES_PER_PARAM} B/param/step); global phases and chunked TTT add an fp32 all-reduce of the trained "
        f"weights and an SGD step ({SGD_BYTES_PER_PARAM} B/param) per optimizer step.",
        f"- Calibrated per-document TTT: efficiency {r['docs_mfu']:.3f} of peak for scoring/training and {r['phase_mfu']:.3f} "
        f"for the global phases (at training's MFU they would take {e['phased']['phase_seconds']:.0f} s here: PR #1855's "
        f"phases either did more work than counted or ran far below it, with 2 sequences per rank per step and a "
        f"full-weight all-reduce each step), fitted to PR #1855's phased TTT ({PR1855_TTT_S[0]:.0f}-{PR1855_TTT_S[1]:.0f} s, phases "
        f"{PR1855_PHASES_S[0]:.0f}-{PR1855_PHASES_S[1]:.0f} s; midpoints) on these documents scaled to "
        f"{PR1855_VAL_TOKENS:,} tokens. Check, PR #1530 (docs mode, rank 96, 32-token chunks, assumed batch 64 on "
        f"PR #1493's shape): {c['pr1530_ttt_s']:.0f} s predicted vs {PR1530_TTT_S:.0f} s ({c['pr1530_ttt_error_pct']:+.1f} %).",
        f"- Per-document TTT is dominated by the batch holding the longest document: every row runs at that "
        f"document's chunk count, so the length distribution's tail (sigma, the seed) decides both the prediction and "
        f"the calibrated efficiency; --data-path gives the real lengths.",
        f"- Eval budget {EVAL_BUDGET_S:.0f} s = roundtrip (+ sliding when SLIDING_ENABLED=1) + the TTT mode "
        f"(calibrated where available); model loading and compilation are not counted. Artifact: "
        f"train_gpt.predicted_model_bytes (rounded-Gaussian entropy) + this train_gpt.py's bytes (unwrapped).",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="train_gpt.py settings on top of the environment")
    p.add_argument("--nproc", type=int, default=8, help="GPUs (ranks)")
    p.add_argument("--data-path", default="", help="folder of shards: real document lengths instead of the log-normal")
    p.add_argument("--val-tokens", type=int, default=Assumptions.val_tokens)
    p.add_argument("--val-docs", type=int, default=Assumptions.val_docs)
    p.add_argument("--doc-sigma", type=float, default=Assumptions.doc_sigma, help="log-normal shape of document lengths")
    p.add_argument("--json", type=Path, help="also write the prediction here")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env takes KEY=VALUE, got {item!r}")
        overrides[key] = value
    assumptions = Assumptions(val_tokens=args.val_tokens, val_docs=args.val_docs, doc_sigma=args.doc_sigma,
                              data_path=args.data_path)
    try:
        h = tg.Hyperparameters(environ={**os.environ, **overrides})
        prediction = predict(h, args.nproc, assumptions)
    except (ValueError, FileNotFoundError) as e:  # a bad setting (ConfigError) or unreadable shards
        p.error(str(e))
    label = " ".join(args.env) or "defaults"
    print(f"| time model, {args.nproc} x H100 SXM, train_gpt.py {label} | value |\n|---|---|")
    for name, value in rows(prediction):
        print(f"| {name} | {value} |")
    print("\nAssumptions:")
    print("\n".join(assumption_lines(prediction)))
    if args.json:
        args.json.write_text(json.dumps(prediction, indent=1, default=lambda x: x.item()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
