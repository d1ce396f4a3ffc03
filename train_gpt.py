"""Parameter Golf training script: a depth-recurrent GPT with per-pass adapters.

Train the model with the lowest FineWeb validation bits-per-byte that fits, with this file,
in a 16,000,000-byte artifact: 10 minutes of training and 10 of evaluation on 8xH100.

    torchrun --standalone --nproc_per_node=8 train_gpt.py        # GPUs: CUDA, NCCL, bf16, compile
    PRESET=cpu python3 train_gpt.py                               # a 2-core CPU, eager, < 10 minutes

Sections, in order: hyperparameters, data, model, optimizers, training loop, GPTQ export,
evaluation, main. Every knob is an environment variable (SETTINGS); the log-line contract used
by records/package.py is in records/README.md.
"""

import contextlib, copy, datetime, difflib, functools, glob, hashlib, importlib, io, itertools, json, math, os
import pickle, platform, re, signal, socket, sys, threading, time, warnings, zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# HYPERPARAMETERS
# Defaults: PR #2135's logged configuration (1.05651, the best valid 3-seed record: SP8192, 11 layers x 512, layers
# 3-5 looped twice more from 35% of training, 786,432 tokens per step in rows of 2,048; tests/test_defaults.py gives
# the reason for each of our differences). One table declares every setting, all checked before any work.

class ConfigError(ValueError):
    """An impossible or inconsistent setting; the message names the variable to change."""

class InputError(ValueError):
    """A file or package the run needs is missing, corrupt or at odds with the settings; the message says what to do."""

# PRESET=cpu: the whole pipeline on a 2-core CPU in about 8 minutes, on the local stdlib dataset (python3
# data/make_local_dataset.py --vocab-size 1024); by steps, not the clock, so a busy machine gives the same score.
# PRESET=pr2135: PR #2135's model without our per-pass adapters, to A/B them on this script. Explicit variables win.
PRESETS = {
    "cpu": {
        "VOCAB_SIZE": "1024", "DATA_PATH": "data/datasets/local_sp1024",
        "TOKENIZER_PATH": "data/tokenizers/local_1024_bpe.model", "NUM_LAYERS": "4", "MODEL_DIM": "128",
        "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "MLP_MULT": "3", "LOOP_START": "1", "LOOP_END": "2", "NUM_LOOPS": "1",
        "PARALLEL_RESIDUAL_START": "3", "TRAIN_SEQ_LEN": "256", "TRAIN_BATCH_TOKENS": "8192", "MICRO_BATCH_SEQS": "32",
        "PROGRESSIVE_CONTEXT": "", "MAX_WALLCLOCK_SECONDS": "0", "ITERATIONS": "360", "WARMUP_STEPS": "0",
        "COMPILE": "0", "VAL_LOSS_EVERY": "0", "MUON_MOMENTUM_WARMUP_STEPS": "100", "TRAIN_LOG_EVERY": "25",
        "EVAL_SEQ_LEN": "256", "EVAL_STRIDE": "64", "VAL_TOKENS_LIMIT": "65536",
        "TTT_CHUNK_TOKENS": "8192", "TTT_BATCH_SEQS": "32", "TTT_LR": "0.02",  # the best of a chunked TTT sweep
        # This set's long documents (the longest prefix one: 43,712 tokens): short batches, fewer chunks, smaller rank.
        "SLIDING_ENABLED": "1", "TTT_DOC_BATCH": "4", "TTT_DOC_CHUNK_TOKENS": "64", "TTT_LORA_RANK": "16",
        "PHASED_TTT_PREFIX_DOCS": "8", "PHASED_TTT_PHASES": "2",
        # The constants the quick start was first measured with (tests/RESULTS.md).
        "QK_GAIN_INIT": "5.0", "MATRIX_LR": "0.026", "TTT_LORA_LR": "1e-4", "TTT_WEIGHT_DECAY": "0.5",
        "TTT_LORA_TARGETS": "q,k,v,o,mlp,head", "TTT_SHORT_DOC_CHUNKS": "0", "NGRAM_TILT": "0",
        "AWQ_GROUPS": "0", "LQER_RANK": "0"},
    "pr2135": {"PASS_LORA_RANK": "0", "PASS_EMBED": "0"},
}
# Set by torchrun, read by setup_runtime(): not settings, but not typos either.
LAUNCHER_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
# Our prefixes, rare elsewhere: an unknown variable with one is almost surely a typo (TTT_LRR) and stops the run.
OWN_PREFIXES = ("TTT_", "PHASED_", "GLOBAL_TTT_", "GPTQ_", "MUON_", "EVAL_", "TRAIN_", "LOOP_", "PASS_", "EMA_",
                "EMBED_", "ATTN_", "MLP_", "XSA_", "SMEAR_", "SKIP_", "DOC_", "MATRIX_", "ARTIFACT_", "CHECKPOINT_",
                "EXPORT_", "VAL_", "NEWTON_", "QUANT_", "SLIDING_", "ROPE_", "LOGIT_", "TIED_", "NLL_", "DIST_",
                "PROGRESSIVE_", "CONTEXT_", "AWQ_", "LQER_")
ATTENTION_SETTINGS, TTT_MODES = ("auto", "fa3", "varlen", "flex", "sdpa"), ("chunked", "docs", "phased")
LORA_TARGETS, TTT_LORA_TARGETS = ("q", "k", "v", "o", "up", "down"), ("q", "k", "v", "o", "mlp", "head")
COMPRESSORS = ("brotli", "zstd", "lzma")
CHALLENGE_LIMIT_BYTES = 16_000_000  # code + model; also bounds what an artifact may ask the loader to build
BOS_ID = 1  # every document starts with it (the challenge's tokenizers: pad 0, bos 1, eos 2, unk 3)

@dataclass
class Knob:
    """One setting: its default (or a function of the settings read before it) and its check: a closed range
    [low, high], an open lower bound `above`, or choices. `model`: it shapes the model, so an artifact carries it."""
    name: str
    default: object
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    model: bool = False
    def parse(self, raw: str | None, h: "Hyperparameters"):
        default = self.default(h) if callable(self.default) else self.default
        if raw is None:
            return default
        if isinstance(default, bool) and raw not in ("0", "1"):
            raise ConfigError(f"{self.name}={raw!r} must be 0 or 1.")
        try:
            return raw == "1" if isinstance(default, bool) else type(default)(raw)
        except ValueError:
            raise ConfigError(f"{self.name}={raw!r} is not a valid {type(default).__name__}.") from None
    def problem(self, v) -> str | None:
        if self.choices is not None:
            return None if v in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if not math.isfinite(v):
            return "must be a finite number"
        if self.above is not None and not v > self.above:
            return f"must be greater than {self.above}"
        too_low, too_high = self.low is not None and v < self.low, self.high is not None and v > self.high
        if (too_low or too_high) and self.low is not None and self.high is not None:
            return f"must be between {self.low} and {self.high}"
        return f"must be at least {self.low}" if too_low else f"must be at most {self.high}" if too_high else None

def split_list(text: str) -> tuple[str, ...]:
    """"q, k,v" -> ("q", "k", "v"): the list-valued settings."""
    return tuple(part.strip() for part in text.split(",") if part.strip())

def default_data_path(h: "Hyperparameters") -> str:
    """The records' CaseOps data (PR #1729) when it has been downloaded, else the plain shards."""
    caseops = f"data/datasets/fineweb10B_sp{h.vocab_size}_caseops"
    return caseops if Path(caseops).is_dir() else f"data/datasets/fineweb10B_sp{h.vocab_size}"

def default_tokenizer(h: "Hyperparameters") -> str:
    kind = "caseops" if h.data_path.rstrip("/").endswith("_caseops") else "bpe"
    return f"data/tokenizers/fineweb_{h.vocab_size}_{kind}.model"

SETTINGS = [
    # Data and run identity.
    Knob("PRESET", ""), Knob("VOCAB_SIZE", 8192, 2, 65536, model=True),  # uint16 shards hold ids up to 65535
    Knob("DATA_PATH", default_data_path), Knob("TOKENIZER_PATH", default_tokenizer),
    Knob("BYTE_SIDECAR", "auto", choices=("auto", "0", "1")),  # CaseOps byte counts: auto, required, ignored
    Knob("RUN_ID", lambda h: time.strftime("run_%Y%m%d_%H%M%S")),
    Knob("SEED", 1337, 0, 2**32 - 2),  # numpy seeds are 32-bit; calibration uses SEED + 1
    Knob("VAL_TOKENS_LIMIT", 0, 0),  # score a prefix only (smoke runs; never a submission)
    # Model shape.
    Knob("NUM_LAYERS", 11, 1, 256, model=True), Knob("MODEL_DIM", 512, 2, 16384, model=True),
    Knob("NUM_HEADS", 8, 1, model=True), Knob("NUM_KV_HEADS", 4, 1, model=True),
    Knob("MLP_MULT", 4.0, above=0, high=64, model=True), Knob("ROPE_DIMS", 16, 0, model=True),
    Knob("ROPE_BASE", 10000.0, above=1, model=True),
    Knob("QK_GAIN_INIT", 5.0, above=0, model=True),  # PR #2135 (5.25 in PR #1953)
    Knob("LOGIT_SOFTCAP", 30.0, 0, model=True), Knob("TIED_EMBED_INIT_STD", 0.005, above=0, model=True),
    Knob("PARALLEL_RESIDUAL_START", 8, 0, model=True),  # two lanes from this decoder layer (PR #2135)
    # Depth recurrence and the per-pass adapters (ours).
    Knob("LOOP_START", 3, 0, model=True), Knob("LOOP_END", 5, 0, model=True), Knob("NUM_LOOPS", 2, 0, 16, model=True),
    Knob("ENABLE_LOOPING_AT", 0.35, 0, 1), Knob("PASS_LORA_RANK", 1, choices=(0, 1, 2), model=True),
    Knob("PASS_LORA_TARGETS", "q,k,v,o", model=True), Knob("PASS_EMBED", True, model=True),
    # The 2026-04-09 record's pieces (PR #1493) and the #1 record's additions (PR #1855).
    Knob("XSA_LAST_N", lambda h: h.num_layers, 0, model=True), Knob("LN_SCALE", True, model=True),
    Knob("SKIP_GATES", True, model=True), Knob("SMEAR_GATE", True, model=True), Knob("ATTN_GATE", True, model=True),
    Knob("ATTN_GATE_SCALE", 0.5, above=0, model=True), Knob("GATE_WINDOW", 12, 1, model=True),
    Knob("ORTHO_INIT", True, model=True), Knob("DOC_ATTENTION", True, model=True),
    Knob("ATTENTION_KERNEL", "auto", choices=ATTENTION_SETTINGS),
    # Training schedule.
    Knob("ITERATIONS", 20000, 1), Knob("MAX_WALLCLOCK_SECONDS", 600.0, 0),  # 0: no clock, exactly ITERATIONS steps
    Knob("GPTQ_RESERVE_SECONDS", 8.0, 0),  # calibration and GPTQ run inside the 600 s
    Knob("TRAIN_BATCH_TOKENS", 786_432, 1), Knob("TRAIN_SEQ_LEN", 2048, 1),  # PR #2135 (PR #2014 ends at 3072)
    # Progressive context (PR #2014, off as in PR #2135): rows of these lengths until these fractions of the budget
    # ("length:until,...", e.g. 1024:0.1,2048:0.7), then TRAIN_SEQ_LEN.
    Knob("PROGRESSIVE_CONTEXT", ""), Knob("CONTEXT_LR_RAMP_STEPS", 32, 0),  # LR back up over these steps after a switch
    Knob("MICRO_BATCH_SEQS", 48, 1),  # rows of TRAIN_SEQ_LEN: 98,304 tokens, PR #2135's per GPU
    Knob("WARMUP_STEPS", 20, 0), Knob("WARMDOWN_FRAC", 0.85, 0, 1), Knob("MIN_LR", 0.10, 0, 1),
    Knob("TRAIN_LOG_EVERY", 500, 1), Knob("VAL_LOSS_EVERY", 0, 0), Knob("COMPILE", True),
    Knob("DIST_TIMEOUT_SECONDS", 300.0, above=0),
    # Optimizers.
    Knob("MATRIX_LR", 0.028, 0),  # PR #2135 (0.026 in PR #1855)
    Knob("MUON_MOMENTUM", 0.97, 0, 0.9999), Knob("MUON_MOMENTUM_WARMUP_START", 0.92, 0, 0.9999),
    Knob("MUON_MOMENTUM_WARMUP_STEPS", 1500, 0), Knob("MUON_WD", 0.095, 0), Knob("MUON_ROW_NORM", True),
    Knob("NEWTON_SCHULZ_STEPS", 5, 1, 20), Knob("EMBED_LR", 0.03, 0), Knob("SCALAR_LR", 0.02, 0),
    Knob("ADAPTER_LR", 0.01, 0), Knob("EMBED_WD", 0.085, 0), Knob("ADAM_WD", 0.02, 0), Knob("BETA1", 0.9, 0, 0.9999),
    Knob("BETA2", 0.99, 0, 0.9999), Knob("GRAD_CLIP_NORM", 0.3, 0), Knob("EMA_ENABLED", True),
    Knob("EMA_HORIZON_FRAC", 0.0572, 1e-6, 1),  # decay 0.9965 over PR #2135's 4,994 steps
    # Export.
    Knob("QUANT_METHOD", "gptq", choices=("gptq", "rtn")), Knob("MATRIX_BITS", 6, 2, 8), Knob("EMBED_BITS", 7, 2, 8),
    Knob("ATTN_CLIP_SIGMAS", 13.0, above=0),
    Knob("MLP_CLIP_SIGMAS", 12.5, above=0),  # PR #2135's 11.5 does not fit 16 MB with brotli
    Knob("EMBED_CLIP_SIGMAS", 14.0, above=0), Knob("GPTQ_CALIB_BATCHES", 16, 1), Knob("GPTQ_DAMP", 0.01, above=0),
    Knob("GPTQ_BLOCK", 128, 1),
    # AWQ-lite (PR #1908, off as in PR #2135): the most salient input-column groups on an int8 grid in the GPTQ solve.
    Knob("AWQ_GROUPS", 0, 0), Knob("AWQ_GROUP_COLS", 64, 1),
    # LQER (PR #2135): a low-rank correction of the matrices with the largest quantisation error.
    Knob("LQER_RANK", 4, 0), Knob("LQER_TENSORS", 3, 1), Knob("LQER_GROUP", 32, 1),
    Knob("COMPRESSOR", "brotli", choices=COMPRESSORS), Knob("ARTIFACT_LIMIT_BYTES", CHALLENGE_LIMIT_BYTES, 1),
    Knob("ARTIFACT_PATH", "final_model.ptz"), Knob("CHECKPOINT_PATH", "final_model.pt"),  # "": no checkpoint
    Knob("EXPORT_ONLY", ""),  # a checkpoint to re-export and evaluate, no training
    Knob("EVAL_ONLY", False),  # evaluate ARTIFACT_PATH, no training
    # Evaluation and test-time training.
    Knob("EVAL_SEQ_LEN", 2560, 1),  # PRs #1953, #2135: also the per-document TTT context
    Knob("EVAL_STRIDE", 64, 1), Knob("EVAL_BATCH_SEQS", 32, 1), Knob("SLIDING_ENABLED", False),
    Knob("TTT_ENABLED", True), Knob("TTT_MODE", "phased", choices=TTT_MODES),
    # Per-document LoRA TTT (docs, phased): PR #1530, warm-start A from PR #1767, PR #2135's constants.
    Knob("TTT_DOC_CHUNK_TOKENS", 48, 1), Knob("TTT_SHORT_DOC_CHUNKS", False),  # PR #2014: 8 or 24 for short batches
    Knob("TTT_DOC_BATCH", 64, 1), Knob("TTT_LORA_RANK", 80, 1), Knob("TTT_LORA_ALPHA", 144.0, above=0),
    Knob("TTT_LORA_LR", 8e-5, 0), Knob("TTT_LORA_TARGETS", "q,v,o,mlp,head"),  # PR #2135: K off
    Knob("TTT_BETA1", 0.0, 0, 0.9999), Knob("TTT_BETA2", 0.99, 0, 0.9999), Knob("TTT_WEIGHT_DECAY", 2.0, 0),
    Knob("TTT_WARM_START_A", True),
    # Global SGD phases (phased): PRs #1610, #1626; one phase over 2,500 documents (PR #2135).
    Knob("PHASED_TTT_PREFIX_DOCS", 2500, 1), Knob("PHASED_TTT_PHASES", 1, 1), Knob("GLOBAL_TTT_LR", 1e-3, 0),
    Knob("GLOBAL_TTT_MOMENTUM", 0.9, 0, 0.9999), Knob("GLOBAL_TTT_CHUNK_TOKENS", 32768, 1),
    Knob("GLOBAL_TTT_GRAD_CLIP", 1.0, 0),
    # Chunked TTT (chunked): the 2026-04-09 record's score-first SGD on all weights.
    Knob("TTT_CHUNK_TOKENS", 32768, 1), Knob("TTT_EPOCHS", 3, 0), Knob("TTT_LR", 0.005, 0),
    Knob("TTT_MOMENTUM", 0.9, 0, 0.9999), Knob("TTT_GRAD_CLIP", 1.0, 0), Knob("TTT_BATCH_SEQS", 16, 1),
    # Token n-gram tilt of the per-document TTT score (PR #2135's constants), counts in scoring order.
    Knob("NGRAM_TILT", True), Knob("NGRAM_ORDER", 16, 1, 64), Knob("NGRAM_THRESHOLD", 0.8, above=0, high=1),
    Knob("NGRAM_BETA", 2.625, above=0, high=20),
    Knob("NLL_DUMP_PATH", ""),  # per-token NLL and bytes of the final stage, for audits
]
KNOBS, MODEL_FIELDS = {knob.name: knob for knob in SETTINGS}, [knob.name.lower() for knob in SETTINGS if knob.model]

class Hyperparameters:
    """Every setting, read from the environment over the PRESET, as the attribute of its lower-case name."""
    def __init__(self, environ: dict[str, str] | None = None):
        env = dict(os.environ if environ is None else environ)
        preset = env.get("PRESET", "")
        if preset and preset not in PRESETS:
            raise ConfigError(f"PRESET={preset!r} is unknown; choose one of {', '.join(PRESETS)} or leave it unset.")
        env, self.values = {**PRESETS.get(preset, {}), **env}, {}
        for knob in SETTINGS:
            raw = env.get(knob.name)
            # An empty string means "unset" for numbers and switches (the preset's value, else the default), but is a
            # value for strings: CHECKPOINT_PATH= turns the checkpoint off.
            if raw == "" and not isinstance(knob.parse(None, self), str):
                raw = PRESETS.get(preset, {}).get(knob.name)
            self.values[knob.name] = knob.parse(raw, self)
            setattr(self, knob.name.lower(), self.values[knob.name])
        self.unknown = sorted(name for name in env if name not in KNOBS and name not in LAUNCHER_VARIABLES
                              and (name.startswith(OWN_PREFIXES) or difflib.get_close_matches(name, KNOBS, 1, 0.85)))
    def lora_targets(self) -> tuple[str, ...]:
        return split_list(self.pass_lora_targets)
    def ttt_targets(self) -> tuple[str, ...]:
        return split_list(self.ttt_lora_targets)
    def context_phases(self) -> list[tuple[int, float]]:
        """(row length, fraction of the budget it lasts until) of each training phase, the last (TRAIN_SEQ_LEN, 1.0)."""
        phases = []
        for item in split_list(self.progressive_context):
            try:
                length, until = item.split(":")
                phases.append((int(length), float(until)))
            except ValueError:
                phases.append((0, 0.0))
            if not (phases[-1][0] >= 1 and 0 < phases[-1][1] < 1):
                raise ConfigError(f"PROGRESSIVE_CONTEXT={self.progressive_context!r}: {item!r} is not length:until with a "
                                  f"positive length and a fraction of the budget between 0 and 1 (e.g. 1024:0.1,2048:0.7).")
        return phases + [(self.train_seq_len, 1.0)]
    def context_at(self, progress: float) -> int:
        return next(length for length, until in self.context_phases() if progress < until or until == 1.0)
    def training_states(self) -> list[tuple[int, bool]]:
        """Every (row length, looping) pair a run meets, in order: each is its own compiled graph."""
        starts = [0.0] + [until for _, until in self.context_phases()[:-1]]
        if self.num_loops > 0 and 0 < self.enable_looping_at < 1:
            starts.append(self.enable_looping_at)
        states = [(self.context_at(p), self.num_loops > 0 and p >= self.enable_looping_at) for p in sorted(set(starts))]
        return list(dict.fromkeys(states))  # distinct, in order
    def doc_chunk_tokens(self, longest: int) -> int:
        """Chunk length for documents whose longest has `longest` targets: short batches take 8 or 24 (PR #2014)."""
        if self.ttt_short_doc_chunks:
            for limit, chunk in ((256, 8), (2000, 24)):
                if longest <= limit:
                    return min(chunk, self.ttt_doc_chunk_tokens)
        return self.ttt_doc_chunk_tokens
    def validate(self, world_size: int) -> None:
        """Fail at start, naming the variable: unknown names, each setting on its own, then the rules between them."""
        for name in self.unknown:
            match = difflib.get_close_matches(name, KNOBS, 1, 0.6)
            hint = f"did you mean {match[0]}? " if match else ""
            raise ConfigError(f"{name} is not a setting of train_gpt.py; {hint}unset it (the README lists every setting).")
        for name, value in self.values.items():
            if (problem := KNOBS[name].problem(value)) is not None:
                raise ConfigError(f"{name}={value} {problem}.")
        head_dim, phases = self.model_dim // self.num_heads, self.context_phases()
        unknown_lora = set(self.lora_targets()) - set(LORA_TARGETS)
        unknown_ttt = set(self.ttt_targets()) - set(TTT_LORA_TARGETS)
        windows, rem = divmod(self.train_batch_tokens, self.window_len)
        what = f"TRAIN_SEQ_LEN={self.train_seq_len}" if self.window_len == self.train_seq_len else (
            f"{self.window_len}, the least common multiple of TRAIN_SEQ_LEN={self.train_seq_len} and the "
            f"PROGRESSIVE_CONTEXT lengths")
        rules = [  # (what must hold, the message otherwise)
            (bool(self.run_id) and "/" not in self.run_id and self.run_id not in (".", ".."),
             f"RUN_ID={self.run_id!r} must be a non-empty file name (it names logs/RUN_ID.txt)."),
            (self.model_dim % self.num_heads == 0,
             f"MODEL_DIM={self.model_dim} must be divisible by NUM_HEADS={self.num_heads}."),
            (head_dim % 2 == 0, f"MODEL_DIM/NUM_HEADS={head_dim} must be even for rotary embeddings."),
            (self.num_heads % self.num_kv_heads == 0,
             f"NUM_KV_HEADS={self.num_kv_heads} must divide NUM_HEADS={self.num_heads}."),
            (self.rope_dims <= head_dim and self.rope_dims % 2 == 0,
             f"ROPE_DIMS={self.rope_dims} must be even and at most the head dimension {head_dim}."),
            (int(self.mlp_mult * self.model_dim) >= 1,
             f"MLP_MULT={self.mlp_mult} leaves the MLP without a hidden unit at MODEL_DIM={self.model_dim}."),
            (self.gate_window <= self.model_dim,
             f"GATE_WINDOW={self.gate_window} must be at most MODEL_DIM={self.model_dim}."),
            (self.num_loops == 0 or self.loop_start <= self.loop_end < self.num_layers,
             f"LOOP_START={self.loop_start}..LOOP_END={self.loop_end} must lie inside the {self.num_layers} layers "
             f"(0..{self.num_layers - 1})."),
            (not unknown_lora,
             f"PASS_LORA_TARGETS has unknown targets {sorted(unknown_lora)}; choose from {','.join(LORA_TARGETS)}."),
            (not unknown_ttt and self.ttt_targets(), f"TTT_LORA_TARGETS={self.ttt_lora_targets!r} must name some of "
             f"{','.join(TTT_LORA_TARGETS)} (unknown: {sorted(unknown_ttt)})."),
            (all(until < later_until and length < later
                 for (length, until), (later, later_until) in zip(phases, phases[1:])),
             f"PROGRESSIVE_CONTEXT={self.progressive_context!r} must list increasing lengths below TRAIN_SEQ_LEN="
             f"{self.train_seq_len}, each until an increasing fraction of the budget below 1 (e.g. 1024:0.1,2048:0.7; "
             f"empty: TRAIN_SEQ_LEN throughout)."),
            (rem == 0 and windows >= 1, f"TRAIN_BATCH_TOKENS={self.train_batch_tokens} must be a multiple of {what}."),
            (windows % world_size == 0, f"TRAIN_BATCH_TOKENS={self.train_batch_tokens} gives {windows} sequences of "
             f"{self.window_len} tokens, which do not split over {world_size} processes; use a multiple of "
             f"{self.window_len * world_size}."),
            (self.max_wallclock_seconds == 0 or self.max_wallclock_seconds > self.gptq_reserve_seconds,
             f"MAX_WALLCLOCK_SECONDS={self.max_wallclock_seconds} must exceed GPTQ_RESERVE_SECONDS="
             f"{self.gptq_reserve_seconds} (or be 0 for no clock)."),
            (self.eval_stride <= self.eval_seq_len,
             f"EVAL_STRIDE={self.eval_stride} must be between 1 and EVAL_SEQ_LEN={self.eval_seq_len}."),
            (self.ttt_doc_chunk_tokens <= self.eval_seq_len, f"TTT_DOC_CHUNK_TOKENS={self.ttt_doc_chunk_tokens} must be "
             f"at most EVAL_SEQ_LEN={self.eval_seq_len} (a chunk is scored inside one window of context)."),
            (self.phased_ttt_phases <= self.phased_ttt_prefix_docs, f"PHASED_TTT_PHASES={self.phased_ttt_phases} must "
             f"be at most PHASED_TTT_PREFIX_DOCS={self.phased_ttt_prefix_docs}."),
            (self.global_ttt_chunk_tokens >= self.eval_seq_len, f"GLOBAL_TTT_CHUNK_TOKENS="
             f"{self.global_ttt_chunk_tokens} must hold at least one EVAL_SEQ_LEN={self.eval_seq_len} sequence."),
            (self.val_tokens_limit != 1, "VAL_TOKENS_LIMIT=1 leaves nothing to score; use 0 (whole split) or at least 2."),
            (not (self.eval_only and self.export_only), "Set either EVAL_ONLY=1 or EXPORT_ONLY=path, not both."),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
    @functools.cached_property
    def tokenizer_sha256(self) -> str:
        """The tokenizer's fingerprint: artifacts and checkpoints record it, and a model is never scored with another
        tokenizer (a CaseOps and a plain one of one size share no meanings)."""
        return hashlib.sha256(Path(tokenizer_file(self.tokenizer_path)).read_bytes()).hexdigest()
    @property
    def window_len(self) -> int:
        """Tokens in one training window (targets: one more): every phase's rows tile it exactly."""
        return math.lcm(*(length for length, _ in self.context_phases()))
    def micro_batch(self, world_size: int) -> int:
        """Windows per micro-batch: the largest divisor of a process's windows within MICRO_BATCH_SEQS rows, or 1."""
        per_rank = self.train_batch_tokens // self.window_len // world_size
        most = max(1, self.micro_batch_seqs * self.train_seq_len // self.window_len)
        return max(d for d in range(1, min(most, per_rank) + 1) if per_rank % d == 0)
    def micro_batch_tokens(self, world_size: int) -> int:
        return self.micro_batch(world_size) * self.window_len
    def grad_accum_steps(self, world_size: int) -> int:
        return self.train_batch_tokens // self.window_len // world_size // self.micro_batch(world_size)
    def calibration_rows(self, world_size: int) -> int:
        """Rows of TRAIN_SEQ_LEN per GPTQ calibration forward: one training micro-batch's tokens."""
        return self.train_batch_tokens // self.train_seq_len // world_size // self.grad_accum_steps(world_size)
    def model_config(self) -> "ModelConfig":
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

class ModelConfig:
    """What an artifact or checkpoint carries: the SETTINGS marked `model` (PASS_LORA_TARGETS as a list), the BOS id."""
    def __init__(self, **settings):
        if unknown := set(settings) - set(MODEL_FIELDS) - {"bos_id"}:
            raise TypeError(f"ModelConfig has no setting {sorted(unknown)}")
        defaults = Hyperparameters(environ={})
        self.__dict__.update({**{name: getattr(defaults, name) for name in MODEL_FIELDS}, "bos_id": BOS_ID, **settings})
        if isinstance(self.pass_lora_targets, str):
            self.pass_lora_targets = list(split_list(self.pass_lora_targets))
    def __eq__(self, other) -> bool:
        return isinstance(other, ModelConfig) and self.__dict__ == other.__dict__
    def __repr__(self) -> str:
        return f"ModelConfig({self.__dict__})"
    head_dim = property(lambda self: self.model_dim // self.num_heads)
    kv_dim = property(lambda self: self.num_kv_heads * self.head_dim)
    mlp_dim = property(lambda self: int(self.mlp_mult * self.model_dim))
    loop_len = property(lambda self: self.loop_end - self.loop_start + 1 if self.num_loops > 0 else 0)

# ---------------------------------------------------------------------------------------------
# DATA
# Shards are the challenge's format: 256 little-endian int32 header words (magic, version, token count), then uint16
# token ids. Bits per byte counts the UTF-8 bytes of the decoded text (sentencepiece tables) or a CaseOps sidecar's.

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_WORDS = 20240520, 1, 256
SHARD_HEADER_BYTES = SHARD_HEADER_WORDS * 4

def load_data_shard(path: str | Path) -> np.ndarray:
    """Validate a shard's header and size, then memory-map its tokens (read-only uint16)."""
    path = Path(path)
    size = path.stat().st_size
    if size < SHARD_HEADER_BYTES:
        raise InputError(f"{path}: truncated shard ({size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header); "
                         f"re-download or rebuild it.")
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_WORDS)
    if header[0] != SHARD_MAGIC:
        raise InputError(f"{path}: wrong magic {int(header[0])} (expected {SHARD_MAGIC}); this is not a challenge shard.")
    if header[1] != SHARD_VERSION:
        raise InputError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION}).")
    num_tokens = int(header[2])
    expected = SHARD_HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise InputError(f"{path}: size mismatch: header says {num_tokens} tokens ({expected} bytes) but the file has "
                         f"{size} bytes; the shard is truncated or corrupt, re-download or rebuild it.")
    return np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES, shape=(num_tokens,))

def shard_files(data_path: str, split: str) -> list[Path]:
    # [0-9]: the byte sidecars fineweb_val_bytes_*.bin are not token shards.
    files = sorted(Path(p) for p in glob.glob(os.path.join(data_path, f"fineweb_{split}_[0-9]*.bin")))
    if not files:
        raise InputError(f"No {split} shards (fineweb_{split}_*.bin) in DATA_PATH={data_path}. Download them with "
                         f"'python3 data/cached_challenge_fineweb.py --variant sp8192' or build a local set with "
                         f"'python3 data/make_local_dataset.py', then set DATA_PATH to the folder it prints.")
    return files

class TrainLoader:
    """Seeded, world-size-independent stream of training sequences: windows of seq_len + 1 tokens at stride seq_len
    (each token a target once per epoch) in a seeded order; each step takes the next `global_seqs` and each process its
    contiguous slice of them, so ranks never share a sequence and any world size sees the same global batch."""
    def __init__(self, data_path: str, seq_len: int, global_seqs: int, rank: int, world_size: int, seed: int):
        self.shards = [load_data_shard(f) for f in shard_files(data_path, "train")]
        self.seq_len, self.global_seqs = seq_len, global_seqs
        self.rank, self.world_size, self.seed = rank, world_size, seed
        counts = [max((len(s) - 1) // seq_len, 0) for s in self.shards]
        self.window_starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts, dtype=np.int64)])
        self.num_windows = int(self.window_starts[-1])
        if self.num_windows < global_seqs:
            raise InputError(f"Training shards in {data_path} hold {self.num_windows} sequences of {seq_len + 1} tokens, "
                             f"fewer than one step's {global_seqs}; add data or lower TRAIN_BATCH_TOKENS.")
        self.reset()
    def reset(self, epoch: int = 0) -> None:
        """Start `epoch`: a permutation of all windows seeded by (SEED, epoch)."""
        self.epoch, self.cursor = epoch, 0
        self.order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
    def _window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.window_starts, index, side="right") - 1)
        start = (index - int(self.window_starts[shard])) * self.seq_len
        return self.shards[shard][start:start + self.seq_len + 1]
    def next_global_indices(self) -> np.ndarray:
        if self.cursor + self.global_seqs > self.num_windows:
            self.reset(self.epoch + 1)
        indices = self.order[self.cursor:self.cursor + self.global_seqs]
        self.cursor += self.global_seqs
        return indices
    def next_batch(self, device: torch.device) -> torch.Tensor:
        """This rank's share of the next global batch: (seqs, seq_len + 1) int64 tokens."""
        per_rank = self.global_seqs // self.world_size
        mine = self.next_global_indices()[self.rank * per_rank:(self.rank + 1) * per_rank]
        batch = torch.from_numpy(np.stack([self._window(int(i)) for i in mine]).astype(np.int64))
        return (batch.pin_memory() if device.type == "cuda" else batch).to(device, non_blocking=True)

def load_validation_tokens(data_path: str, limit: int = 0) -> torch.Tensor:
    """All validation shards concatenated (or their first `limit` tokens, for smoke runs)."""
    tokens = np.concatenate([np.asarray(load_data_shard(f)) for f in shard_files(data_path, "val")])[:limit or None]
    if len(tokens) < 2:
        raise InputError(f"The validation shards in {data_path} hold fewer than 2 tokens; nothing can be scored.")
    return torch.from_numpy(tokens.astype(np.int64))

def sidecar_path(val_shard: Path) -> Path:
    """fineweb_val_000000.bin -> fineweb_val_bytes_000000.bin, in the same folder."""
    return val_shard.with_name(val_shard.name.replace("fineweb_val_", "fineweb_val_bytes_", 1))

def load_validation_bytes(data_path: str, limit: int, mode: str, most: int) -> torch.Tensor | None:
    """Per validation token, the ORIGINAL UTF-8 bytes it stands for (CaseOps tokens do not spell the text, PR #1729,
    issue #2138), from the byte sidecars beside the shards, or None. BYTE_SIDECAR=auto uses them when every shard has
    one, 1 requires them, 0 ignores them. A count above `most` (sidecar_limit) would fake a score."""
    shards = shard_files(data_path, "val")
    present = [sidecar_path(f) for f in shards if sidecar_path(f).is_file()]
    if mode == "0" or (mode == "auto" and not present):
        return None
    if len(present) != len(shards):
        missing = next(sidecar_path(f) for f in shards if not sidecar_path(f).is_file())
        why = " (BYTE_SIDECAR=1)" if mode == "1" else " while other shards have a sidecar"
        raise InputError(f"{missing} is missing{why}; every validation shard needs its byte sidecar: re-download or "
                         f"rebuild the data set.")
    parts = []
    for shard, side in zip(shards, present):
        tokens, counts = np.asarray(load_data_shard(shard)), np.asarray(load_data_shard(side))
        if len(counts) != len(tokens):
            raise InputError(f"{side} holds {len(counts)} byte counts but {shard} holds {len(tokens)} tokens; the "
                             f"sidecar does not belong to this shard: re-download or rebuild both.")
        if counts[tokens == BOS_ID].any():
            raise InputError(f"{side} gives bytes to a BOS token, which stands for no text; re-download or rebuild it.")
        if len(counts) and int(counts.max()) > most:
            at = int(np.argmax(counts > most))
            raise InputError(f"{side} says the token at position {at} stands for {int(counts[at])} bytes, more than any "
                             f"token of this tokenizer can ({most}); the sidecar is corrupt: re-download or rebuild it.")
        parts.append(counts)
    return torch.from_numpy(np.concatenate(parts)[:limit or None].astype(np.int64))

def is_caseops_tokenizer(sp) -> bool:
    """CaseOps tokenizers hold the case operators TITLE, ALLCAPS, CAPNEXT and ESC (PR #1729) as pieces of their own."""
    return all(sp.piece_to_id(op) != sp.unk_id() for op in "\ue001\ue002\ue003\ue004")

def tokenizer_file(path: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"TOKENIZER_PATH={path} does not exist; download or build the dataset first (see README).")
    return path

def load_tokenizer(tokenizer_path: str, vocab_size: int):
    import sentencepiece as spm
    try:
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_file(tokenizer_path)))
    except (RuntimeError, OSError) as exc:
        raise InputError(f"TOKENIZER_PATH={tokenizer_path} is not a SentencePiece model ({str(exc).splitlines()[0]}); "
                         f"download or rebuild the tokenizer.") from None
    if sp.vocab_size() != vocab_size:
        raise ConfigError(f"Tokenizer {tokenizer_path} has {sp.vocab_size()} pieces but VOCAB_SIZE={vocab_size}; set "
                          f"VOCAB_SIZE={sp.vocab_size()} or point TOKENIZER_PATH at the matching tokenizer.")
    return sp

@dataclass
class ByteTables:
    """Per-token byte counts for bits per byte (byte-fallback pieces count 1), or a CaseOps sidecar's."""
    base_bytes: torch.Tensor  # UTF-8 bytes of the piece without its leading "▁"
    leading_space: torch.Tensor  # piece starts with "▁": one more byte unless after a boundary
    is_boundary: torch.Tensor  # control / unknown / unused tokens: no bytes, no space after
    sidecar: torch.Tensor | None = None  # per validation position: original bytes (CaseOps), replaces the tables
    denominator = property(lambda self: "sidecar" if self.sidecar is not None else "tables")
    def target_bytes(self, prev_ids: torch.Tensor, target_ids: torch.Tensor,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
        """Bytes of each target; a sidecar needs, and only it uses, their `positions` in the validation tokens."""
        if self.sidecar is not None:
            if positions is None:
                raise ValueError("byte counts from a sidecar need the targets' positions")
            return self.sidecar[positions]
        space = self.leading_space[target_ids] & ~self.is_boundary[prev_ids]
        return self.base_bytes[target_ids] + space.to(self.base_bytes.dtype)
    def to(self, device: torch.device) -> "ByteTables":
        return ByteTables(**{name: t if t is None else t.to(device) for name, t in self.__dict__.items()})

def sidecar_limit(tables: ByteTables) -> int:
    """The most original bytes one token can stand for: its piece (NFKC: at most 4 original bytes per normalised byte)
    and the whitespace the normaliser dropped before it. Our CaseOps builder measured at most 70 (indented code,
    16-byte pieces); 1,024 spaces of slack keep real text in while forged counts (up to 65,535) are refused."""
    return 4 * (int(tables.base_bytes.max()) + 1) + 1024

def build_byte_tables(sp, vocab_size: int) -> ByteTables:
    base, space = torch.zeros(vocab_size, dtype=torch.int64), torch.zeros(vocab_size, dtype=torch.bool)
    boundary = torch.ones(vocab_size, dtype=torch.bool)  # ids past the tokenizer are never text
    for token in range(sp.vocab_size()):
        if not (sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token)):
            piece = sp.id_to_piece(token)  # byte-fallback pieces are "<0xNN>": one byte, no space
            boundary[token], space[token] = False, piece.startswith("\u2581")
            base[token] = 1 if sp.is_byte(token) else len(piece.removeprefix("\u2581").encode("utf-8"))
    return ByteTables(base, space, boundary)

def check_scored_bytes(val: torch.Tensor, tables: ByteTables, data_path: str) -> None:
    """Bits per byte divides by these bytes: none at all, or a sidecar claiming far more bytes than the tokens spell
    (honest sidecars: 0.92x on CaseOps text, 1.17x on indented code, from dropped whitespace), gives no real score."""
    prev, targets = val[:-1], val[1:]
    claimed = int(tables.target_bytes(prev, targets, torch.arange(1, len(val), device=val.device)).sum())
    spelled = int(ByteTables(**{**tables.__dict__, "sidecar": None}).target_bytes(prev, targets).sum())
    if claimed == 0:
        raise InputError(f"the {len(val) - 1} scored validation targets in {data_path} stand for no bytes at all "
                         f"({'their byte sidecar is all zeros' if tables.sidecar is not None else 'only control tokens'}); "
                         f"bits per byte would divide by zero: re-download or rebuild the data.")
    if claimed > 1.5 * spelled:
        raise InputError(f"the byte sidecars in {data_path} claim {claimed:,} bytes for validation tokens that spell "
                         f"{spelled:,} ({claimed / spelled:.2f}x, honest ones stay under 1.5x); they are corrupt or "
                         f"forged: re-download or rebuild the data.")

class BpbMeter:
    """Sums token NLL (nats), target count and target bytes; reduced across ranks once."""
    def __init__(self, device: torch.device):
        self.loss_sum, self.tokens, self.bytes = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(3))
    def add(self, nll: torch.Tensor, nbytes: torch.Tensor) -> None:
        self.loss_sum += nll.double().sum()
        self.tokens += nll.numel()
        self.bytes += nbytes.double().sum()
    def result(self) -> tuple[float, float]:
        """(val_loss in nats per token, val_bpb), summed over all ranks."""
        totals = torch.stack([self.loss_sum, self.tokens, self.bytes])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        loss_sum, tokens, nbytes = totals.tolist()
        return loss_sum / tokens, loss_sum / math.log(2.0) / nbytes

# ---------------------------------------------------------------------------------------------
# MODEL
# The 2026-04-09 record's stack (PR #1493) with the #1 record's training-side additions (PR #1855).
# The big matrices of all layers live in four banks (q/o, k/v, MLP up, MLP down) indexed by layer,
# so Muon orthogonalises them in batches. A span of layers runs 1 + NUM_LOOPS times; each repeat
# adds its own LoRA delta and pass embedding, both zero at init so looping starts from the shared
# weights (PRs #1096, #1552). Training, evaluation, TTT and GPTQ calibration share one forward path.

def virtual_layers(num_layers: int, loop_start: int, loop_end: int, num_loops: int, looping: bool) -> list[tuple[int, int]]:
    """The run order as (physical layer, pass) pairs, pass 0 a layer's first visit: 11 layers with
    3..5 looped twice run 0 1 2 3 4 5 3 4 5 3 4 5 6 7 8 9 10."""
    order = [(layer, 0) for layer in range(num_layers)]
    repeats = [(layer, p) for p in range(1, num_loops + 1) for layer in range(loop_start, loop_end + 1)]
    return order[:loop_end + 1] + repeats + order[loop_end + 1:] if looping else order

def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm that keeps x's dtype: from PyTorch 2.12, CUDA autocast runs rms_norm in float32 (pytorch
    #188955), which would hand the attention kernels a float32 q and k beside a bf16 v."""
    return F.rms_norm(x, (x.size(-1),)).to(x.dtype)

def document_ids(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Per position, how many BOS tokens came at or before it: equal ids = same document.
    Tokens before a window's first BOS (the tail of an earlier document) share id 0."""
    return torch.cumsum((input_ids == bos_id).to(torch.int32), dim=1)


# ---- Attention kernels ----
# Document attention keeps each token inside its own document (a BOS starts one; PR #1530). On CUDA
# a micro-batch's rows are packed into one stream cut at every BOS and row start, and a varlen kernel
# runs each segment as its own causal sequence (PR #1855, with FlashAttention-3). The segment table
# has a fixed length per batch shape (static shapes when compiled) and is built without a host sync.

# Segment slots per packed row: T // 64 + 1 holds rows whose documents average 64 tokens or more
# (FineWeb's average is over ten times that). A row with more merges its last documents into its
# last slot, whose attention then crosses them, never the row's end.
SEGMENT_TOKENS = 64

def segment_slots(seq_len: int) -> int:
    return seq_len // SEGMENT_TOKENS + 1

def packed_segments(input_ids: torch.Tensor, bos_id: int, slots: int) -> torch.Tensor:
    """cu_seqlens (int32, B * slots + 1) of the rows packed into one stream, cut at every BOS and row
    start; row b owns slots b*slots .. (b+1)*slots - 1, unused ones empty (zero-length) segments."""
    B, T = input_ids.shape
    starts = torch.cat([torch.ones_like(input_ids[:, :1], dtype=torch.bool), input_ids[:, 1:] == bos_id], dim=1)
    segment_number = torch.cumsum(starts.to(torch.int32), dim=1)  # 1-based, non-decreasing along each row
    wanted = torch.arange(1, slots + 1, device=input_ids.device, dtype=torch.int32).expand(B, slots).contiguous()
    first = torch.searchsorted(segment_number, wanted, out_int32=True)  # T where a row has fewer segments
    first = first + torch.arange(B, device=input_ids.device, dtype=torch.int32)[:, None] * T
    return torch.cat([first.flatten(), first.new_full((1,), B * T)])

def document_mask(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """The dense (B, 1, T, T) boolean mask of causal attention inside documents, for SDPA."""
    docs, T = document_ids(input_ids, bos_id), input_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
    return (causal & (docs[:, :, None] == docs[:, None, :]))[:, None]

def document_block_mask(input_ids: torch.Tensor, bos_id: int):
    """A flex_attention BlockMask of causal attention inside documents, built eagerly: compiled
    create_block_mask is one of the suspects of CUDA faults (pytorch issues #147551, #160018)."""
    from torch.nn.attention.flex_attention import create_block_mask
    docs, (B, T) = document_ids(input_ids, bos_id), input_ids.shape
    return create_block_mask(lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx]),
                             B, None, T, T, device=input_ids.device, _compile=False)

def fa3_kernels() -> dict[str, object]:
    """FlashAttention-3's "fa3_causal" (q, k, v) and "fa3_varlen" (q, k, v, cu_seqlens, max_len), if it imports."""
    try:
        from flash_attn_interface import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return {}
    first = lambda out: out[0] if isinstance(out, tuple) else out  # some builds also return the LSE
    return {"fa3_causal": lambda q, k, v: first(flash_attn_func(q, k, v, causal=True)),
            "fa3_varlen": lambda q, k, v, cu, n: first(flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True))}

def torch_varlen(fn=None):
    """PyTorch's varlen_attn (>= 2.10) as (q, k, v, cu_seqlens, max_len) -> out, or None. Causal is
    is_causal in 2.10, window_size=(-1, 0) later; from 2.12 enable_gqa spares repeating KV heads."""
    if fn is None:
        try:
            from torch.nn.attention.varlen import varlen_attn as fn
        except ImportError:
            return None
    import inspect
    params = inspect.signature(fn).parameters
    if "is_causal" in params:
        causal = {"is_causal": True}
    elif "window_size" in params:
        causal = {"window_size": (-1, 0)}
    else:
        return None  # a signature we do not know: never guess what it does
    native_gqa = "enable_gqa" in params
    def run(q, k, v, cu_seqlens, max_len):
        grouped = k.size(1) != q.size(1)
        if grouped and not native_gqa:
            k, v = [t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v)]
        gqa = {"enable_gqa": True} if grouped and native_gqa else {}
        return fn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **causal, **gqa)
    return run

def kernel_functions(device: torch.device) -> dict[str, object]:
    """The attention kernels this machine offers beyond SDPA (all need CUDA)."""
    found = {**fa3_kernels(), "torch_varlen": torch_varlen(), "flex": "flex"} if device.type == "cuda" else {}
    return {name: fn for name, fn in found.items() if fn is not None}

class KernelFault(RuntimeError):
    """A kernel crashed the device during its start-up check: the process cannot go on."""

def check_attention(kernel: str, fn, h: "Hyperparameters", rt: "Runtime") -> str | None:
    """Why `kernel` fails one forward and backward of the run's attention block on random documents
    against SDPA with a dense mask in float32, or fails to trace whole (fullgraph, no code generated:
    not minutes into compiling); None when it passes. A device fault raises KernelFault."""
    cfg = ModelConfig(**{**h.model_config().__dict__, "num_layers": 1, "num_loops": 0, "vocab_size": 256})
    probe = GPT(cfg).to(rt.device)
    with torch.no_grad():  # random weights everywhere: zero-initialised projections and gates shape the output
        for p in probe.parameters():
            p.normal_(0.0, p.size(-1) ** -0.5 if p.dim() > 1 else 0.5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 256, (2, 256), generator=generator)
    ids[:, 0] = BOS_ID
    probe.rows_are_documents = kernel == "fa3_causal"  # per-document TTT: one document a row
    if kernel != "fa3_causal":  # documents of 1 to 150 tokens, fewer than a row's segment slots
        ids[0, [37, 101, 190]], ids[1, [64, 65, 215]] = BOS_ID, BOS_ID
    ids = ids.to(rt.device)
    x = torch.randn(*ids.shape, cfg.model_dim, generator=generator).to(rt.device).requires_grad_()
    attend = lambda x, layout: probe.attention(x, 0, 0, 0, layout)
    want = attend(x, None if probe.rows_are_documents else document_mask(ids, BOS_ID))
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    probe.dense, probe.varlen = (fn, None) if kernel == "fa3_causal" else (None, fn)
    layout, graphs = probe.attention_layout(ids, kernel), graphs_compiled()
    try:
        with rt.autocast():
            got = attend(x, layout)
            (got_grad,) = torch.autograd.grad(got.float().square().sum(), x)
        rt.synchronize()
        for name, a, b in (("output", got, want), ("input gradient", got_grad, want_grad)):
            error = ((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
            if not error <= 5e-2:  # bf16 rounding stays near 1e-2
                return f"its {name} differs from SDPA by {error:.3g} (relative, tolerance 0.05)"
        try:
            with rt.autocast():
                torch.compile(attend, fullgraph=True, backend="eager")(x, layout)
        except Exception as exc:
            return f"it does not trace whole under torch.compile ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        finally:
            torch._dynamo.utils.counters["stats"]["unique_graphs"] = graphs  # a check, not one of the run's graphs
    except Exception as exc:
        if "CUDA error" in str(exc):  # the context is lost: nothing after this can run on the GPU
            raise KernelFault(f"the attention kernel {kernel} crashed the GPU in its start-up check "
                              f"({str(exc).splitlines()[0]}); run with ATTENTION_KERNEL=sdpa.") from None
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None

@dataclass
class AttentionKernels:
    """The kernel of each kind of forward: `train` (with gradients), `nograd` (evaluation, calibration),
    `dense` (plain causal rows: per-document TTT, DOC_ATTENTION=0)."""
    train: str
    nograd: str
    dense: str
    varlen: object = None  # the varlen function when train or nograd is a varlen kernel
    dense_fn: object = None  # FlashAttention-3's dense function when dense is fa3_causal
    check: str = "not needed"
    def line(self) -> str:
        return (f"attention_kernels train:{self.train} eval:{self.nograd} calibration:{self.nograd} "
                f"documents:{self.dense} check:{self.check}")

def pick_attention_kernels(h: "Hyperparameters", rt: "Runtime", log=lambda line: None) -> AttentionKernels:
    """ATTENTION_KERNEL=auto takes the first varlen kernel to pass check_attention, else flex_attention
    for compiled training (without gradients only when named: its no-grad kernel is the prime suspect
    of the first GPU run's fault), else SDPA with a dense mask; and FlashAttention-3 for per-document
    rows when it passes. A named kernel that is missing or fails is an error naming what works."""
    setting, offered = h.attention_kernel, kernel_functions(rt.device)
    wanted = {"auto": ["fa3_varlen", "torch_varlen"] + (["flex"] if h.compile else []), "fa3": ["fa3_varlen"],
              "varlen": ["torch_varlen"], "flex": ["flex"], "sdpa": []}[setting]
    packed, verdicts = "sdpa_mask", []
    for name in wanted + (["fa3_causal"] if setting != "sdpa" else []):
        named = setting != "auto" and name != "fa3_causal"  # asked for by name: missing or failing is an error
        if named and name not in offered:
            raise ConfigError(f"ATTENTION_KERNEL={setting}: {name} is not available on this {rt.device.type} machine "
                              f"(FlashAttention-3, varlen_attn of PyTorch >= 2.10 and flex_attention's backward "
                              f"need CUDA); use ATTENTION_KERNEL=auto or sdpa.")
        if name not in offered or name != "fa3_causal" and packed != "sdpa_mask":
            continue  # missing, or a packed kernel already passed
        problem = check_attention(name, offered[name], h, rt)
        verdicts.append(f"{name}={'passed' if problem is None else 'rejected'}")
        if problem is not None:
            log(f"attention_kernel_rejected kernel:{name} reason:{problem}")
            if named:
                raise ConfigError(f"ATTENTION_KERNEL={setting}: {name} failed its start-up check ({problem}); use "
                                  f"ATTENTION_KERNEL=sdpa.")
        elif name != "fa3_causal":
            packed = name
    dense = "fa3_causal" if "fa3_causal=passed" in verdicts else "sdpa_causal"
    nograd = packed if packed != "flex" or setting == "flex" else "sdpa_mask"
    return AttentionKernels(packed, nograd, dense, offered.get(packed) if packed.endswith("varlen") else None,
                            offered.get("fa3_causal") if dense == "fa3_causal" else None,
                            ",".join(verdicts) or "not needed")

def softcapped_nll(logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token cross-entropy of cap * tanh(logits / cap) as logsumexp(z) - z[target]: compiled, cap and
    upcast fuse into the reduction and the backward keeps only bf16 logits (PR #1787; F.cross_entropy
    keeps fp32 log-probabilities, 3.2 GB for a 98,304-token micro-batch at vocabulary 8192)."""
    z = cap * torch.tanh(logits.float() / cap) if cap > 0 else logits.float()
    if targets.dim() == z.dim():  # (..., k) targets: k NLLs per position from the same logits
        return torch.logsumexp(z, dim=-1, keepdim=True) - z.gather(-1, targets)
    return torch.logsumexp(z, dim=-1) - z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        L, D, H = cfg.num_layers, cfg.model_dim, cfg.num_heads
        self.looping = False
        # Set by prepare_model(): FlashAttention-3 for plain causal rows and the varlen function of
        # packed layouts (None: SDPA). Per-document TTT's rows are whole documents: no mask needed.
        self.dense, self.varlen, self.rows_are_documents = None, None, False
        self.hessians: dict | None = None  # set by GPTQ calibration to collect input statistics
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        # Banks: [out, in] matrices stacked by layer; slots 0..L-1 hold q or k, L..2L-1 o or v.
        self.qo_bank = nn.Parameter(torch.empty(2 * L, D, D))
        self.kv_bank = nn.Parameter(torch.empty(2 * L, cfg.kv_dim, D))
        self.up_bank = nn.Parameter(torch.empty(L, cfg.mlp_dim, D))
        self.down_bank = nn.Parameter(torch.empty(L, D, cfg.mlp_dim))
        # Per-layer vectors (the AdamW "scalar" group).
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(L, D)), nn.Parameter(torch.ones(L, D))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(L, D), torch.zeros(L, D)], dim=1))
        self.q_gain = nn.Parameter(torch.full((L, H), cfg.qk_gain_init))
        max_skips = len(virtual_layers(L, cfg.loop_start, cfg.loop_end, cfg.num_loops, True)) // 2
        self.skip_weights = nn.Parameter(torch.ones(max_skips, D))
        # Sigmoid skip gates start at 0: the first step mixes skip and stream half and half.
        self.skip_gates = nn.Parameter(torch.zeros(max_skips, D)) if cfg.skip_gates else None
        # SmearGate (PR #1667) and the attention-output gate (PR #1787) read the first GATE_WINDOW
        # channels; both start at zero (no smear; every head's gate at 0.5).
        self.smear_gate = nn.Parameter(torch.zeros(cfg.gate_window)) if cfg.smear_gate else None
        self.smear_lambda = nn.Parameter(torch.zeros(())) if cfg.smear_gate else None
        self.attn_gate = nn.Parameter(torch.zeros(L, H, cfg.gate_window)) if cfg.attn_gate else None
        # LN scale (PR #1493): physical layer l's normed block inputs shrink by 1/sqrt(l+1) on every pass.
        self.ln_factors = [1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0 for layer in range(L)]
        self.xsa_layers = set(range(max(0, L - cfg.xsa_last_n), L))
        # Parallel residuals (PRs #1855, #2135): decoder visits of layers from PARALLEL_RESIDUAL_START
        # on read an attention lane and an MLP lane; each lane scales itself (resid, 1.1 at init) and takes
        # both outputs (post, 1 at init). The lanes merge (their mean) at the end or before a lower layer.
        lanes = max(0, L - cfg.parallel_residual_start)
        self.lane_post = nn.Parameter(torch.ones(lanes, 2, 2)) if lanes else None  # [layer, from attn/mlp, to lane]
        self.lane_resid = nn.Parameter(torch.full((lanes, 2), 1.1)) if lanes else None
        # Per-pass adapters: index [pass - 1, layer - loop_start].
        passes, span, rank = cfg.num_loops, cfg.loop_len, cfg.pass_lora_rank
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        if rank > 0 and passes > 0:
            for target in cfg.pass_lora_targets:
                out_dim, in_dim = self._target_shape(target)
                self.lora_A[target] = nn.Parameter(torch.randn(passes, span, rank, in_dim) / math.sqrt(in_dim))
                self.lora_B[target] = nn.Parameter(torch.zeros(passes, span, out_dim, rank))
        self.pass_embed = nn.Parameter(torch.zeros(passes, span, D)) if cfg.pass_embed and passes > 0 else None
        self.ttt_lora = None  # per-document TTT adapters (evaluation only), see TTTLoRA
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.rope_dims, 2, dtype=torch.float32) / max(cfg.rope_dims, 1))
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        self.reset_parameters()
    def _target_shape(self, target: str) -> tuple[int, int]:
        c = self.cfg
        return {"q": (c.model_dim, c.model_dim), "k": (c.kv_dim, c.model_dim), "v": (c.kv_dim, c.model_dim),
                "o": (c.model_dim, c.model_dim), "up": (c.mlp_dim, c.model_dim), "down": (c.model_dim, c.mlp_dim)}[target]
    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.tok_emb.weight.is_meta:  # shapes only (checking an artifact before building it)
            return
        L = self.cfg.num_layers
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.tied_embed_init_std)
        for bank in (self.qo_bank, self.kv_bank, self.up_bank):
            nn.init.normal_(bank, std=bank.size(-1) ** -0.5)
        if self.cfg.ortho_init:
            # Orthogonal rows (PR #1493) where both sides are at least 64, as in the record.
            for matrix in [*self.qo_bank[:L], *self.kv_bank, *self.up_bank]:
                if min(matrix.shape) >= 64:
                    nn.init.orthogonal_(matrix)
        # Output projections start at zero: every block begins as the identity on the residual.
        self.qo_bank[L:].zero_()
        self.down_bank.zero_()
    def init_probe(self) -> list[float]:
        """Four values spread over each random tensor at init (embedding; q, k/v, up banks): the packager
        rebuilds them from a log's SEED and settings, so a log relabelled with another seed is refused."""
        tensors = (self.tok_emb.weight, self.qo_bank[: self.cfg.num_layers], self.kv_bank, self.up_bank)
        flats = [tensor.detach().flatten() for tensor in tensors]
        return [float(flat[i]) for flat in flats for i in (0, flat.numel() // 3, 2 * flat.numel() // 3, flat.numel() - 1)]
    def schedule(self) -> list[tuple[int, int]]:
        c = self.cfg
        return virtual_layers(c.num_layers, c.loop_start, c.loop_end, c.num_loops, self.looping)
    def hessian_buffers(self) -> dict[tuple[str, int], torch.Tensor]:
        """Zeroed X^T X accumulators of every quantized matrix's input: set as self.hessians, the forward
        adds to them in place (allocated up front, so calibration compiles whole)."""
        c, device = self.cfg, self.tok_emb.weight.device
        dims = {"attn_in": c.model_dim, "attn_out": c.model_dim, "mlp_in": c.model_dim, "mlp_act": c.mlp_dim}
        buffers = {(kind, layer): torch.zeros(d, d, device=device)
                   for kind, d in dims.items() for layer in range(c.num_layers)}
        return {**buffers, ("final", 0): torch.zeros(c.model_dim, c.model_dim, device=device)}
    def _record(self, key: tuple[str, int], x: torch.Tensor) -> None:
        if self.hessians is not None:
            rows = x.detach().reshape(-1, x.size(-1)).float()
            self.hessians[key].addmm_(rows.T, rows)
    def project(self, x: torch.Tensor, weight: torch.Tensor, target: str, layer: int, pass_idx: int,
                slot: int) -> torch.Tensor:
        """x @ W^T, plus this pass's LoRA delta (x A^T) B^T on repeated passes, plus the per-document TTT
        adapter of virtual layer `slot` when one is attached; W + BA is never formed."""
        y = F.linear(x, weight)
        if pass_idx > 0 and target in self.lora_A:
            index = (pass_idx - 1, layer - self.cfg.loop_start)
            a, b = self.lora_A[target][index], self.lora_B[target][index]
            y = y + F.linear(F.linear(x, a), b)
        if self.ttt_lora is not None and target in self.ttt_lora.A:  # q, k, v, o (MLP, head: see mlp(), head())
            y = y + self.ttt_lora.delta(target, slot, x)
        return y
    def rotary(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate the first ROPE_DIMS channels of each head; x is (B, T, heads, head_dim)."""
        d = self.cfg.rope_dims
        if d == 0:
            return x
        freqs = torch.outer(torch.arange(x.size(1), device=x.device, dtype=torch.float32), self.rope_inv_freq)
        cos, sin = freqs.cos()[None, :, None, :].to(x.dtype), freqs.sin()[None, :, None, :].to(x.dtype)
        x1, x2, rest = x[..., : d // 2], x[..., d // 2: d], x[..., d:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)
    def attention_layout(self, input_ids: torch.Tensor, kernel: str = "sdpa_mask"):
        """What attend() needs to keep tokens inside their documents under `kernel`, built outside the
        compiled graph: packed cu_seqlens, a flex BlockMask, a dense SDPA mask, or None (plain causal)."""
        if not self.cfg.doc_attention or self.rows_are_documents:
            return None
        if kernel in ("fa3_varlen", "torch_varlen"):
            return packed_segments(input_ids, self.cfg.bos_id, segment_slots(input_ids.size(1)))
        if kernel == "flex":
            return document_block_mask(input_ids, self.cfg.bos_id)
        return document_mask(input_ids, self.cfg.bos_id)
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
        """Causal attention, inside documents when a layout is given; (B, T, heads, head_dim) in and out."""
        B, T, H, D = q.shape
        if layout is None and self.dense is not None:
            return self.dense(q, k, v)  # FlashAttention-3: grouped KV heads natively
        if isinstance(layout, torch.Tensor) and layout.dtype == torch.int32:  # packed cu_seqlens
            return self.varlen(*[t.reshape(B * T, -1, D) for t in (q, k, v)], layout, T).view(B, T, H, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if layout is not None and not isinstance(layout, torch.Tensor):  # a flex_attention BlockMask
            from torch.nn.attention.flex_attention import flex_attention
            return flex_attention(q, k, v, block_mask=layout, enable_gqa=k.size(1) != q.size(1)).transpose(1, 2)
        if k.size(1) != q.size(1):  # repeated, not enable_gqa: keeps every SDPA backend (flash too) eligible
            k, v = [t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v)]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout, is_causal=layout is None).transpose(1, 2)
    def attention(self, x: torch.Tensor, layer: int, pass_idx: int, slot: int, layout) -> torch.Tensor:
        c, L = self.cfg, self.cfg.num_layers
        B, T, _ = x.shape
        self._record(("attn_in", layer), x)
        q = self.project(x, self.qo_bank[layer], "q", layer, pass_idx, slot).view(B, T, c.num_heads, c.head_dim)
        k = self.project(x, self.kv_bank[layer], "k", layer, pass_idx, slot).view(B, T, c.num_kv_heads, c.head_dim)
        v = self.project(x, self.kv_bank[L + layer], "v", layer, pass_idx, slot).view(B, T, c.num_kv_heads, c.head_dim)
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q = q * self.q_gain[layer][None, None, :, None].to(q.dtype)
        y = self.attend(q, k, v, layout)
        if layer in self.xsa_layers:
            # XSA (PR #1493): drop each head's component along its own token's value vector
            # (the KV head of its group), so attention carries only what the token lacks.
            y = y.view(B, T, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
            v_hat = F.normalize(v, dim=-1).unsqueeze(3)
            y = (y - (y * v_hat).sum(-1, keepdim=True) * v_hat).view(B, T, c.num_heads, c.head_dim)
        if self.attn_gate is not None:
            # Sparse output gate (PRs #1787, #1855): a sigmoid per head from the first GATE_WINDOW channels.
            gate = torch.sigmoid(c.attn_gate_scale * F.linear(x[..., :c.gate_window], self.attn_gate[layer]))
            y = y * gate.unsqueeze(-1).to(y.dtype)
        y = y.reshape(B, T, c.model_dim)
        self._record(("attn_out", layer), y)
        return self.project(y, self.qo_bank[L + layer], "o", layer, pass_idx, slot)
    def mlp(self, x: torch.Tensor, layer: int, pass_idx: int, slot: int) -> torch.Tensor:
        self._record(("mlp_in", layer), x)
        # LeakyReLU(0.5)^2: keeps a gradient for negative inputs, unlike relu^2.
        h = F.leaky_relu(self.project(x, self.up_bank[layer], "up", layer, pass_idx, slot), 0.5).square()
        self._record(("mlp_act", layer), h)
        out = self.project(h, self.down_bank[layer], "down", layer, pass_idx, slot)
        if self.ttt_lora is not None and "mlp" in self.ttt_lora.A:
            out = out + self.ttt_lora.delta("mlp", slot, x)
        return out
    def block(self, x: torch.Tensor, x0: torch.Tensor, layer: int, pass_idx: int, slot: int, layout) -> torch.Tensor:
        mix, ln = self.resid_mix[layer], self.ln_factors[layer]
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale[layer] * self.attention(rms_norm(x) * ln, layer, pass_idx, slot, layout)
        return x + self.mlp_scale[layer] * self.mlp(rms_norm(x) * ln, layer, pass_idx, slot)
    def parallel_block(self, x: torch.Tensor, mlp_lane: torch.Tensor, x0: torch.Tensor, layer: int, pass_idx: int,
                       slot: int, layout) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer on the two lanes (x is the attention lane); see lane_post in __init__."""
        mix, ln = self.resid_mix[layer], self.ln_factors[layer]
        attn_in = rms_norm(mix[0] * x + mix[1] * x0) * ln
        attn = self.attn_scale[layer] * self.attention(attn_in, layer, pass_idx, slot, layout)
        mlp = self.mlp_scale[layer] * self.mlp(rms_norm(mlp_lane) * ln, layer, pass_idx, slot)
        i = layer - self.cfg.parallel_residual_start
        post, resid = self.lane_post[i], self.lane_resid[i]
        return (resid[0] * x + post[0, 0] * attn + post[1, 0] * mlp,
                resid[1] * mlp_lane + post[0, 1] * attn + post[1, 1] * mlp)
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        if self.smear_gate is not None:
            # SmearGate (PR #1667): add a gated share of the previous token's embedding, except at BOS,
            # so no document reads the one before it (PR #1851).
            gate = self.smear_lambda * torch.sigmoid(x[:, 1:, :self.cfg.gate_window] @ self.smear_gate.to(x.dtype))
            gate = gate * (input_ids[:, 1:] != self.cfg.bos_id).to(gate.dtype)
            x = torch.cat([x[:, :1], x[:, 1:] + gate.unsqueeze(-1) * x[:, :-1]], dim=1)
        return rms_norm(x)
    def merge_skip(self, x: torch.Tensor, encoder_out: torch.Tensor, index: int) -> torch.Tensor:
        skip = self.skip_weights[index] * encoder_out
        # Sigmoid skip gate (PR #1493): skip + sigma(g) * (x - skip).
        return x + skip if self.skip_gates is None else torch.lerp(skip, x, torch.sigmoid(self.skip_gates[index]))
    def hidden_states(self, input_ids: torch.Tensor, layout=None) -> torch.Tensor:
        """The final normed hidden states (GPTQ calibration needs no logits); `layout` from
        attention_layout(), None: the dense reference layout. The residual stream stays float32."""
        x = x0 = self.embed(input_ids)
        layout = self.attention_layout(input_ids) if layout is None else layout
        order = self.schedule()
        encoder_len, skips, mlp_lane = len(order) // 2, [], None
        # U-Net over the virtual layers: the first half's outputs feed the second half in reverse.
        for slot, (layer, pass_idx) in enumerate(order):
            parallel = slot >= encoder_len and layer >= self.cfg.parallel_residual_start
            if parallel and mlp_lane is None:
                mlp_lane = x  # the lanes split here; skips join the attention lane only (PR #2135)
            elif not parallel and mlp_lane is not None:  # a looped layer below the lanes: they merge
                x, mlp_lane = 0.5 * (x + mlp_lane), None
            if slot >= encoder_len and skips:
                x = self.merge_skip(x, skips.pop(), slot - encoder_len)
            if pass_idx > 0 and self.pass_embed is not None:
                x = x + self.pass_embed[pass_idx - 1, layer - self.cfg.loop_start]
            if mlp_lane is None:
                x = self.block(x, x0, layer, pass_idx, slot, layout)
            else:
                x, mlp_lane = self.parallel_block(x, mlp_lane, x0, layer, pass_idx, slot, layout)
            if slot < encoder_len:
                skips.append(x)
        x = rms_norm(x if mlp_lane is None else 0.5 * (x + mlp_lane))
        self._record(("final", 0), x)
        return x
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits of the tied head (bf16 under autocast), before the soft-cap."""
        logits = F.linear(x, self.tok_emb.weight)
        if self.ttt_lora is not None and "head" in self.ttt_lora.A:
            logits = logits + self.ttt_lora.delta("head", 0, x)
        return logits
    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor, reduction: str = "mean",
                layout=None) -> torch.Tensor:
        nll = softcapped_nll(self.head(self.hidden_states(input_ids, layout)), target_ids, self.cfg.logit_softcap)
        return nll.mean() if reduction == "mean" else nll
    def adapter_parameters(self) -> list[nn.Parameter]:
        params = list(self.lora_A.values()) + list(self.lora_B.values())
        return params + ([self.pass_embed] if self.pass_embed is not None else [])
    def bank_parameters(self) -> list[nn.Parameter]:
        return [self.qo_bank, self.kv_bank, self.up_bank, self.down_bank]

# ---------------------------------------------------------------------------------------------
# OPTIMIZERS
# Parallel Muon on the four banks (PR #1517): each rank reduce-scatters a bank's gradient, runs
# Nesterov momentum, optional row normalisation and batched Newton-Schulz on its own slice of layers,
# then all-gathers the updates. AdamW takes the rest, averaged by one flat all-reduce (no DDP
# wrapper); LoRA factors and pass embeddings get their own group: Muon made rank-1 LoRA diverge (PR #1096).

# Newton-Schulz steps X <- aX + (bA + cA^2)X with A = XX^T. Polar Express (PR #1787) gives each
# of its five steps its own minimax tuple and lands closer to the polar factor UV^T than the
# quintic's one repeated tuple (tests/RESULTS.md); steps past the end repeat the last tuple.
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))

def newton_schulz(grads: torch.Tensor, steps: int, coefficients: tuple = POLAR_EXPRESS) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a (batch, rows, cols) stack."""
    x = grads.bfloat16() if grads.is_cuda else grads.float()
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for step in range(steps):
        a, b, c = coefficients[min(step, len(coefficients) - 1)]
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x

class ParallelMuon:
    def __init__(self, banks: list[nn.Parameter], lr: float, momentum: float, weight_decay: float,
                 ns_steps: int, row_norm: bool, world_size: int):
        # Largest bank first: its communication starts earliest and overlaps the most work.
        self.banks = sorted(banks, key=lambda p: p.numel(), reverse=True)
        self.base_lr, self.lr, self.momentum, self.weight_decay = lr, lr, momentum, weight_decay
        self.ns_steps, self.row_norm, self.world_size = ns_steps, row_norm, world_size
        self.shard_rows = [math.ceil(p.size(0) / world_size) for p in self.banks]
        self.buffers = [torch.zeros(rows, *p.shape[1:], device=p.device) for rows, p in zip(self.shard_rows, self.banks)]
        self._pending: list = []
    def start_reduce_scatter(self) -> None:
        self._pending = []
        for p, rows in zip(self.banks, self.shard_rows):
            if self.world_size == 1:  # one rank holds every layer: no padding, nothing to wait for
                self._pending.append((None, p.grad))
                continue
            pad = rows * self.world_size - p.grad.size(0)
            grad = torch.cat([p.grad, p.grad.new_zeros(pad, *p.grad.shape[1:])]) if pad else p.grad
            shard = grad.new_empty(rows, *grad.shape[1:])
            self._pending.append((dist.reduce_scatter_tensor(shard, grad.contiguous(), async_op=True), shard))
    def finish_reduce_scatter(self) -> list[torch.Tensor]:
        shards = []
        for work, shard in self._pending:
            if work is not None:
                work.wait()
            shards.append(shard.div_(self.world_size))  # summed, then averaged: AVG is NCCL-only
        return shards
    @torch.no_grad()
    def step(self, shard_grads: list[torch.Tensor], clip_coef: torch.Tensor | float = 1.0) -> None:
        gathers = []
        for p, grad, buf, rows in zip(self.banks, shard_grads, self.buffers, self.shard_rows):
            grad = grad * clip_coef
            buf.mul_(self.momentum).add_(grad)
            update = grad.add_(buf, alpha=self.momentum)  # Nesterov
            if self.row_norm:  # MuonEq-R: equalise row norms before orthogonalising
                update = update / (update.norm(dim=-1, keepdim=True) + 1e-7)
            update = newton_schulz(update, self.ns_steps) * max(1.0, p.size(1) / p.size(2)) ** 0.5
            if self.world_size == 1:
                gathers.append((p, None, update))
                continue
            full = update.new_empty(rows * self.world_size, *update.shape[1:])
            gathers.append((p, dist.all_gather_into_tensor(full, update.contiguous(), async_op=True), full))
        for p, work, full in gathers:
            if work is not None:
                work.wait()
            p.mul_(1.0 - self.lr * self.weight_decay)
            p.add_(full[: p.size(0)].to(p.dtype), alpha=-self.lr)

def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """One flat all-reduce for all non-bank gradients (they are small)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))

class Optimizers:
    """Muon for the banks plus AdamW for the rest, stepped together with global-norm clipping."""
    def __init__(self, model: GPT, h: Hyperparameters, rank: int, world_size: int):
        self.world_size, self.grad_clip_norm = world_size, h.grad_clip_norm
        self.muon = ParallelMuon(model.bank_parameters(), h.matrix_lr, h.muon_momentum, h.muon_wd,
                                 h.newton_schulz_steps, h.muon_row_norm, world_size)
        adapters = model.adapter_parameters()
        special = {id(p) for p in model.bank_parameters() + adapters + [model.tok_emb.weight]}
        scalars = [p for p in model.parameters() if id(p) not in special]
        # The embedding's own decay, 0.085, and 0.02 on the scalars, as in PR #1493; adapters when there are any.
        groups = [{"params": params, "lr": lr, "weight_decay": decay, "name": name, "base_lr": lr}
                  for name, params, lr, decay in (("embed", [model.tok_emb.weight], h.embed_lr, h.embed_wd),
                                                  ("scalars", scalars, h.scalar_lr, h.adam_wd),
                                                  ("adapters", adapters, h.adapter_lr, 0.0)) if params]
        fused = {"fused": True} if model.tok_emb.weight.is_cuda else {}
        self.adam = torch.optim.AdamW(groups, betas=(h.beta1, h.beta2), eps=1e-8, **fused)
        self.adam_params = [p for g in groups for p in g["params"]]
    def set_schedule(self, lr_mult: float, muon_momentum: float) -> None:
        self.muon.lr, self.muon.momentum = self.muon.base_lr * lr_mult, muon_momentum
        for group in self.adam.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
    def step(self) -> torch.Tensor:
        """Average gradients across ranks, clip by the global norm, update; returns the norm."""
        self.muon.start_reduce_scatter()
        average_gradients(self.adam_params, self.world_size)
        shards = self.muon.finish_reduce_scatter()
        bank_sq = sum((s.float().square().sum() for s in shards), torch.zeros((), device=shards[0].device))
        if self.world_size > 1:
            dist.all_reduce(bank_sq)
        adam_grads = [p.grad for p in self.adam_params if p.grad is not None]
        adam_sq = sum((g.float().square().sum() for g in adam_grads), torch.zeros_like(bank_sq))
        norm = (bank_sq + adam_sq).sqrt()
        # The clip factor stays a tensor: reading it on the host would stall the GPU every step.
        clip = (self.grad_clip_norm / (norm + 1e-6)).clamp(max=1.0) if self.grad_clip_norm > 0 else 1.0
        if self.grad_clip_norm > 0:
            torch._foreach_mul_(adam_grads, clip)
        self.muon.step(shards, clip)
        self.adam.step()
        return norm
    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)
        for p in self.muon.banks:
            p.grad = None
    def state_dict(self) -> dict:
        return {"muon": {"buffers": [b.clone() for b in self.muon.buffers]}, "adam": copy.deepcopy(self.adam.state_dict())}
    def load_state_dict(self, state: dict) -> None:
        for buf, saved in zip(self.muon.buffers, state["muon"]["buffers"]):
            buf.copy_(saved)
        self.adam.load_state_dict(state["adam"])

# ---------------------------------------------------------------------------------------------
# TRAINING LOOP
# Compile warm-up steps (unlooped and looped, so turning the loop on later compiles nothing
# inside the clock) run first, then are undone. The clock runs to MAX_WALLCLOCK_SECONDS minus
# the GPTQ reserve; learning rates decay linearly to zero over its last WARMDOWN_FRAC. Every
# stop or loop decision uses the slowest rank's clock, so all ranks act on the same step.

@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    log_path: Path | None = None
    kernels: AttentionKernels | None = None  # chosen once per run, in run()
    activity: str = "starting"
    activity_since: float = field(default_factory=time.monotonic)
    patience: float = 0.0  # how long this activity may legitimately take (0: DIST_TIMEOUT_SECONDS)
    activity_changed: threading.Event = field(default_factory=threading.Event)  # wakes the StallMonitor
    monitor: threading.Thread | None = None  # the StallMonitor of a multi-process run
    @property
    def is_main(self) -> bool:
        return self.rank == 0
    def log(self, line: str = "", console: bool = True) -> None:
        if self.is_main and console:
            print(line, flush=True)
        if self.is_main and self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
    def doing(self, activity: str, patience: float = 0.0) -> None:
        self.activity, self.activity_since, self.patience = activity, time.monotonic(), patience
        self.activity_changed.set()
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

class TrainingDiverged(RuntimeError):
    """The training loss or weights stopped being finite: the run ends without an artifact."""

def lr_multiplier(progress: float, warmdown_frac: float, min_lr: float = 0.0) -> float:
    """1, then linear to 0 over the budget's last warmdown_frac, floored at MIN_LR (PR #1787: the last steps learn)."""
    return 1.0 if warmdown_frac <= 0 or progress < 1.0 - warmdown_frac else max(min_lr, (1.0 - progress) / warmdown_frac)

def ramp_after_switch(steps_since: int, ramp_steps: int) -> float:
    """LR factor after a context switch: 1/ramp_steps back to 1, linearly (PR #2014: longer rows rescale the gradient)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, (steps_since + 1) / ramp_steps)

class WeightEMA:
    """EMA of all parameters, decay 1 - 1 / (EMA_HORIZON_FRAC * expected steps): the 2026-04-09 record's 0.9965 is
    ~6% of its ~4,550 steps; a fixed 0.9965 kept early weights on a 300-step CPU run (2.59 bpb instead of ~1.9)."""
    def __init__(self, model: nn.Module, horizon_frac: float):
        self.horizon_frac, self.params = horizon_frac, list(model.parameters())
        self.shadow = [p.detach().float().clone() for p in self.params]
    @torch.no_grad()
    def update(self, expected_steps: float) -> None:
        decay = 1.0 - 1.0 / max(1.0, self.horizon_frac * expected_steps)
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)
    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s.to(p.dtype))

class Runner:
    """One forward of the model, compiled or eager, called with the attention layout of its kernel built outside
    it (eagerly: a flex BlockMask never forms inside a compiled graph)."""
    def __init__(self, model: "GPT", fn, kernel: str):
        self.model, self.fn, self.kernel = model, fn, kernel
    def __call__(self, input_ids: torch.Tensor, *args, **kwargs):
        return self.fn(input_ids, *args, layout=self.model.attention_layout(input_ids, self.kernel), **kwargs)

@dataclass
class Runners:
    """The callables that run one model. COMPILE=1 compiles it whole (fullgraph: a graph break is an error, never
    a silent slowdown); GPTQ calibration stays eager (compiled, it faulted on the first GPU run)."""
    train: Runner  # training steps, chunked TTT and global-phase updates: static shapes
    score: Runner  # evaluation windows and chunked TTT scoring, without gradients
    calibrate: Runner  # GPTQ calibration: hidden states only, adding to model.hessians
    documents: Runner  # per-document TTT: plain causal rows, one graph for every window width
    @staticmethod
    def eager(model: "GPT", kernels: AttentionKernels | None = None) -> "Runners":
        k = kernels or AttentionKernels("sdpa_mask", "sdpa_mask", "sdpa_causal")
        return Runners(Runner(model, model, k.train), Runner(model, model, k.nograd),
                       Runner(model, model.hidden_states, k.nograd), Runner(model, model, k.nograd))

def prepare_model(model: GPT, h: Hyperparameters, rt: Runtime) -> Runners:
    kernels = rt.kernels or pick_attention_kernels(h, rt)
    model.dense, model.varlen = kernels.dense_fn, kernels.varlen
    if not h.compile:  # COMPILE=1 compiles on any device: on the CPU too, so CI tests the compiled path
        return Runners.eager(model, kernels)
    # Each graph is compiled once per shape; the default limit (8) would silently fall back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    whole = torch.compile(model, fullgraph=True, dynamic=False)
    documents = torch.compile(model, fullgraph=True, dynamic=True)
    return Runners(Runner(model, whole, kernels.train), Runner(model, whole, kernels.nograd),
                   Runner(model, model.hidden_states, kernels.nograd), Runner(model, documents, kernels.nograd))

def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far (each compile costs seconds to minutes)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])

def log_compiles(rt: Runtime, stage: str, before: int) -> None:
    rt.log(f"compiled_graphs stage:{stage} new:{graphs_compiled() - before} total:{graphs_compiled()}")

# How long a compile (or a peer waiting on one) may take: one graph took 195 s cold on one H200 (tests/RESULTS.md),
# and eight ranks compiling at once on one host's CPUs take longer.
COMPILE_PATIENCE_SECONDS = 1800.0

@contextlib.contextmanager
def compile_timer(rt: Runtime, graph: str):
    """Time one warm-up call that compiles `graph`: every second of it is paid before the clock on every run."""
    rt.synchronize()
    rt.doing(f"warming up the {graph} graph", COMPILE_PATIENCE_SECONDS)
    t0, before = time.perf_counter(), graphs_compiled()
    yield
    rt.synchronize()
    rt.log(f"compile_time graph:{graph} time:{1000 * (time.perf_counter() - t0):.0f}ms "
           f"new_graphs:{graphs_compiled() - before}")

class SlowestClock:
    """The slowest rank's training time (ms) after a step, the same on every rank, so all take the same decisions.
    read_late() posts this rank's clock into a stream-ordered MAX all-reduce and reads the one posted a step earlier
    (no host sync: the GPU never idles); read_now() syncs and reads this step (logged steps read the loss anyway)."""
    def __init__(self, rt: Runtime):
        self.rt, self.ms, self.step, self.step_ms = rt, 0.0, 0, 0.0  # the latest reading, its step, ms per step
        self.posted = None  # (host tensor, CUDA event or None, step) of the reading in flight
    def _post(self, ms: float) -> torch.Tensor:
        value = torch.tensor([ms], dtype=torch.float64)
        if self.rt.device.type == "cuda":
            value = value.pin_memory().to(self.rt.device, non_blocking=True)
        if self.rt.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value
    def _update(self, ms: float, step: int) -> None:
        if step > self.step:
            self.step_ms = (ms - self.ms) / (step - self.step)
        self.ms, self.step = ms, step
    def read_late(self, ms: float, step: int) -> None:
        if self.posted is not None:
            host, event, posted_step = self.posted
            if event is not None:
                event.synchronize()  # the step before: done unless the host ran two steps ahead
            self._update(float(host), posted_step)
        value, event = self._post(ms), None
        if value.is_cuda:
            value = torch.empty(1, dtype=torch.float64, pin_memory=True).copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.posted = (value, event, step)
    def read_now(self, ms: float, step: int) -> None:
        self.rt.synchronize()
        self.posted = None  # superseded by a newer reading
        self._update(float(self._post(ms)), step)
    def next_step_ends(self, step: int) -> float:
        """Predicted time at the end of step + 1: the stop rule stops before a step that would end past the budget."""
        return self.ms + (step + 1 - self.step) * self.step_ms

def log_training_step(rt: Runtime, h: Hyperparameters, loss: torch.Tensor, step: int, train_ms: float,
                      tokens_per_step: int) -> None:
    """The step line with the global batch's loss; a non-finite loss ends the run (read here anyway: no host sync)."""
    if rt.world_size > 1:  # every rank logs on the same steps
        dist.all_reduce(loss)
        loss /= rt.world_size
    if not math.isfinite(loss.item()):
        raise TrainingDiverged(f"the training loss is {loss.item()} at step {step}: training diverged, so no artifact "
                               f"or score is produced. Lower the learning rates (MATRIX_LR, EMBED_LR, SCALAR_LR) or "
                               f"keep GRAD_CLIP_NORM > 0.")
    rt.log(f"step:{step}/{h.iterations} train_loss:{loss.item():.4f} train_time:{train_ms:.0f}ms "
           f"step_avg:{train_ms / step:.2f}ms tok_s:{int(tokens_per_step * step / max(train_ms / 1000, 1e-9))}")

def training_step(h: Hyperparameters, runners: Runners, rt: Runtime, opt: Optimizers, loader: TrainLoader):
    accum, window = h.grad_accum_steps(rt.world_size), h.window_len
    def run_step(lr_mult: float, momentum: float, row_len: int) -> torch.Tensor:
        batch, total = loader.next_batch(rt.device), torch.zeros((), device=rt.device)
        for micro in batch.chunk(accum):
            inputs, targets = micro[:, :-1], micro[:, 1:]
            if row_len != window:  # each window cut into rows of this phase's length: every target kept
                inputs, targets = inputs.reshape(-1, row_len), targets.reshape(-1, row_len)
            with rt.autocast():
                loss = runners.train(inputs, targets)
            (loss / accum).backward()
            total += loss.detach()
        opt.set_schedule(lr_mult, momentum)
        opt.step()
        opt.zero_grad()
        return total / accum
    return run_step

def warm_up_training(h: Hyperparameters, model: GPT, rt: Runtime, opt: Optimizers, loader: TrainLoader,
                     run_step) -> None:
    """Compile every (row length, looping) graph the run will meet before the clock starts (a step each at least,
    the first one timed), then undo the steps' effect on the weights, optimizer state and data order."""
    states, t0, graphs = h.training_states(), time.perf_counter(), graphs_compiled()
    initial_model, initial_opt = copy.deepcopy(model.state_dict()), opt.state_dict()
    warmup_steps = max(h.warmup_steps, len(states))
    for i in range(warmup_steps):
        rt.doing(f"compile warm-up step {i + 1}")
        row_len, model.looping = states[i * len(states) // warmup_steps]
        graph = f"train_{'looped' if model.looping else 'unlooped'}_{row_len}"
        with compile_timer(rt, graph) if i * len(states) % warmup_steps < len(states) else contextlib.nullcontext():
            run_step(1.0, h.muon_momentum_warmup_start, row_len)
    model.load_state_dict(initial_model)
    opt.load_state_dict(initial_opt)
    loader.reset()
    rt.synchronize()
    rt.log(f"warmup_done steps:{warmup_steps} time:{1000 * (time.perf_counter() - t0):.0f}ms (compile; weights and "
           f"optimizer state restored)")
    log_compiles(rt, "warmup", graphs)

def schedule_step(h: Hyperparameters, model: GPT, rt: Runtime, step: int, progress: float, row_len: int,
                  switched_at: int | None) -> tuple[float, float, int, int | None]:
    """This step's looping, row length, LR multiplier and Muon momentum, from the slowest rank's clock: all agree."""
    if not model.looping and h.num_loops > 0 and progress >= h.enable_looping_at:
        model.looping = True
        layers = " ".join(str(layer) for layer, _ in model.schedule())
        rt.log(f"looping_enabled step:{step} progress:{progress:.3f} virtual_layers:{layers}")
    if (length := h.context_at(progress)) != row_len:
        row_len, switched_at = length, step
        rt.log(f"context_switch step:{step} progress:{progress:.3f} seq_len:{row_len}")
    frac = min(step / max(h.muon_momentum_warmup_steps, 1), 1.0)
    momentum = (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum
    lr_mult = lr_multiplier(progress, h.warmdown_frac, h.min_lr)
    if switched_at is not None:
        lr_mult *= ramp_after_switch(step - switched_at, h.context_lr_ramp_steps)
    return lr_mult, momentum, row_len, switched_at

def train_model(h: Hyperparameters, model: GPT, runners: Runners, rt: Runtime, evaluate) -> dict:
    """Train in place through runners.train; returns timing facts. `evaluate()` gives (val_loss, val_bpb)."""
    opt, window = Optimizers(model, h, rt.rank, rt.world_size), h.window_len
    global_seqs = h.train_batch_tokens // window
    loader = TrainLoader(h.data_path, window, global_seqs, rt.rank, rt.world_size, h.seed)
    accum, micro = h.grad_accum_steps(rt.world_size), h.micro_batch(rt.world_size)
    adapted = "" if micro * window == h.micro_batch_seqs * h.train_seq_len else (
        f" (MICRO_BATCH_SEQS={h.micro_batch_seqs} adapted: the largest divisor of {micro * accum} windows per process "
        f"that holds at most {h.micro_batch_seqs * h.train_seq_len} tokens)")
    rt.log(f"train_setup global_seqs:{global_seqs} window_len:{window} tokens_per_step:{global_seqs * window} "
           f"row_lens:{','.join(str(length) for length, _ in h.context_phases())} grad_accum:{accum} "
           f"micro_batch_seqs:{micro} train_windows:{loader.num_windows} "
           f"params:{sum(p.numel() for p in model.parameters())}{adapted}")
    run_step = training_step(h, runners, rt, opt, loader)
    if h.warmup_steps > 0:
        warm_up_training(h, model, rt, opt, loader, run_step)
    graphs = graphs_compiled()
    (row_len, model.looping), switched_at = h.training_states()[0], None
    budget_ms = 1000.0 * (h.max_wallclock_seconds - h.gptq_reserve_seconds) if h.max_wallclock_seconds > 0 else 0.0
    ema, clock = (WeightEMA(model, h.ema_horizon_frac) if h.ema_enabled else None), SlowestClock(rt)
    host_ms, step, stopped_by_clock = 0.0, 0, False
    rt.synchronize()
    t_start = time.perf_counter()
    while True:
        last_step = step >= h.iterations or stopped_by_clock
        if h.val_loss_every > 0 and step > 0 and (step % h.val_loss_every == 0 or last_step):
            rt.synchronize()
            host_ms += 1000 * (time.perf_counter() - t_start)
            val_loss, val_bpb = evaluate()
            rt.log(f"step:{step}/{h.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")
            t_start = time.perf_counter()
        if last_step:
            break
        progress = clock.ms / budget_ms if budget_ms else step / h.iterations
        lr_mult, momentum, row_len, switched_at = schedule_step(h, model, rt, step, progress, row_len, switched_at)
        rt.doing(f"training step {step + 1}")
        loss = run_step(lr_mult, momentum, row_len)
        step += 1
        now = host_ms + 1000 * (time.perf_counter() - t_start)
        logged = step <= 10 or step % h.train_log_every == 0 or step == h.iterations
        clock.read_now(now, step) if logged else clock.read_late(now, step)
        if ema is not None:
            ema.update(clock.step * budget_ms / clock.ms if budget_ms and clock.ms > 0 else h.iterations)
        stopped_by_clock = bool(budget_ms) and clock.next_step_ends(step) >= budget_ms
        if stopped_by_clock and not logged:
            clock.read_now(now, step)
        if logged or stopped_by_clock:
            log_training_step(rt, h, loss, step, clock.ms, global_seqs * window)
        if stopped_by_clock:
            rt.log(f"stopping_early: wallclock_cap train_time:{clock.ms:.0f}ms step:{step}/{h.iterations}")
    if clock.step != step:
        clock.read_now(host_ms + 1000 * (time.perf_counter() - t_start), step)
    if ema is not None:
        ema.copy_to_model()
        rt.log(f"ema_applied horizon_frac:{h.ema_horizon_frac}")
    log_compiles(rt, "training", graphs)
    if broken := [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]:
        raise TrainingDiverged(f"after {step} steps these weights are not finite: {', '.join(broken)}; no artifact or score "
                               f"is produced. Lower the learning rates (MATRIX_LR, EMBED_LR, SCALAR_LR).")
    return {"train_ms": clock.ms, "steps": step, "loader": loader}

def log_peak_memory(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        allocated, reserved = torch.cuda.max_memory_allocated() // 2**20, torch.cuda.max_memory_reserved() // 2**20
    else:  # CPU: the process's peak resident memory stands in for both
        import resource
        allocated = reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    rt.log(f"peak_memory allocated:{allocated}MiB reserved:{reserved}MiB")

# ---------------------------------------------------------------------------------------------
# GPTQ EXPORT
# Input Hessians (X^T X) come from training batches only, summed over every pass of a looped layer (the
# tied embedding's: the final hidden states). GPTQ quantizes columns by decreasing Hessian diagonal and
# pushes each column's rounding error onto the columns not yet quantized; rows clip at k standard
# deviations (SDClip). By role, not size: bank matrices and the embedding are quantized, every other
# tensor passes as fp16. The artifact is a JSON header plus raw byte-shuffled arrays, compressed:
# loading it never unpickles anything.

ARTIFACT_MAGIC = b"PGA2"
ARTIFACT_FORMAT = 4  # 4: two-lane parallel residuals and the tokenizer's SHA-256 in the header
ARTIFACT_PREFIX_BYTES = 9  # magic, compressor id, CRC-32 of the compressor id and the compressed stream
MAX_HEADER_BYTES = 1 << 20

def compress(data: bytes, method: str) -> bytes:
    if method == "brotli":
        import brotli
        return brotli.compress(data, quality=11, lgwin=24)
    if method == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=22).compress(data)
    import lzma
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)

class BoundedDecompressor:
    """Decompresses a stream a piece at a time, never producing much more than asked for, so a crafted artifact
    (a few KB that inflate to GBs) is refused before it fills memory."""
    def __init__(self, data: bytes, method: str):
        self.pending, self.unfed = b"", data
        self.trailing = lambda: False  # brotli and zstd refuse bytes after their stream themselves
        if method == "brotli":  # output_buffer_limit needs brotli >= 1.2 (requirements.txt)
            import brotli
            decoder = brotli.Decompressor()
            self.pull = lambda n: b"" if decoder.is_finished() else decoder.process(self.feed(), output_buffer_limit=n)
        elif method == "zstd":
            import zstandard
            self.pull = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read
        else:
            import lzma
            decoder = lzma.LZMADecompressor()
            self.pull = lambda n: b"" if decoder.eof else decoder.decompress(self.feed(), max_length=n)
            self.trailing = lambda: decoder.eof and bool(decoder.unused_data)  # junk after the stream's end
    def feed(self) -> bytes:
        """The compressed stream on the first call, nothing after: the decoder keeps what it has not yet used."""
        data, self.unfed = self.unfed, b""
        return data
    def read(self, n: int) -> bytes:
        parts, have = [self.pending], len(self.pending)
        while have < n and (chunk := self.pull(min(n - have, 1 << 24))):
            parts.append(chunk)
            have += len(chunk)
        out = b"".join(parts)
        self.pending = out[n:]
        return out[:n]

def quant_units(model: GPT) -> list[tuple[str, int, str]]:
    """(parameter name, slot, Hessian key) for every quantized matrix; slot -1 = whole tensor."""
    L, units = model.cfg.num_layers, [("tok_emb.weight", -1, "final:0")]
    for layer in range(L):
        units += [("qo_bank", layer, f"attn_in:{layer}"), ("qo_bank", L + layer, f"attn_out:{layer}"),
                  ("kv_bank", layer, f"attn_in:{layer}"), ("kv_bank", L + layer, f"attn_in:{layer}"),
                  ("up_bank", layer, f"mlp_in:{layer}"), ("down_bank", layer, f"mlp_act:{layer}")]
    return units

def quant_spec(name: str, h: Hyperparameters) -> tuple[int, float]:
    """(bits, SDClip k) by role: the tied embedding at int7 with k = 14, attention matrices at int6 with k = 13 (PRs
    #1586, #1626, #1855); MLP matrices at int6 with k = 12.5, not PR #1855's 11.5, which fits 16 MB only with its
    stronger compressor (tests/PLANNING.md)."""
    if name == "tok_emb.weight":
        return h.embed_bits, h.embed_clip_sigmas
    return h.matrix_bits, (h.attn_clip_sigmas if name in ("qo_bank", "kv_bank") else h.mlp_clip_sigmas)

@torch.no_grad()
def collect_hessians(model: GPT, h: Hyperparameters, rt: Runtime, calibrate=None) -> dict[str, torch.Tensor]:
    """Average X^T X per matrix input over GPTQ_CALIB_BATCHES training batches (each one step's global batch, split
    over ranks as in training: PR #1855 used 16), run through `calibrate` (default: model.hidden_states)."""
    calibrate, global_seqs = calibrate or model.hidden_states, h.train_batch_tokens // h.train_seq_len
    # A seed of its own: calibration reads training shards only, never the validation split.
    loader = TrainLoader(h.data_path, h.train_seq_len, global_seqs, rt.rank, rt.world_size, h.seed + 1)
    micro_seqs, was_training = h.calibration_rows(rt.world_size), model.training
    model.eval()
    model.hessians = model.hessian_buffers()
    try:
        for _ in range(h.gptq_calib_batches):
            for micro in loader.next_batch(rt.device).split(micro_seqs):
                with rt.autocast():
                    calibrate(micro[:, :-1])
    finally:
        collected, model.hessians = model.hessians, None
        model.train(was_training)
    hessians = {}
    for (kind, layer), mat in sorted(collected.items()):
        if rt.world_size > 1:
            dist.all_reduce(mat)
        hessians[f"{kind}:{layer}"] = mat / (h.gptq_calib_batches * global_seqs * h.train_seq_len)
    return hessians

def sdclip_scale(weight: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """Per-row step size so that k standard deviations map to the largest integer level."""
    qmax = 2 ** (bits - 1) - 1
    scale = clip_sigmas * weight.float().std(dim=1).clamp_min(1e-8) / qmax
    return scale.half().float()  # stored as fp16: quantize against the value that is stored

WIDE_QMAX = 127  # AWQ-lite's columns: int8 levels on the same clipping range, so steps of scale * qmax / 127

def column_grid(cols: int, bits: int, wide: list[tuple[int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest level, step as a fraction of the row scale) of every column: qmax and 1, except in AWQ-lite's
    `wide` column ranges [start, end): 127 and qmax / 127 (the same clipping range, finer)."""
    qmax = 2 ** (bits - 1) - 1
    levels, steps = torch.full((cols,), float(qmax), device=device), torch.ones(cols, device=device)
    for start, end in wide:
        levels[start:end], steps[start:end] = WIDE_QMAX, qmax / WIDE_QMAX
    return levels, steps

def quantize_rtn(weight: torch.Tensor, bits: int, clip_sigmas: float) -> tuple[torch.Tensor, torch.Tensor]:
    qmax, scale = 2 ** (bits - 1) - 1, sdclip_scale(weight, bits, clip_sigmas)
    q = torch.clamp(torch.round(weight.float() / scale[:, None]), -qmax, qmax)
    return q.to(torch.int8), scale.half()

def quantize_gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, clip_sigmas: float,
                  damp: float, block: int, wide: list[tuple[int, int]] = ()) -> tuple[torch.Tensor, torch.Tensor, int]:
    """GPTQ on a (rows, cols) matrix: int8 levels, fp16 row scales and how many times damping rose tenfold for the
    Cholesky factorisation to succeed. The `wide` column ranges use the int8 grid (AWQ-lite)."""
    w = weight.float().clone()
    scale = sdclip_scale(w, bits, clip_sigmas)
    levels, steps = column_grid(w.size(1), bits, wide, w.device)
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diag(H), descending=True)
    w, H = w[:, order], H[order][:, order]
    step_of = scale[:, None] * steps[order][None, :]  # (rows, cols): one view per column in the loop, no kernel
    top_of, bottom_of = levels[order], -levels[order]
    eye = torch.eye(H.size(0), device=H.device)
    for retries in range(8):
        hinv, info = torch.linalg.cholesky_ex(H + damp * 10**retries * torch.diag(H).mean() * eye)
        if info == 0:
            hinv, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(hinv), upper=True)
        if info == 0:
            break
    else:
        raise RuntimeError("GPTQ: the Hessian stayed singular after raising damping 10^7-fold; use QUANT_METHOD=rtn.")
    q = torch.zeros_like(w)
    for i1 in range(0, w.size(1), block):
        i2 = min(i1 + block, w.size(1))
        w_block, errors = w[:, i1:i2].clone(), torch.zeros(w.size(0), i2 - i1, device=w.device)
        for j in range(i2 - i1):
            col, step = w_block[:, j], step_of[:, i1 + j]
            q_col = torch.clamp(torch.round(col / step), bottom_of[i1 + j], top_of[i1 + j])
            q[:, i1 + j] = q_col
            err = (col - q_col * step) / hinv[i1 + j, i1 + j]
            w_block[:, j:] -= err[:, None] * hinv[i1 + j, i1 + j:i2][None, :]
            errors[:, j] = err
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    return q[:, torch.argsort(order)].to(torch.int8), scale.half(), retries

@dataclass
class QuantizedTensor:
    """One quantized parameter, a matrix or a bank of them (slot: the matrix's index in the bank, -1 for a whole
    matrix): int8 levels times fp16 row scales. `wide` lists AWQ-lite's int8 column ranges, [slot, start, end];
    `lqer` the low-rank corrections, [slot, group, A levels, A scale, B levels, B group scales]."""
    bits: int
    q: torch.Tensor
    scale: torch.Tensor
    wide: list = field(default_factory=list)
    lqer: list = field(default_factory=list)
    def dequantized(self) -> torch.Tensor:
        weight = self.q.float() * self.scale.float().unsqueeze(-1)
        finer = (2 ** (self.bits - 1) - 1) / WIDE_QMAX
        for slot, start, end in self.wide:
            (weight if slot < 0 else weight[slot])[:, start:end] *= finer
        for slot, group, a, a_scale, b, b_scale in self.lqer:
            (weight if slot < 0 else weight[slot]).add_(lqer_product(group, a, a_scale, b, b_scale))
        return weight

LQER_A_LEVELS = (-2, 1)  # int2
LQER_B_LEVELS = (-8, 7)  # int4

def lqer_product(group: int, a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor,
                 b_scale: torch.Tensor) -> torch.Tensor:
    """The dequantized correction A B: A's levels times its one scale, B's times its group scales."""
    b_steps = b_scale.float().repeat_interleave(group, dim=1)[:, :b.size(1)]
    return (a.float() * a_scale.float()) @ (b.float() * b_steps)

def lqer_factors(error: torch.Tensor, rank: int, group: int) -> tuple[torch.Tensor, ...]:
    """A rank-`rank` SVD of a quantisation error, E ~ (U S) V^T (PR #2135): U S on int2 levels with one fp16 scale
    max|U S| / 1.5, V^T on int4 levels with an fp16 scale (max / 7.5) per `group` columns."""
    u, sv, vh = torch.linalg.svd(error.float(), full_matrices=False)
    left, right = u[:, :rank] * sv[:rank], vh[:rank]
    tiny = torch.finfo(torch.float16).tiny  # a stored scale is never 0
    a_scale = (left.abs().max() / 1.5).clamp_min(tiny).half().view(1)
    a = torch.clamp(torch.round(left / a_scale.float()), *LQER_A_LEVELS)
    cols, groups = right.size(1), -(-right.size(1) // group)
    padded = F.pad(right, (0, groups * group - cols)).view(right.size(0), groups, group)
    b_scale = (padded.abs().amax(dim=-1) / 7.5).clamp_min(tiny).half()
    b = torch.clamp(torch.round(padded / b_scale.float()[..., None]), *LQER_B_LEVELS).view(right.size(0), -1)[:, :cols]
    return a.to(torch.int8), a_scale, b.to(torch.int8), b_scale

def awq_columns(model: GPT, units: list, hessians: dict[str, torch.Tensor], h: Hyperparameters) -> dict[int, list]:
    """AWQ-lite (PR #1908): the AWQ_GROUPS most salient groups of AWQ_GROUP_COLS input columns over every quantized
    matrix, by RMS input activation (the Hessian's diagonal) x mean |W|. {unit index: [(start, end), ...]}."""
    params, width, scored = dict(model.named_parameters()), h.awq_group_cols, []
    for i, (name, slot, key) in enumerate(units):
        weight = params[name].detach() if slot < 0 else params[name].detach()[slot]
        whole = weight.size(1) // width * width  # whole groups only
        if whole == 0:
            continue
        power = torch.diag(hessians[key]).float().clamp_min(0)[:whole].view(-1, width).mean(1)
        magnitude = weight.float().abs().mean(0)[:whole].view(-1, width).mean(1)
        scored += [(value, i, g * width) for g, value in enumerate((power.sqrt() * magnitude).tolist())]
    chosen: dict[int, list] = {}
    for _, i, start in sorted(scored, reverse=True)[:h.awq_groups]:
        chosen.setdefault(i, []).append((start, start + width))
    return chosen

def quantize_model(model: GPT, hessians: dict[str, torch.Tensor] | None, h: Hyperparameters, rt: Runtime) -> dict:
    """The artifact's tensors, {name: QuantizedTensor | fp16 tensor}: units spread over ranks, then LQER added."""
    params, units = dict(model.named_parameters()), quant_units(model)
    wide_of = awq_columns(model, units, hessians, h) if h.quant_method == "gptq" and h.awq_groups > 0 else {}
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # unit index: (levels, scales)
    needed_damping = []
    for i, (name, slot, key) in enumerate(units):
        weight = params[name].detach() if slot < 0 else params[name].detach()[slot]
        bits, clip = quant_spec(name, h)
        if i % rt.world_size != rt.rank:  # another rank's unit: its broadcast fills these
            results[i] = (torch.empty(weight.shape, dtype=torch.int8, device=weight.device),
                          torch.empty(weight.size(0), dtype=torch.float16, device=weight.device))
        elif h.quant_method != "gptq":
            results[i] = quantize_rtn(weight, bits, clip)
        else:
            q, scale, retries = quantize_gptq(weight, hessians[key], bits, clip, h.gptq_damp, h.gptq_block,
                                              wide_of.get(i, []))
            results[i] = (q, scale)
            if retries:
                needed_damping.append(f"{name}[{slot}]x{10**retries}")
    if rt.world_size > 1:
        for i, (q, scale) in results.items():
            dist.broadcast(q, src=i % rt.world_size)
            dist.broadcast(scale, src=i % rt.world_size)
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, needed_damping)
        needed_damping = [m for part in gathered for m in part]
    if needed_damping:
        rt.log(f"gptq_damping_raised matrices:{len(needed_damping)} {' '.join(needed_damping)}")
    if wide_of:
        rt.log("awq_lite int8_columns:" + ",".join(f"{units[i][0]}[{units[i][1]}]:{a}-{b}" for i, ranges in wide_of.items()
                                                   for a, b in ranges))
    tensors: dict[str, QuantizedTensor | torch.Tensor] = {}
    for name, param in params.items():
        mine = sorted((slot, i) for i, (n, slot, _) in enumerate(units) if n == name)
        if not mine:
            tensors[name] = param.detach().half().cpu()
            continue
        pieces = [results[i] for _, i in mine]  # one matrix, or a bank's slots in order
        q, scale = pieces[0] if mine[0][0] < 0 else [torch.stack(part) for part in zip(*pieces)]
        tensors[name] = QuantizedTensor(quant_spec(name, h)[0], q.cpu(), scale.cpu(),
                                        [[slot, a, b] for slot, i in mine for a, b in wide_of.get(i, [])])
    if h.lqer_rank > 0:
        add_lqer_corrections(tensors, params, units, h, rt)
    quantized = sum(1 for t in tensors.values() if isinstance(t, QuantizedTensor))
    rt.log(f"quantize method:{h.quant_method} quantized_tensors:{quantized} matrices:{len(units)} "
           f"fp16_passthrough_tensors:{len(tensors) - quantized} matrix_bits:{h.matrix_bits} embed_bits:{h.embed_bits}")
    return tensors

def add_lqer_corrections(tensors: dict, params: dict, units: list, h: Hyperparameters, rt: Runtime) -> None:
    """LQER (PR #2135): the LQER_TENSORS matrices of largest quantisation error ||W - W_hat|| get a low-rank
    correction (lqer_factors), kept only if it lowers that error. Every rank computes the same corrections."""
    errors, approx = [], {name: tensors[name].dequantized() for name, _, _ in units}
    for i, (name, slot, _) in enumerate(units):
        error = params[name].detach().float().cpu() - approx[name]
        error = error if slot < 0 else error[slot]
        if torch.isfinite(error).all():  # an overflowed scale ends the export right after, naming the tensor
            errors.append((error, i))
    errors.sort(key=lambda item: -float(item[0].norm()))
    kept = []
    for error, i in errors[:h.lqer_tensors]:
        name, slot, _ = units[i]
        a, a_scale, b, b_scale = lqer_factors(error, min(h.lqer_rank, *error.shape), h.lqer_group)
        after = float((error - lqer_product(h.lqer_group, a, a_scale, b, b_scale)).norm())
        if after < float(error.norm()):
            tensors[name].lqer.append([slot, h.lqer_group, a, a_scale, b, b_scale])
            kept.append(f"{name}[{slot}]:{float(error.norm()):.4f}->{after:.4f}")
    rt.log(f"lqer rank:{h.lqer_rank} group:{h.lqer_group} corrected:{len(kept)} error_norms:{','.join(kept) or '-'}")

def _shuffled_bytes(array: np.ndarray) -> bytes:
    """Group the k-th byte of every element together: fp16 high bytes compress far better."""
    raw = np.ascontiguousarray(array).view(np.uint8)
    return raw.reshape(-1, array.itemsize).T.tobytes() if array.itemsize > 1 else raw.tobytes()

def _unshuffled(blob: bytes, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    dtype, raw = np.dtype(dtype), np.frombuffer(blob, dtype=np.uint8)
    if dtype.itemsize > 1:
        raw = raw.reshape(dtype.itemsize, -1).T.copy()
    return raw.view(dtype).reshape(shape).copy()  # writable: torch.from_numpy shares it

def serialize_artifact(tensors: dict, cfg: ModelConfig, method: str, tokenizer_sha256: str = "") -> bytes:
    arrays, entries = [], {}
    def add(array: np.ndarray) -> dict:
        data, offset = _shuffled_bytes(array), sum(map(len, arrays))  # offset: the bytes queued before it
        arrays.append(data)
        return {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset, "nbytes": len(data)}
    for name, item in tensors.items():
        if isinstance(item, QuantizedTensor):
            entries[name] = {"kind": "int", "bits": item.bits, "q": add(item.q.numpy()), "scale": add(item.scale.numpy()),
                             "wide": item.wide,
                             "lqer": [{"slot": slot, "group": group, "a": add(a.numpy()), "a_scale": add(a_scale.numpy()),
                                       "b": add(b.numpy()), "b_scale": add(b_scale.numpy())}
                                      for slot, group, a, a_scale, b, b_scale in item.lqer]}
        else:
            entries[name] = {"kind": "fp16", "data": add(item.numpy())}
    header = json.dumps({"format": ARTIFACT_FORMAT, "config": cfg.__dict__, "tokenizer_sha256": tokenizer_sha256,
                         "tensors": entries}).encode()
    payload = len(header).to_bytes(4, "little") + header + b"".join(arrays)
    return seal_artifact(method, compress(payload, method))

def seal_artifact(method: str, stream: bytes) -> bytes:
    """Magic, compressor id and the CRC-32 of both the id and the compressed stream, then the stream."""
    body = bytes([COMPRESSORS.index(method)]) + stream
    return ARTIFACT_MAGIC + body[:1] + zlib.crc32(body).to_bytes(4, "little") + body[1:]

KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", list: "a list of strings"}

def checked_config(raw: dict, vocab_size: int, artifact_bytes: int, source: str = "the artifact") -> ModelConfig:
    """An artifact's (or a checkpoint's: `source`) model settings, refused before anything is built unless this
    script could have written them for this data: JSON types, the environment's checks, vocabulary and BOS id, and
    no more parameters than the file's bytes could hold or the device's memory could evaluate."""
    if not isinstance(raw, dict) or set(raw) != set(MODEL_FIELDS) | {"bos_id"}:
        fields_seen = sorted(raw) if isinstance(raw, dict) else raw
        raise InputError(f"{source}'s model config has the fields {fields_seen!r}, not this script's; it was not "
                         f"written by this train_gpt.py")
    defaults = ModelConfig().__dict__
    env = {"TRAIN_BATCH_TOKENS": "2048", "TRAIN_SEQ_LEN": "2048", "PROGRESSIVE_CONTEXT": ""}  # only the model is checked
    for name in MODEL_FIELDS:
        value, kind = raw[name], type(defaults[name])
        # The JSON type this script writes: an integer is never 1.0, True or "128"; a list holds strings.
        if not (type(value) is kind or kind is float and type(value) is int) or kind is list and not all(
                isinstance(v, str) for v in value):
            raise InputError(f"{source}'s model config has {name}={value!r}, which is not {KIND_NAMES[kind]} "
                             f"(the {name.upper()} setting it stands for)")
        env[name.upper()] = str(int(value)) if kind is bool else ",".join(value) if kind is list else str(value)
    try:
        h = Hyperparameters(environ=env)
        h.validate(1)
    except ConfigError as exc:
        raise InputError(f"{source}'s model config is invalid ({exc})") from None
    if h.vocab_size != vocab_size:
        raise InputError(f"{source}'s model has a {h.vocab_size}-token vocabulary but the data and tokenizer have "
                         f"{vocab_size}; evaluate it with the VOCAB_SIZE, DATA_PATH and TOKENIZER_PATH it was trained on")
    if type(raw["bos_id"]) is not int or raw["bos_id"] != BOS_ID:
        raise InputError(f"{source}'s model config has bos_id={raw['bos_id']!r}; the challenge's tokenizers put BOS at "
                         f"{BOS_ID}")
    cfg = h.model_config()
    params = parameter_count(cfg)
    # Real artifacts hold 2-3 parameters a byte (int6 after brotli): a few bytes never build a giant.
    if params > 64 * artifact_bytes:
        raise InputError(f"{source}'s model config asks for {params:,} parameters from {artifact_bytes:,} bytes "
                         f"(at most 64 a byte); refusing to build it")
    need, have = 16 * params, device_memory_bytes()
    if need > have:
        raise InputError(f"{source}'s model ({params:,} parameters) needs about {need / 2**30:.1f} GiB to evaluate, "
                         f"more than this device's {have / 2**30:.1f} GiB")
    return cfg

def untrained_model(h: Hyperparameters) -> GPT:
    """The untrained model on the CPU, drawn from SEED alone (records/package.py rebuilds it to check init_probe)."""
    torch.manual_seed(h.seed)
    return GPT(h.model_config())

def parameter_count(cfg: ModelConfig) -> int:
    """The model's parameters, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(cfg).parameters())

def device_memory_bytes() -> int:
    """The GPU's memory, else this process's share of the machine's (torchrun's processes on this host split it)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local_processes

def training_memory_bytes(h: Hyperparameters, world_size: int) -> tuple[int, int]:
    """(parameters, a lower bound on one process's training memory): 20 bytes a parameter (fp32 weights, gradients,
    EMA, at least one optimizer moment), what one micro-batch saves for backward (residual, q/k/v/attention outputs,
    the MLP's hidden layer before and after the activation: 2 bytes each per virtual layer), its fp32 logits and their
    gradient. The default 98,304-token micro-batch: 25.8 GiB; the first GPU run measured 44.0 GiB (tests/RESULTS.md)."""
    cfg, tokens = h.model_config(), h.micro_batch_tokens(world_size)
    params, depth = parameter_count(cfg), cfg.num_layers + cfg.loop_len * cfg.num_loops
    saved, logits = tokens * depth * (4 * cfg.model_dim + 2 * cfg.mlp_dim) * 2, tokens * cfg.vocab_size * 4 * 2
    return params, 20 * params + saved + logits

def check_training_memory(h: Hyperparameters, rt: Runtime) -> None:
    """Refuse, before anything is allocated, a model and micro-batch too big to train; all ranks stop together."""
    (params, need), have = training_memory_bytes(h, rt.world_size), device_memory_bytes()
    agree(rt, None if need <= have else (
        f"these settings (a model of {params:,} parameters: NUM_LAYERS={h.num_layers} MODEL_DIM={h.model_dim} "
        f"MLP_MULT={h.mlp_mult}; micro-batches of {h.micro_batch_tokens(rt.world_size):,} tokens) need at least "
        f"{need / 2**30:.1f} GiB a process to train, more than this device's {have / 2**30:.1f} GiB; lower "
        f"MICRO_BATCH_SEQS, TRAIN_SEQ_LEN, NUM_LAYERS, MODEL_DIM or MLP_MULT."))

def artifact_corrupt(reason: str) -> InputError:
    return InputError(f"the artifact is corrupt or truncated ({reason}); refusing to load it. Copy it again or "
                      f"re-export it with EXPORT_ONLY=<checkpoint>")

def artifact_header(blob: bytes, vocab_size: int,
                    tokenizer_sha256: str | None) -> tuple[dict, ModelConfig, BoundedDecompressor]:
    """Magic, checksum, format, config and tokenizer, each checked before anything trusts it; returns the header,
    the checked config and the stream positioned at the payload."""
    if blob[:4] != ARTIFACT_MAGIC or len(blob) < ARTIFACT_PREFIX_BYTES or blob[4] >= len(COMPRESSORS):
        raise InputError("not a train_gpt.py artifact (bad magic); refusing to load it. Only files written by this "
                         "script's export can be evaluated")
    if zlib.crc32(blob[4:5] + blob[ARTIFACT_PREFIX_BYTES:]) != int.from_bytes(blob[5:9], "little"):
        raise InputError("the artifact's checksum does not match its contents: the file is corrupt (even one changed "
                         "bit is refused). Copy it again or re-export it with EXPORT_ONLY=<checkpoint>")
    stream = BoundedDecompressor(blob[ARTIFACT_PREFIX_BYTES:], COMPRESSORS[blob[4]])
    if (header_len := int.from_bytes(stream.read(4), "little")) > MAX_HEADER_BYTES:
        raise artifact_corrupt(f"a {header_len:,}-byte header")
    header = json.loads(stream.read(header_len))
    if header.get("format") != ARTIFACT_FORMAT:
        raise InputError(f"the artifact is format {header.get('format')!r}, written by another version of train_gpt.py "
                         f"(this one reads format {ARTIFACT_FORMAT}); evaluate it with the script that wrote it")
    cfg = checked_config(header.get("config"), vocab_size, len(blob))
    if tokenizer_sha256 is not None and header.get("tokenizer_sha256") != tokenizer_sha256:
        raise InputError(f"the artifact was trained with the tokenizer of SHA-256 "
                         f"{str(header.get('tokenizer_sha256'))[:16]}, but TOKENIZER_PATH has {tokenizer_sha256[:16]}; "
                         f"evaluate it with its own tokenizer and data (a CaseOps and a plain tokenizer of one "
                         f"vocabulary size do not share token meanings)")
    return header, cfg, stream

def payload_arrays(entries: dict, shapes: dict[str, tuple]) -> list[dict]:
    """Every array the tensor entries name, each checked against the model's shapes (dtype, shape, bits, AWQ-lite
    column ranges, LQER factors) before any byte of the payload is read."""
    arrays = []
    def check(ref: dict, dtype: str, shape: tuple, what: str) -> None:
        if ref["dtype"] != dtype or tuple(ref["shape"]) != tuple(shape):
            raise artifact_corrupt(f"{what} is {ref['dtype']}{ref['shape']}, expected {dtype}{list(shape)}")
        arrays.append(ref)
    def matrix_of(name: str, slot) -> tuple[int, int]:
        """(rows, cols) of one matrix of tensor `name`; slot -1 for a matrix, an index for a bank."""
        shape = shapes[name]
        if not isinstance(slot, int) or isinstance(slot, bool) or not (
                0 <= slot < shape[0] if len(shape) == 3 else slot == -1):
            raise artifact_corrupt(f"{name} has no matrix {slot!r}")
        return shape[-2], shape[-1]
    if set(entries) != set(shapes):
        raise artifact_corrupt(f"tensors {sorted(set(entries) ^ set(shapes))} do not match the model")
    for name, entry in entries.items():
        if entry["kind"] != "int":
            check(entry["data"], "<f2", shapes[name], f"{name}.data")
            continue
        check(entry["q"], "|i1", shapes[name], f"{name}.q")
        check(entry["scale"], "<f2", shapes[name][:-1], f"{name}.scale")
        if not isinstance(entry["bits"], int) or not 2 <= entry["bits"] <= 8:
            raise artifact_corrupt(f"{name} has {entry['bits']!r} bits")
        for slot, start, end in entry["wide"]:
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= matrix_of(name, slot)[1]):
                raise artifact_corrupt(f"{name}[{slot}] has int8 columns {start}-{end} outside the matrix")
        for fix in entry["lqer"]:
            rows, cols = matrix_of(name, fix["slot"])
            rank, group = fix["a"]["shape"][-1], fix["group"]
            if not (isinstance(rank, int) and 1 <= rank <= min(rows, cols) and isinstance(group, int) and group >= 1):
                raise artifact_corrupt(f"{name}[{fix['slot']}] has an LQER correction of rank {rank!r}, group {group!r}")
            for key, dtype, shape, what in (("a", "|i1", (rows, rank), "A"), ("a_scale", "<f2", (1,), "A scale"),
                                            ("b", "|i1", (rank, cols), "B"),
                                            ("b_scale", "<f2", (rank, -(-cols // group)), "B scales")):
                check(fix[key], dtype, shape, f"{name} LQER {what}")
    return arrays

def deserialize_artifact(blob: bytes, vocab_size: int,
                         tokenizer_sha256: str | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """An artifact's config and dequantized float32 tensors, each part checked before any work trusts it; only JSON
    and raw arrays are read (nothing is unpickled), and decompression stops where the config says the payload ends."""
    try:
        header, cfg, stream = artifact_header(blob, vocab_size, tokenizer_sha256)
        with torch.device("meta"):
            shapes = {n: tuple(p.shape) for n, p in GPT(cfg).named_parameters()}
        arrays = payload_arrays(header["tensors"], shapes)
        total = sum(math.prod(r["shape"]) * np.dtype(r["dtype"]).itemsize for r in arrays)
        data = stream.read(total)
        if len(data) < total:
            raise artifact_corrupt(f"the payload ends after {len(data):,} of {total:,} bytes")
        if stream.read(1) or stream.trailing():
            raise artifact_corrupt(f"more data follows the {total:,} bytes the config needs")
        def read(ref: dict, levels: tuple[int, int] | None = None, what: str = "") -> torch.Tensor:
            size = math.prod(ref["shape"]) * np.dtype(ref["dtype"]).itemsize
            if ref["offset"] < 0 or ref["offset"] + size > total or ref["nbytes"] != size:
                raise artifact_corrupt(f"an array at offset {ref['offset']} lies outside the payload")
            values = torch.from_numpy(_unshuffled(data[ref["offset"]: ref["offset"] + size], ref["dtype"], ref["shape"]))
            if levels and values.numel() and not (levels[0] <= int(values.min()) and int(values.max()) <= levels[1]):
                raise artifact_corrupt(f"{what} has levels outside [{levels[0]}, {levels[1]}]")
            return values
        state = {}
        for name, entry in header["tensors"].items():
            if entry["kind"] != "int":
                state[name] = read(entry["data"]).float()
                continue
            lqer = [[fix["slot"], fix["group"], read(fix["a"], LQER_A_LEVELS, f"{name} LQER A"), read(fix["a_scale"]),
                     read(fix["b"], LQER_B_LEVELS, f"{name} LQER B"), read(fix["b_scale"])] for fix in entry["lqer"]]
            quantized = QuantizedTensor(entry["bits"], read(entry["q"]), read(entry["scale"]), entry["wide"], lqer)
            state[name] = quantized.dequantized()
    except InputError:
        raise
    except Exception as exc:  # brotli/zstd/lzma, JSON, numpy and key errors alike
        raise artifact_corrupt(f"{type(exc).__name__}: {exc}") from exc
    if broken := [name for name, t in state.items() if not torch.isfinite(t).all()]:
        raise InputError(f"the artifact's weights are not finite ({', '.join(broken)}): it cannot give a score")
    return cfg, state

def read_artifact_file(path: str) -> bytes:
    """The artifact's bytes, its magic checked first; a file far over the limit is refused unread."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ARTIFACT_PATH={path} does not exist; point it at the .ptz file a training run wrote")
    with open(path, "rb") as f:
        if f.read(4) != ARTIFACT_MAGIC:
            raise InputError(f"{path} is not a train_gpt.py artifact (bad magic); refusing to load it. Only files written "
                             f"by this script's export can be evaluated")
    if (size := path.stat().st_size) > 4 * CHALLENGE_LIMIT_BYTES:
        raise InputError(f"{path} has {size:,} bytes, over 4x the challenge's {CHALLENGE_LIMIT_BYTES:,}-byte limit; "
                         f"refusing to read it")
    return path.read_bytes()

def model_from_artifact(blob: bytes, device: torch.device, vocab_size: int, tokenizer_sha256: str | None = None) -> GPT:
    cfg, state = deserialize_artifact(blob, vocab_size, tokenizer_sha256)
    model = GPT(cfg).to(device)
    model.load_state_dict(state, strict=True)
    model.looping = cfg.num_loops > 0  # looping stays on for export and evaluation
    return model

def share_bytes(blob: bytes | None, rt: Runtime) -> bytes:
    """Rank 0's bytes on every rank (nodes need not share a file system)."""
    if rt.world_size == 1:
        return blob
    size = torch.tensor([len(blob) if rt.is_main else 0], dtype=torch.int64, device=rt.device)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(rt.device) if rt.is_main
           else torch.empty(int(size), dtype=torch.uint8, device=rt.device))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().numpy())

# ---------------------------------------------------------------------------------------------
# EVALUATION
# Every stage scores windows of the validation stream: a window scores only the targets after the previous
# window's end, so each target is scored once, with at least EVAL_SEQ_LEN - EVAL_STRIDE tokens of context after the
# first window (plain evaluation: stride = EVAL_SEQ_LEN). Test-time training is legal only if it is causal, scores a
# normalised distribution, and scores each token once, before any update that used it (issues #402, #677, #1017).

@dataclass
class Windows:
    starts: np.ndarray  # first input position
    ends: np.ndarray  # one past the last input position (= last scored target index)
    score_from: np.ndarray  # targets with index > score_from are scored by this window
    index: np.ndarray  # position in the full list: the order windows are scored in
    def __len__(self) -> int:
        return len(self.starts)
    def subset(self, index) -> "Windows":
        return Windows(self.starts[index], self.ends[index], self.score_from[index], self.index[index])

def sliding_windows(num_tokens: int, seq_len: int, stride: int) -> Windows:
    """Windows over a stream of num_tokens tokens (targets are the indices 1..num_tokens-1)."""
    targets = num_tokens - 1
    length = min(seq_len, targets)
    count = 1 + max(0, math.ceil((targets - length) / stride))
    ends = np.minimum(length + stride * np.arange(count, dtype=np.int64), targets)
    return Windows(ends - length, ends, np.concatenate([[0], ends[:-1]]), np.arange(count))

def rank_share(count: int, rt: Runtime) -> slice:
    return slice(count * rt.rank // rt.world_size, count * (rt.rank + 1) // rt.world_size)

class NllRecorder:
    """Per-target NLL, bytes and scoring order of one stage, for NLL_DUMP_PATH audits. The order key grows with
    processing order (the window's index; per-document TTT: batch * 2^32 + chunk) and ignores the world size."""
    def __init__(self, num_tokens: int):
        self.totals = torch.zeros(4, num_tokens, dtype=torch.float64)
        self.nll, self.bytes, self.count, self.order = self.totals  # order: key + 1; 0 = not scored
    def add(self, positions: torch.Tensor, nll: torch.Tensor, nbytes: torch.Tensor, order: torch.Tensor) -> None:
        ones = torch.ones(len(positions), dtype=torch.float64)
        rows = torch.stack([nll.double().cpu(), nbytes.double().cpu(), ones, order.double().cpu() + 1])
        self.totals.index_add_(1, positions.cpu(), rows)
    def write(self, path: str, rt: Runtime) -> None:
        totals = self.totals
        if rt.world_size > 1:
            totals = totals.to(rt.device, copy=True)
            dist.all_reduce(totals)
            totals = totals.cpu()
        if rt.is_main:
            pos = torch.nonzero(totals[2] > 0).squeeze(1)
            nll, nbytes, count, order = totals[:, pos].numpy()
            with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a bare name
                np.savez(f, nll=nll, bytes=nbytes.astype(np.int64), pos=pos.numpy(), times_scored=count.astype(np.int64),
                         order=(order - 1).astype(np.int64))

@torch.no_grad()
def score_windows(score_fn, val: torch.Tensor, windows: Windows, batch_seqs: int, tables: ByteTables,
                  meter: BpbMeter, rt: Runtime, recorder: NllRecorder | None = None) -> None:
    """Score windows into the meter in fixed-shape batches, the last one padded (a compiled forward sees one shape);
    fewer windows than a batch pad only to the next power of two (at most log2(batch_seqs) extra shapes)."""
    if len(windows) == 0:
        return
    batch_seqs = min(batch_seqs, 1 << (len(windows) - 1).bit_length())
    length = int(windows.ends[0] - windows.starts[0])
    offsets, rel = torch.arange(length + 1, device=val.device), torch.arange(length, device=val.device)[None, :]
    for b in range(0, len(windows), batch_seqs):
        rt.doing(f"scoring windows {b}..{b + batch_seqs} of {len(windows)}")
        idx = np.arange(b, b + batch_seqs).clip(max=len(windows) - 1)
        starts = torch.from_numpy(windows.starts[idx]).to(val.device)
        first = torch.from_numpy(windows.score_from[idx] - windows.starts[idx]).to(val.device)
        tokens = val[starts[:, None] + offsets[None, :]]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        with rt.autocast():
            nll = score_fn(inputs, targets, reduction="none").float()
        mask = rel >= first[:, None]
        mask[len(windows) - b:] = False  # the padding rows
        nbytes = tables.target_bytes(inputs, targets, starts[:, None] + offsets[None, 1:])
        meter.add(nll[mask], nbytes[mask])
        if recorder is not None:
            order = torch.from_numpy(windows.index[idx]).to(val.device)[:, None].expand_as(mask)
            recorder.add((starts[:, None] + rel + 1)[mask], nll[mask], nbytes[mask], order[mask])

def evaluate_windows(score_fn, val: torch.Tensor, seq_len: int, stride: int, h: Hyperparameters,
                     tables: ByteTables, rt: Runtime, recorder: NllRecorder | None = None) -> tuple[float, float]:
    windows, meter = sliding_windows(len(val), seq_len, stride), BpbMeter(rt.device)
    score_windows(score_fn, val, windows.subset(rank_share(len(windows), rt)), h.eval_batch_seqs, tables, meter, rt,
                  recorder)
    return meter.result()

def chunk_training_pieces(chunk_start: int, chunk_end: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(input starts, first trained target offset) of fixed-length pieces training on targets chunk_start+1..chunk_end
    once each; the last piece keeps its length by starting earlier, in already-scored tokens."""
    length = min(seq_len, chunk_end)
    ends = np.minimum(np.arange(chunk_start + length, chunk_end + length, length, dtype=np.int64), chunk_end)
    starts = ends - length
    return starts, np.concatenate([[chunk_start], ends[:-1]]) - starts  # each piece trains from the last one's end

def score_first_ttt(model: GPT, runners: "Runners", val: torch.Tensor, h: Hyperparameters, tables: ByteTables,
                    rt: Runtime, recorder: NllRecorder | None = None) -> tuple[float, float]:
    """Chunked test-time training (the 2026-04-09 record's SGD on every weight) that scores every token before any
    update that uses it: chunk c's windows are scored, then trained on; the last chunk never is."""
    windows = sliding_windows(len(val), h.eval_seq_len, h.eval_stride)
    chunk_of_window = windows.score_from // h.ttt_chunk_tokens
    num_chunks, params = int(chunk_of_window[-1]) + 1, list(model.parameters())
    opt, meter = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum), BpbMeter(rt.device)
    for chunk in range(num_chunks):
        rt.doing(f"chunked TTT, chunk {chunk + 1} of {num_chunks}")
        mine = windows.subset(np.nonzero(chunk_of_window == chunk)[0])
        model.eval()
        score_windows(runners.score, val, mine.subset(rank_share(len(mine), rt)), h.eval_batch_seqs, tables, meter, rt,
                      recorder)
        if chunk == num_chunks - 1 or h.ttt_epochs == 0:
            continue
        opt.param_groups[0]["lr"] = h.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * chunk / max(num_chunks - 1, 1)))
        model.train()
        chunk_end = min((chunk + 1) * h.ttt_chunk_tokens, len(val) - 1)
        train_on_tokens(runners.train, val, chunk * h.ttt_chunk_tokens, chunk_end, params, opt, h.eval_seq_len,
                        h.ttt_batch_seqs, h.ttt_epochs, h.ttt_grad_clip, rt)
    return meter.result()

def train_on_tokens(score_fn, stream: torch.Tensor, chunk_start: int, chunk_end: int, params: list[nn.Parameter],
                    opt, seq_len: int, per_step: int, epochs: int, grad_clip: float, rt: Runtime) -> None:
    """`epochs` passes over targets chunk_start+1..chunk_end of `stream`, `per_step` sequences a step split over the
    ranks (the same steps on any world size); a rank with no rows steps with zero gradient, so all-reduce never hangs."""
    starts, first = chunk_training_pieces(chunk_start, chunk_end, seq_len)
    length = min(seq_len, chunk_end)
    rel = torch.arange(length, device=stream.device)[None, :]
    offsets, per_rank = torch.arange(length + 1, device=stream.device), math.ceil(per_step / rt.world_size)
    for _ in range(epochs):
        for b in range(0, len(starts), per_step):
            count = float(sum(length - f for f in first[b:b + per_step]))  # targets trained in this step, all ranks
            lo = b + rt.rank * per_rank
            hi = min(lo + per_rank, b + per_step, len(starts))
            opt.zero_grad(set_to_none=False)
            if lo < hi:
                idx = np.arange(lo, lo + per_rank).clip(max=hi - 1)  # fixed shape; repeats masked out
                tokens = stream[torch.from_numpy(starts[idx]).to(stream.device)[:, None] + offsets[None, :]]
                mask = rel >= torch.from_numpy(first[idx]).to(stream.device)[:, None]
                mask[hi - lo:] = False
                with rt.autocast():
                    nll = score_fn(tokens[:, :-1], tokens[:, 1:], reduction="none").float()
                # Mean over the step's targets on all ranks (average_gradients divides by world size).
                ((nll * mask).sum() * rt.world_size / count).backward()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            average_gradients(params, rt.world_size)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()


# Per-document TTT (PR #1530; warm-start A, PR #1767; global SGD phases, PRs #1610, #1626): every validation
# document gets its own low-rank adapters, trained only on its chunks after they are scored. Batches of documents go
# longest first; each rank takes whole batches by a fixed rule, so the score never depends on timing.

def context_hashes(val: torch.Tensor, bos_id: int, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position t: a 64-bit hash of tokens t-order..t-1, and whether all lie in t's document (its BOS included)."""
    n, tokens = len(val), val.long()
    mixed = torch.zeros(n, dtype=torch.long, device=val.device)
    for back in range(order, 0, -1):  # int64 products wrap: a polynomial hash mod 2^64
        shifted = torch.zeros_like(mixed)
        shifted[back:] = tokens[:max(n - back, 0)] + 1
        mixed = mixed * 0x100000001B3 + shifted
    positions = torch.arange(n, device=val.device)
    bos_at = torch.where(tokens == bos_id, positions, torch.zeros_like(positions))
    doc_start = torch.cat([positions[:1] * 0, torch.cummax(bos_at, 0).values[:-1]])  # the last BOS among t's inputs
    return mixed, positions - order >= doc_start

def scoring_order(docs: list[tuple[int, int]], batches: list[list[int]], chunks: list[int], device) -> torch.Tensor:
    """Every target position of per-document TTT in the order one process scores them: batch by batch, chunk by
    chunk (batch b's chunk length chunks[b]), inside a chunk document by document, then position by position."""
    doc = torch.tensor([d for batch in batches for d in batch])
    batch = torch.repeat_interleave(torch.arange(len(batches)), torch.tensor([len(b) for b in batches])).to(device)
    row = torch.cat([torch.arange(len(b)) for b in batches]).to(device)
    starts = torch.tensor([s for s, _ in docs])[doc].to(device)
    counts = torch.tensor([n for _, n in docs])[doc].to(device)
    chunk = torch.tensor(chunks, device=device)[batch]
    rows, widest = max(len(b) for b in batches), max(chunks)
    most_chunks = max(-(-docs[b[0]][1] // c) for b, c in zip(batches, chunks))  # batches are longest first
    assert len(batches) * most_chunks * rows * widest < 2**62, "the scoring order's sort key would overflow"
    per_target = lambda x: torch.repeat_interleave(x, counts)
    offset = torch.arange(int(counts.sum()), device=device) - per_target(torch.cumsum(counts, 0) - counts)
    length = per_target(chunk)
    key = ((per_target(batch) * most_chunks + offset // length) * rows + per_target(row)) * widest + offset % length
    return (per_target(starts) + 1 + offset)[torch.argsort(key)]

class NgramTilt:
    """Token n-gram tilt of the scored loss (PR #2135, token-only as the maintainers accept). A hash of the ORDER tokens
    before a target, all in its document, indexes counts of the tokens that followed that context in targets scored
    *before* it in the plan's order (PR #2135 counted in file order while scoring longest documents first). When one
    token h holds >= THRESHOLD of a context's count, p'(y) = p(y) e^(beta [y = h]) / (1 + q (e^beta - 1)), q = p(h), a
    distribution: NLL' = NLL - beta [y = h] + log(1 + q (e^beta - 1)). Only scores change; TTT trains on the plain NLL.
    Every rank counts every hint up front from the same plan, so the score is the one-process score on any world size."""
    def __init__(self, val: torch.Tensor, order: torch.Tensor, bos_id: int, context: int, threshold: float, beta: float):
        self.beta = beta
        hashes, full = context_hashes(val, bos_id, context)
        seq = order[full[order]]  # targets with a whole context, in scoring order
        keys, ys, m = hashes[seq], val.long()[seq], len(seq)
        index = torch.arange(m, device=val.device)
        zero = torch.zeros_like(index)
        by_key = torch.argsort(keys, stable=True)  # grouped by context, in scoring order inside a group
        keys, ys = keys[by_key], ys[by_key]
        new_group = torch.ones(m, dtype=torch.bool, device=val.device)
        new_group[1:] = keys[1:] != keys[:-1]
        group = torch.cumsum(new_group.long(), 0) - 1
        seen = index - torch.cummax(torch.where(new_group, index, zero), 0).values  # targets of this context before
        # How often this target's token followed its context, this target included.
        pair = group * (int(ys.max()) + 1 if m else 1) + ys
        by_pair, new_pair = torch.argsort(pair, stable=True), torch.ones(m, dtype=torch.bool, device=val.device)
        new_pair[1:] = pair[by_pair][1:] != pair[by_pair][:-1]
        count = torch.empty_like(index)
        count[by_pair] = index - torch.cummax(torch.where(new_pair, index, zero), 0).values + 1
        # The context's top count after each target; before it, the top after the previous one.
        top = torch.cummax(group * (m + 1) + count, 0).values - group * (m + 1)
        top_before = torch.where(new_group, zero, torch.roll(top, 1))
        # A token takes the lead only by passing the top count: a tie keeps the earlier leader.
        leader = torch.cummax(torch.where(count > top_before, index, zero), 0).values
        leader_before = torch.where(new_group, index, torch.roll(leader, 1))
        confident = (seen > 0) & (top_before.double() >= threshold * seen.double())
        self.hint = torch.zeros(len(val), dtype=torch.long, device=val.device)
        self.confident = torch.zeros(len(val), dtype=torch.bool, device=val.device)
        self.hint[seq[by_key]] = torch.where(confident, ys[leader_before], zero)
        self.confident[seq[by_key]] = confident
    def tilt(self, nll: torch.Tensor, hint_nll: torch.Tensor, hit: torch.Tensor, confident: torch.Tensor) -> torch.Tensor:
        q = torch.exp(-hint_nll)
        tilted = nll - self.beta * hit.to(nll.dtype) + torch.log1p(q * math.expm1(self.beta))
        return torch.where(confident, tilted, nll)

class TTTLoRA(nn.Module):
    """Batched per-document adapters: row d of the batch gets its own rank-r delta (alpha / r) * (x A_d^T) B_d^T on
    each of `targets`: q, k, v, o of every virtual layer (each loop pass its own, beside the trained per-pass LoRA), a
    model_dim -> model_dim adapter beside each MLP, and the head. GPT.project(), mlp() and head() call delta()."""
    def __init__(self, model: GPT, docs: int, rank: int, alpha: float, targets: tuple[str, ...] = TTT_LORA_TARGETS):
        super().__init__()
        c = model.cfg
        slots = len(virtual_layers(c.num_layers, c.loop_start, c.loop_end, c.num_loops, True))
        shapes = {"q": (c.model_dim, c.model_dim), "k": (c.kv_dim, c.model_dim), "v": (c.kv_dim, c.model_dim),
                  "o": (c.model_dim, c.model_dim), "mlp": (c.model_dim, c.model_dim), "head": (c.vocab_size, c.model_dim)}
        device, self.scale = model.tok_emb.weight.device, alpha / rank
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for t, (out_dim, in_dim) in sorted(shapes.items()):  # ParameterDict(dict) sorted them too: the draw order
            if t in targets:
                layers = 1 if t == "head" else slots
                self.A[t] = nn.Parameter(torch.zeros(layers, docs, rank, in_dim, device=device))
                self.B[t] = nn.Parameter(torch.zeros(layers, docs, out_dim, rank, device=device))
    @torch.no_grad()
    def reset(self, reset_a: bool, generator: torch.Generator) -> None:
        """B to zero (every batch); A to U(-1/sqrt(in), 1/sqrt(in)) from `generator` when asked."""
        for name, b in self.B.items():
            b.zero_()
            if reset_a:
                a = self.A[name]
                a.uniform_(-a.size(-1) ** -0.5, a.size(-1) ** -0.5, generator=generator)
    def delta(self, target: str, slot: int, x: torch.Tensor) -> torch.Tensor:
        a, b = self.A[target][slot], self.B[target][slot]
        return torch.bmm(torch.bmm(x, a.mT.to(x.dtype)), b.mT.to(x.dtype)) * self.scale

def split_documents(val: torch.Tensor, bos_id: int) -> list[tuple[int, int]]:
    """(first input position, number of targets) of every document: from its BOS to the next BOS, its last target;
    tokens before the first BOS form a document of their own. Together they cover targets 1..N-1."""
    starts = torch.nonzero(val == bos_id).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [len(val) - 1]
    return [(s, e - s) for s, e in zip(starts, ends) if e > s]

@dataclass
class DocPlan:
    batches: list[list[int]]  # document indices per batch, in processing order (longest first)
    phase_ends: list[int]  # global SGD runs after these many batches (empty: no phases)
    owner: list[int]  # the rank that scores each batch

def plan_documents(docs: list[tuple[int, int]], h: Hyperparameters, world_size: int, phases: int) -> DocPlan:
    order, size = sorted(range(len(docs)), key=lambda d: (-docs[d][1], d)), h.ttt_doc_batch
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    prefix = min(h.phased_ttt_prefix_docs, len(docs))
    # A phase helps only documents scored after it: none is placed after the last batch.
    phase_ends = sorted({math.ceil(prefix * k / phases / size) for k in range(1, phases + 1)} - {len(batches)})
    # Deterministic balance of work: between phases, each batch (longest first) goes to the least-loaded lowest rank.
    owner, load = [], [0] * world_size
    for b, batch in enumerate(batches):
        if b in phase_ends:
            load = [0] * world_size
        longest = docs[batch[0]][1]
        chunk = h.doc_chunk_tokens(longest)
        owner.append(load.index(min(load)))
        load[owner[-1]] += sum(min((c + 1) * chunk, h.eval_seq_len) for c in range(math.ceil(longest / chunk)))
    return DocPlan(batches, phase_ends, owner)

def score_document_batch(score_fn, val: torch.Tensor, docs: list[tuple[int, int]], lora: TTTLoRA, opt,
                         h: Hyperparameters, tables: ByteTables, meter: BpbMeter, rt: Runtime, order_base: int,
                         recorder: NllRecorder | None = None, ngram: NgramTilt | None = None) -> None:
    """Score chunk c of every document of the batch (at most EVAL_SEQ_LEN tokens of context, all from its document),
    then one Adam step on each document's mean chunk-c loss unless c is its last chunk. Scores come from the forward
    the step differentiates, taken before the step; with an n-gram tilt it also gives each hint token's NLL."""
    C, W, rows, device = h.doc_chunk_tokens(max(d[1] for d in docs)), h.eval_seq_len, h.ttt_doc_batch, val.device
    # Per row (padding rows have no targets): computed on the host, so the loop never waits on the device.
    starts, targets = torch.tensor(docs + [(0, 0)] * (rows - len(docs))).T
    chunks = (targets + C - 1) // C
    for c in range(int(chunks.max())):
        width = min((c + 1) * C, W)  # the same for every row, so one shape per chunk index
        end = torch.clamp(targets, max=(c + 1) * C)  # one past the chunk's last input, per row
        window_start, pos = torch.clamp(end - W, min=0), torch.arange(width + 1)[None, :]
        index = torch.clamp(starts[:, None] + window_start[:, None] + pos, max=len(val) - 1).to(device)
        tokens, valid_host = val[index], pos[:, :-1] < (end - window_start)[:, None]
        valid = valid_host.to(device)
        inputs, labels = torch.where(valid, tokens[:, :-1], 0), torch.where(valid, tokens[:, 1:], 0)
        rel = pos[:, :-1] + window_start[:, None]  # position of each input inside its document
        scored_host = valid_host & (rel >= c * C) & (c < chunks)[:, None]
        scored, trains = scored_host.to(device), c < chunks - 1
        target_pos = starts[:, None] + rel + 1  # each input's target, as a position of the validation stream
        wanted = labels
        if ngram is not None:
            target_at = target_pos.clamp(max=len(val) - 1).to(device)
            hints = torch.where(scored, ngram.hint[target_at], 0)
            wanted = torch.stack([labels, hints], dim=-1)
        with torch.set_grad_enabled(bool(trains.any())), rt.autocast():
            nll = score_fn(inputs, wanted, reduction="none").float()
        if ngram is None:
            score = nll.detach()[scored]
        else:
            nll, hint_nll = nll[..., 0], nll[..., 1]
            score = ngram.tilt(nll.detach()[scored], hint_nll.detach()[scored], (labels == hints)[scored],
                               ngram.confident[target_at][scored])
        nbytes = tables.target_bytes(inputs, labels, index[:, 1:])
        meter.add(score, nbytes[scored])
        if recorder is not None:
            positions = target_pos[scored_host]
            recorder.add(positions, score, nbytes[scored], torch.full_like(positions, order_base + c))
        if trains.any():
            # Each document's mean chunk loss, summed: documents share no gradient.
            per_doc = (nll * scored).sum(1) / scored.sum(1).clamp_min(1)
            opt.zero_grad(set_to_none=True)
            (per_doc * trains.to(device)).sum().backward()
            opt.step()

def global_sgd_phase(model: GPT, score_fn, val: torch.Tensor, docs: list[tuple[int, int]], h: Hyperparameters,
                     rt: Runtime) -> int:
    """SGD on every base weight over fully scored documents, in GLOBAL_TTT_CHUNK_TOKENS chunks, cosine LR (PR #1626)."""
    stream, params = torch.cat([val[s:s + n + 1] for s, n in docs]), list(model.parameters())
    model.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=h.global_ttt_lr, momentum=h.global_ttt_momentum)
    chunk = h.global_ttt_chunk_tokens
    num_chunks = math.ceil((len(stream) - 1) / chunk)
    model.train()
    for k in range(num_chunks):
        opt.param_groups[0]["lr"] = h.global_ttt_lr * 0.5 * (1.0 + math.cos(math.pi * k / max(num_chunks - 1, 1)))
        train_on_tokens(score_fn, stream, k * chunk, min((k + 1) * chunk, len(stream) - 1), params, opt,
                        h.eval_seq_len, math.ceil(chunk / h.eval_seq_len), 1, h.global_ttt_grad_clip, rt)
    model.eval().requires_grad_(False)
    return len(stream)

def score_documents_ttt(model: GPT, runners: Runners, val: torch.Tensor, h: Hyperparameters, tables: ByteTables,
                        rt: Runtime, recorder: NllRecorder | None = None) -> tuple[float, float]:
    """TTT_MODE=docs or phased: per-document LoRA TTT, plus global SGD phases for phased."""
    docs = split_documents(val.cpu(), model.cfg.bos_id)
    plan = plan_documents(docs, h, rt.world_size, h.phased_ttt_phases if h.ttt_mode == "phased" else 0)
    rt.log(f"ttt_docs mode:{h.ttt_mode} documents:{len(docs)} batches:{len(plan.batches)} "
           f"phase_ends:{','.join(map(str, plan.phase_ends)) or '-'} rank0_batches:{plan.owner.count(0)}")
    model.requires_grad_(False).eval()
    lora, ngram = TTTLoRA(model, h.ttt_doc_batch, h.ttt_lora_rank, h.ttt_lora_alpha, h.ttt_targets()), None
    if h.ngram_tilt:
        rt.doing("counting the n-gram hints in scoring order")
        started, chunks = time.perf_counter(), [h.doc_chunk_tokens(docs[batch[0]][1]) for batch in plan.batches]
        ngram = NgramTilt(val, scoring_order(docs, plan.batches, chunks, val.device), model.cfg.bos_id,
                          h.ngram_order, h.ngram_threshold, h.ngram_beta)
        rt.log(f"ngram_tilt order:{h.ngram_order} threshold:{h.ngram_threshold:g} beta:{h.ngram_beta:g} "
               f"targets:{len(val) - 1} tilted:{int(ngram.confident.sum())} "
               f"time:{1000 * (time.perf_counter() - started):.0f}ms")
    generator = torch.Generator(rt.device).manual_seed(h.seed)
    lora.reset(True, generator)
    meter, t0 = BpbMeter(rt.device), time.perf_counter()
    for b, batch in enumerate(plan.batches):
        if b in plan.phase_ends:
            rt.doing(f"per-document TTT, global SGD phase after batch {b}")
            done = [docs[d] for prior in plan.batches[:b] for d in prior]
            tokens = global_sgd_phase(model, runners.train, val, done, h, rt)
            lora.reset(True, generator)  # A restarts after each phase (PR #1855)
            rt.log(f"ttt_phase after_batch:{b} documents:{len(done)} tokens:{tokens} "
                   f"time:{1000 * (time.perf_counter() - t0):.0f}ms")
        if plan.owner[b] != rt.rank:
            continue
        rt.doing(f"per-document TTT, batch {b + 1} of {len(plan.batches)}")
        if not h.ttt_warm_start_a:
            generator = torch.Generator(rt.device).manual_seed(h.seed + 1 + b)  # per batch: no rank history
        lora.reset(not h.ttt_warm_start_a, generator)
        opt = torch.optim.AdamW(lora.parameters(), lr=h.ttt_lora_lr, betas=(h.ttt_beta1, h.ttt_beta2),
                                eps=1e-10, weight_decay=h.ttt_weight_decay)
        model.ttt_lora, model.rows_are_documents = lora, True
        try:
            score_document_batch(runners.documents, val, [docs[d] for d in batch], lora, opt, h, tables, meter, rt,
                                 b << 32, recorder, ngram)
        finally:
            model.ttt_lora, model.rows_are_documents = None, False
    model.requires_grad_(True)
    return meter.result()

def warm_up_ttt(model: GPT, runners: Runners, h: Hyperparameters, rt: Runtime) -> None:
    """Compile the TTT stage's graphs before its timer (as PR #1855 does): forward and backward on random tokens in
    every shape the stage uses; no optimizer steps, so no weight changes."""
    t0, graphs = time.perf_counter(), graphs_compiled()
    rt.doing("compiling the TTT graphs on random tokens")
    def forward_backward(run, rows: int, width: int, train: bool, sliced: bool = True) -> None:
        # Laid out as the stage's inputs are: a compiled graph is specialised to their strides and ranks.
        tokens = torch.randint(2, h.vocab_size, (rows, width + 1), device=rt.device)
        inputs, targets = (tokens[:, :-1], tokens[:, 1:]) if sliced else (tokens[:, :-1].clone(), tokens[:, 1:].clone())
        if not sliced and h.ngram_tilt:
            targets = torch.stack([targets, torch.randint_like(targets, 2, h.vocab_size)], dim=-1)
        with compile_timer(rt, f"ttt_{'train' if train else 'score'}_{rows}x{width}"):
            with torch.set_grad_enabled(train), rt.autocast():
                nll = run(inputs, targets, reduction="none")
            if train:
                nll.float()[..., 0].mean().backward() if nll.dim() == 3 else nll.float().mean().backward()
    model.train()
    if h.ttt_mode == "chunked":
        forward_backward(runners.train, math.ceil(h.ttt_batch_seqs / rt.world_size), h.eval_seq_len, True)
    else:
        model.requires_grad_(False)
        model.ttt_lora = TTTLoRA(model, h.ttt_doc_batch, h.ttt_lora_rank, h.ttt_lora_alpha, h.ttt_targets())
        model.rows_are_documents = True
        try:
            # The long chunk first (batches come longest first), then the window; short chunks last.
            for width in dict.fromkeys((h.ttt_doc_chunk_tokens, h.eval_seq_len, h.doc_chunk_tokens(1))):
                for train in (True, False):
                    forward_backward(runners.documents, h.ttt_doc_batch, width, train, sliced=False)
        finally:
            model.ttt_lora, model.rows_are_documents = None, False
            model.requires_grad_(True)
        if h.ttt_mode == "phased":
            rows = math.ceil(math.ceil(h.global_ttt_chunk_tokens / h.eval_seq_len) / rt.world_size)
            forward_backward(runners.train, rows, h.eval_seq_len, True)
    model.zero_grad(set_to_none=True)
    model.eval()
    rt.log(f"ttt_warmup mode:{h.ttt_mode} time:{1000 * (time.perf_counter() - t0):.0f}ms (compile on random tokens, "
           f"before the timed stage)")
    log_compiles(rt, "ttt_warmup", graphs)

# ---------------------------------------------------------------------------------------------
# MAIN
# One process per device under torchrun (CUDA + NCCL, or CPU + gloo), or one plain process. Check every setting and
# input first; then train (or load a checkpoint with EXPORT_ONLY, or an artifact with EVAL_ONLY), export, and evaluate
# the round-tripped artifact: plain, sliding, test-time training. A run's score is its last stage, never the best one.
# A bad setting or file ends the run with one line and its own exit status.

EXIT_CONFIG, EXIT_INPUT, EXIT_DIVERGED, EXIT_STALLED, EXIT_KERNEL, EXIT_MEMORY = 2, 3, 4, 5, 6, 7
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

class Terminated(BaseException):
    """SIGTERM arrived: torchrun sends it to every rank once one rank has failed."""

def raise_terminated(signum, frame) -> None:
    raise Terminated()

def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because the other end of a connection went away."""
    return isinstance(exc, getattr(dist, "DistError", ())) or (isinstance(exc, RuntimeError) and re.search(
        r"Connection (reset|closed) by peer|Broken pipe|ProcessGroupNCCL|NCCL (error|communicator)", str(exc)) is not None)

def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation the device could not satisfy (CUDA's own error, or the CPU allocator's)."""
    return isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))

def process_gone(pid: int) -> bool:
    """True when a process on this host has exited (a zombie waiting for its launcher counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel directly
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
        except OSError:
            return False

class StallMonitor(threading.Thread):
    """Names the rank that holds a multi-process run up. Each process publishes a heartbeat (time, pid, host, activity)
    to the rendezvous store when its activity changes and every few seconds. After DIST_TIMEOUT_SECONDS on one
    activity it reports the ranks whose heartbeat went silent and exits; `lost_ranks` names them after a peer died."""
    def __init__(self, rt: Runtime, timeout: float):
        super().__init__(daemon=True, name="stall-monitor")
        self.rt, self.timeout = rt, timeout
        self.interval, self.host = max(0.5, min(5.0, timeout / 10)), socket.gethostname()
        self.store = dist.distributed_c10d._get_default_store()
        self.store.set_timeout(datetime.timedelta(seconds=max(2.0, 2 * self.interval)))
    def run(self) -> None:
        while True:
            self.rt.activity_changed.clear()
            with contextlib.suppress(Exception):  # the store is gone with its host: the report below says so
                self.store.set(f"heartbeat/{self.rt.rank}",
                               f"{time.time():.3f} {os.getpid()} {self.host} {self.rt.activity}")
            waited = time.monotonic() - self.rt.activity_since
            if waited > max(self.timeout, self.rt.patience) and not self.peer_compiling(waited):
                self.fail(waited)
            self.rt.activity_changed.wait(self.interval)
    def peer_states(self) -> tuple[list[str], list[str]]:
        """(silent, alive): one phrase per other rank. A rank on this host whose process has exited is silent at
        once; elsewhere a rank is silent when its heartbeat is 3 intervals old."""
        silent, alive = [], []
        for rank in [r for r in range(self.rt.world_size) if r != self.rt.rank]:
            key = f"heartbeat/{rank}"
            if not self.store.check([key]):
                silent.append(f"rank {rank} never reported")
                continue
            stamp, pid, host, activity = self.store.get(key).decode().split(" ", 3)
            age = time.time() - float(stamp)
            if host == self.host and process_gone(int(pid)):
                silent.append(f"rank {rank} (pid {pid}) has exited (last: {activity})")
            elif age > 3 * self.interval:
                silent.append(f"rank {rank} has not answered for {age:.0f} s (last: {activity})")
            else:
                alive.append(f"rank {rank} is {activity}")
        return silent, alive
    def peer_compiling(self, waited: float) -> bool:
        """A peer that still answers and is compiling a graph holds the others up legitimately."""
        try:
            silent, alive = self.peer_states()
        except Exception:
            return False
        return not silent and waited < COMPILE_PATIENCE_SECONDS and any(" is warming up the " in a for a in alive)
    def peers(self) -> str:
        try:
            silent, alive = self.peer_states()
        except Exception:
            return "the rendezvous store does not answer, so the rank or launcher that hosts it is stopped or gone"
        return "; ".join(silent + alive) or "every other rank still answers"
    def lost_ranks(self) -> str | None:
        """After a failed collective: the dead ranks, waited for as long as a heartbeat takes to go silent; else None."""
        deadline = time.monotonic() + 3 * self.interval + 1
        while True:
            try:
                silent, _ = self.peer_states()
            except Exception:
                return "the rendezvous store does not answer, so the rank or launcher that hosts it is gone"
            if silent or time.monotonic() > deadline:
                return "; ".join(silent) or None
            time.sleep(0.2)
    def fail(self, waited: float) -> None:
        report_failure(self.rt, f"error: rank {self.rt.rank} waited {waited:.0f} s (DIST_TIMEOUT_SECONDS="
                                f"{self.timeout:g}) while {self.rt.activity}; {self.peers()}. A stopped, crashed or hung "
                                f"process holds up every collective: check its output, its memory and its GPU; raise "
                                f"DIST_TIMEOUT_SECONDS only if a step legitimately takes longer.")
        os._exit(EXIT_STALLED)

def report_failure(rt: Runtime | None, message: str) -> None:
    """The one error line: on stderr, in the log, and in torchrun's error file (torchrun's summary repeats it)."""
    print(message, file=sys.stderr, flush=True)
    if rt is not None:
        rt.log(message, console=False)
    if error_file := os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))

def lost_peer_failure(rt: Runtime | None, cause: str) -> tuple[int, str]:
    """Exit status and message after a failed collective or a SIGTERM from the launcher."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM must not cut the report short
    doing = rt.activity if rt is not None else "starting"
    lost = rt.monitor.lost_ranks() if rt is not None and rt.monitor is not None else None
    if lost:
        return EXIT_STALLED, (f"error: rank {rt.rank} lost a peer while {doing} ({cause}): {lost}. Its own output says "
                              f"why (out of memory, a kill, a crash); no score from this run")
    return EXIT_TERMINATED, f"error: {cause} while {doing}: no score from this run"

def setup_runtime(h: Hyperparameters) -> Runtime:
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(rank, world_size, local_rank, device)
    if world_size > 1:
        # The backend's own timeout is a backstop a minute after the stall monitor's report.
        timeout = datetime.timedelta(seconds=h.dist_timeout_seconds + 60)
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        rt.monitor = StallMonitor(rt, h.dist_timeout_seconds)
        rt.monitor.start()
    return rt

def agree(rt: Runtime, problem: str | None, error=ConfigError) -> None:
    """Raise `error` on every rank if any rank found a problem (checks made on one rank only)."""
    if rt.world_size > 1:
        found = [None] * rt.world_size
        dist.all_gather_object(found, problem)
        problem = next((p for p in found if p), None)
    if problem:
        raise error(problem)

def output_files(h: Hyperparameters) -> list[tuple[str, Path]]:
    """(setting, path) of every file this run writes; the log first."""
    wanted = [("RUN_ID", Path("logs") / f"{h.run_id}.txt", True), ("ARTIFACT_PATH", h.artifact_path, not h.eval_only),
              ("CHECKPOINT_PATH", h.checkpoint_path, h.checkpoint_path and not (h.eval_only or h.export_only)),
              ("NLL_DUMP_PATH", h.nll_dump_path, h.nll_dump_path)]
    return [(name, Path(path)) for name, path, written in wanted if written]

def input_files(h: Hyperparameters) -> list[tuple[str, Path]]:
    """(setting, path) of every file this run reads: script, tokenizer, DATA_PATH's files, its checkpoint or artifact."""
    inputs = [("the script", Path(__file__)), ("TOKENIZER_PATH", Path(h.tokenizer_path))]
    inputs += [("DATA_PATH", Path(p)) for p in sorted(glob.glob(os.path.join(h.data_path, "fineweb_*.bin")))]
    inputs += [("EXPORT_ONLY", Path(h.export_only))] if h.export_only else []
    return inputs + ([("EVAL_ONLY=1 ARTIFACT_PATH", Path(h.artifact_path))] if h.eval_only else [])

def check_outputs(h: Hyperparameters, rt: Runtime) -> None:
    """Every file the run will write or read, checked before any work (rank 0 writes them): each output in a
    writable folder, the log new, no output the same file as another or as an input."""
    def label(name: str, path: Path) -> str:
        return {"RUN_ID": f"RUN_ID={h.run_id}: {path}", "DATA_PATH": f"the data file {path}",
                "the script": f"the script {path}"}.get(name, f"{name}={path}")
    problem, outputs = None, output_files(h)
    for i, (name, path) in enumerate(outputs):
        for other, other_path in outputs[:i] + input_files(h):
            if problem is None and os.path.realpath(path) == os.path.realpath(other_path):
                problem = (f"{label(name, path)} is the same file as {label(other, other_path)}; a run never writes over "
                           f"its own inputs or outputs: choose another path.")
    for name, path in outputs:
        folder = path.parent if path.parent.exists() or path.parent != Path("logs") else Path(".")  # start_log makes logs/
        if problem is None and path.is_dir():
            problem = f"{label(name, path)} is a folder; name a file in it instead."
        elif problem is None and (not folder.is_dir() or not writable(folder)):
            problem = (f"{label(name, path)}: the folder {folder} does not exist or is not writable; create it or choose "
                       f"another path.")
        elif problem is None and name == "RUN_ID" and path.exists():
            problem = (f"{label(name, path)} already exists; choose another RUN_ID (or remove that log) so no run is "
                       f"overwritten.")
    starts = [("EXPORT_ONLY", h.export_only, "; point it at the final_model.pt a training run saved")] * bool(h.export_only)
    for name, path, hint in starts + [("EVAL_ONLY=1 but ARTIFACT_PATH", h.artifact_path, "")] * h.eval_only:
        if problem is None and not Path(path).is_file():
            what = ("is a folder, not a file" if Path(path).is_dir() else
                    "is not a regular file" if Path(path).exists() else "does not exist")
            problem = f"{name}={path} {what}{hint}."
    agree(rt, problem if rt.is_main else None)

def writable(folder: Path) -> bool:
    """Proven by creating and removing a file: os.access says yes to root on a read-only mount."""
    probe = folder / f".train_gpt_probe_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False

def write_atomically(path: str, write) -> None:
    """write(temporary path), then rename it over `path`, so no reader sees a half-written file. A path that exists
    and is not a regular file (a device such as /dev/full, a pipe) is written in place: a rename would replace it."""
    if os.path.exists(path) and not os.path.isfile(path):
        write(path)
        return
    partial = f"{path}.partial"
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)

def keep_earlier_outputs(h: Hyperparameters, rt: Runtime) -> None:
    """An earlier run's artifact, checkpoint or NLL dump at this run's path is kept under the first free numbered
    name (final_model.ptz.1, .2, ...): never overwritten, nor left for a later EVAL_ONLY to take for this run's."""
    for name, path in output_files(h)[1:]:
        if rt.is_main and path.is_file():
            kept = next(Path(f"{path}.{n}") for n in itertools.count(1) if not Path(f"{path}.{n}").exists())
            os.replace(path, kept)
            rt.log(f"earlier_file_kept setting:{name} path:{path} as:{kept}")

def check_evaluation_settings(h: Hyperparameters, val: torch.Tensor) -> None:
    """Refuses TTT that could never train on this validation set: a stage labelled ttt is never sliding in disguise."""
    if not h.ttt_enabled:
        return
    if h.ttt_mode == "chunked" and h.ttt_chunk_tokens >= len(val) - 1:
        raise ConfigError(f"TTT_CHUNK_TOKENS={h.ttt_chunk_tokens} covers all {len(val) - 1} validation targets: with one "
                          f"chunk, TTT never trains; use at most {(len(val) - 1) // 2}.")
    if h.ttt_mode != "chunked":
        documents = split_documents(val.cpu(), BOS_ID)
        longest = max(n for _, n in documents)
        chunk = h.doc_chunk_tokens(longest)
        if longest <= chunk:
            via = "" if chunk == h.ttt_doc_chunk_tokens else f" (its short-document chunk: {chunk} tokens)"
            raise ConfigError(f"TTT_DOC_CHUNK_TOKENS={h.ttt_doc_chunk_tokens}{via} holds every validation document in "
                              f"one chunk: per-document TTT would never train; lower it.")
        if h.ttt_mode == "phased" and h.phased_ttt_phases > len(documents):
            raise ConfigError(f"PHASED_TTT_PHASES={h.phased_ttt_phases} is more than the {len(documents)} validation "
                              f"documents; use at most {len(documents)} phases.")

def check_train_tokens(h: Hyperparameters, rt: Runtime) -> None:
    """Every training token id below VOCAB_SIZE: each rank scans a share of the (memory-mapped) shards before training."""
    problem = None
    for path in shard_files(h.data_path, "train")[rt.rank::rt.world_size]:
        tokens = load_data_shard(path)
        if len(tokens) and int(tokens.max()) >= h.vocab_size:
            at = int(np.argmax(tokens >= h.vocab_size))
            problem = (f"{path}: token id {int(tokens[at])} at position {at} is outside VOCAB_SIZE={h.vocab_size}; the "
                       f"training shards and the tokenizer do not match (set VOCAB_SIZE, DATA_PATH and TOKENIZER_PATH "
                       f"together).")
            break
    agree(rt, problem, InputError)

def check_dependencies(h: Hyperparameters) -> None:
    """The packages this run imports, checked before any work: sentencepiece, and the compressor that writes the
    artifact (or, with EVAL_ONLY, reads it); brotli must bound its decompression (>= 1.2, requirements.txt)."""
    method = h.compressor
    if h.eval_only and Path(h.artifact_path).is_file():
        with open(h.artifact_path, "rb") as f:
            head = f.read(5)
        if head[:4] == ARTIFACT_MAGIC and len(head) == 5 and head[4] < len(COMPRESSORS):
            method = COMPRESSORS[head[4]]
    problems = []
    for module in ["sentencepiece", {"brotli": "brotli", "zstd": "zstandard"}.get(method, "lzma")]:
        try:
            imported = importlib.import_module(module)
            if module == "brotli":
                imported.Decompressor().process(b"", output_buffer_limit=1)
        except ImportError:
            problems.append(f"{module} is not installed")
        except TypeError:  # brotli < 1.2 has no output_buffer_limit
            problems.append(f"brotli {getattr(imported, '__version__', '')} is older than 1.2 and cannot bound "
                            f"decompression")
    if problems:
        raise InputError(f"{'; '.join(problems)}: pip install -r requirements.txt (this run needs "
                         f"{'it' if len(problems) == 1 else 'them'} to write or read its artifact).")

def script_source() -> tuple[str, int]:
    """The source to log (a packager wrapper's _WRAPPED_SOURCE if set) and the code bytes: those of the file run."""
    path = Path(__file__)
    return wrapper_value("_WRAPPED_SOURCE") or path.read_text(encoding="utf-8"), path.stat().st_size

def wrapper_value(name: str) -> str | None:
    """A value a packager wrapper set in this module's namespace (_WRAPPED_SOURCE, _SOURCE_SHA256), read through
    sys.modules: python-minifier renames nothing in a module that calls globals()."""
    return getattr(sys.modules.get(__name__), name, None)

def start_log(h: Hyperparameters, rt: Runtime, source: str, code_bytes: int) -> None:
    if rt.is_main:
        rt.log_path = Path("logs") / f"{h.run_id}.txt"
        rt.log_path.parent.mkdir(parents=True, exist_ok=True)
        rt.log_path.write_text(source + ("" if source.endswith("\n") else "\n") + "=" * 100 + "\n", encoding="utf-8")
    hardware = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else f"CPU-{platform.machine()}"
    rt.log(f"run_info python:{platform.python_version()} torch:{torch.__version__} device:{rt.device.type} "
           f"world_size:{rt.world_size} hardware:{rt.world_size}x{hardware} compile:{int(h.compile)} "
           f"doc_attention:{int(h.doc_attention)} threads:{torch.get_num_threads()}")
    # The packager checks these against the files it packages: the file run and the readable source it stands for.
    ran = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    rt.log(f"script path:{Path(__file__).name} bytes:{code_bytes} sha256:{ran} "
           f"source_sha256:{wrapper_value('_SOURCE_SHA256') or ran}")
    for name, value in h.values.items():
        rt.log(f"hparam {name}={value}", console=False)

def load_checkpoint(path: str, device: torch.device, vocab_size: int, tokenizer_sha256: str | None = None) -> GPT:
    """A training run's full-precision checkpoint, read with weights_only (nothing in it runs), checked like an artifact."""
    def damaged(reason: str) -> InputError:
        return InputError(f"EXPORT_ONLY={path} is damaged or not a checkpoint of this script ({reason}); re-save it "
                          f"with a training run (CHECKPOINT_PATH).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols: the load is refused or fine
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand (\d+)", str(exc))
        named = (f": {found.group(1)}" if found.group(1) else f": pickle opcode {found.group(2)}") if found else ""
        raise damaged(f"it holds Python objects other than tensors{named}; refused without unpickling them") from None
    except PermissionError as exc:
        raise damaged(f"it cannot be read: {exc.strerror}") from None
    except Exception as exc:  # the zip reader's errors or an OSError for a cut file, a KeyError for a text file
        truncated = "zip archive" in str(exc) or isinstance(exc, (EOFError, OSError))
        raise damaged("truncated or corrupt" if truncated else f"not a torch.save file: {type(exc).__name__}") from None
    if not (isinstance(saved, dict) and all(isinstance(saved.get(key), dict) for key in ("config", "state_dict"))):
        raise damaged("it does not hold a config and a state_dict")
    cfg = checked_config(saved["config"], vocab_size, Path(path).stat().st_size, source=f"EXPORT_ONLY={path}")
    for name, tensor in saved["state_dict"].items():
        # A trained checkpoint holds dense real floats fp16 can store: anything else fails or misleads deep in GPTQ.
        if not (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and not tensor.is_meta
                and tensor.is_floating_point()):
            kind = (f"a {tensor.dtype} tensor ({tensor.layout}, on {tensor.device.type})"
                    if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
            raise damaged(f"{name} is {kind}, not dense floating-point weights")
        largest = float(tensor.float().abs().max()) if tensor.numel() else 0.0
        if not largest <= torch.finfo(torch.float16).max:
            found = "non-finite values" if not math.isfinite(largest) else f"|w| up to {largest:.3g}"
            raise damaged(f"{name} holds {found}, which no trained model has and fp16 cannot store")
    model = GPT(cfg).to(device)
    try:
        model.load_state_dict(saved["state_dict"], strict=True)
    except RuntimeError as exc:
        raise damaged(f"its weights do not fit its config: {str(exc).strip().splitlines()[-1].strip()[:160]}") from None
    if tokenizer_sha256 is not None and saved.get("tokenizer_sha256") != tokenizer_sha256:
        raise damaged(f"it was trained with the tokenizer of SHA-256 {str(saved.get('tokenizer_sha256'))[:16]}, but "
                      f"TOKENIZER_PATH has {tokenizer_sha256[:16]}: export it with its own tokenizer")
    model.looping = model.cfg.num_loops > 0
    return model

def start_checkpoint(model: GPT, h: Hyperparameters, rt: Runtime):
    """Copy the weights to host memory now (inside the timed export) and write them to CHECKPOINT_PATH while GPTQ runs,
    so a failed GPTQ leaves them for EXPORT_ONLY. Returns the function that waits and logs (a failed write only logs)."""
    if not (rt.is_main and h.checkpoint_path and not h.export_only):
        return lambda: None
    saved = {"config": model.cfg.__dict__, "tokenizer_sha256": h.tokenizer_sha256,
             "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    outcome = []
    def write() -> None:
        t0 = time.perf_counter()
        try:
            write_atomically(h.checkpoint_path, lambda partial: torch.save(saved, partial))
            outcome.append(f"checkpoint path:{h.checkpoint_path} time:{1000 * (time.perf_counter() - t0):.0f}ms")
        except (OSError, RuntimeError) as exc:
            outcome.append(f"checkpoint_failed path:{h.checkpoint_path} error:{type(exc).__name__}: {exc} (the run goes "
                           f"on: the artifact is what scores)")
    writer = threading.Thread(target=write, name="checkpoint")
    writer.start()
    def finish() -> None:
        writer.join()
        rt.log(outcome[0])
    return finish

def export_model(model: GPT, runners: Runners, h: Hyperparameters, rt: Runtime) -> tuple[bytes, float]:
    """Quantize (timed against the training budget), serialize and compress on rank 0: the artifact (every rank), ms."""
    model.looping = model.cfg.num_loops > 0
    rt.synchronize()
    t0, graphs = time.perf_counter(), graphs_compiled()
    finish_checkpoint = start_checkpoint(model, h, rt)
    try:
        rt.doing("collecting GPTQ Hessians")
        hessians = collect_hessians(model, h, rt, runners.calibrate) if h.quant_method == "gptq" else None
        rt.doing("quantizing")
        tensors = quantize_model(model, hessians, h, rt)
        broken = [name for name, item in tensors.items()
                  if not torch.isfinite(item.dequantized() if isinstance(item, QuantizedTensor) else item.float()).all()]
        if broken:
            raise TrainingDiverged(f"export: the quantized weights of {', '.join(broken)} are not finite (they overflow "
                                   f"fp16), so no artifact or score is produced. Lower the learning rates (EMBED_LR, "
                                   f"MATRIX_LR, SCALAR_LR).")
        rt.synchronize()
        quant_ms = 1000 * (time.perf_counter() - t0)
        log_compiles(rt, "gptq", graphs)
        blob = None
        rt.doing("compressing the artifact (rank 0) / waiting for it")
        if rt.is_main:
            t1, blob = time.perf_counter(), serialize_artifact(tensors, model.cfg, h.compressor, h.tokenizer_sha256)
            write_atomically(h.artifact_path, lambda partial: Path(partial).write_bytes(blob))
            rt.log(f"serialize compressor:{h.compressor} bytes:{len(blob)} time:{1000 * (time.perf_counter() - t1):.0f}ms "
                   f"path:{h.artifact_path} sha256:{hashlib.sha256(blob).hexdigest()}")
    finally:
        finish_checkpoint()
    return share_bytes(blob, rt), quant_ms

def timed_stage(rt: Runtime, h: Hyperparameters, line: str, evaluate) -> tuple[float, float]:
    rt.synchronize()
    rt.doing(f"evaluating ({line})")
    t0, graphs = time.perf_counter(), graphs_compiled()
    val_loss, val_bpb = evaluate()
    if not (math.isfinite(val_loss) and math.isfinite(val_bpb)):
        raise TrainingDiverged(f"the {line.removeprefix('final_')} stage scored val_loss {val_loss}, val_bpb {val_bpb}: "
                               f"not a number, so no final_score is reported. The weights are not usable (see the earlier "
                               f"stages).")
    rt.synchronize()
    seconds = time.perf_counter() - t0
    log_compiles(rt, line.removeprefix("final_"), graphs)
    rt.log(f"{line} val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f} eval_time:{1000 * seconds:.0f}ms")
    if h.val_tokens_limit:
        rt.log(f"val_tokens_limit tokens:{h.val_tokens_limit} (a prefix of the validation split: not a submission score)")
    return val_loss, val_bpb

def evaluate_artifact(blob: bytes, h: Hyperparameters, rt: Runtime, val: torch.Tensor, tables: ByteTables,
                      total_bytes: int, over_limit: bool) -> float:
    """Round-trip, sliding and TTT stages (last: it changes the weights) on a model built from the artifact alone."""
    model = model_from_artifact(blob, rt.device, h.vocab_size, h.tokenizer_sha256)
    runners = prepare_model(model, h, rt)
    rt.log(f"eval_model doc_attention:{int(model.cfg.doc_attention)} {rt.kernels.line() if rt.kernels else ''}")
    stages = ["roundtrip"] + ["sliding"] * h.sliding_enabled + ["ttt"] * h.ttt_enabled
    strides = {"roundtrip": h.eval_seq_len, "sliding": h.eval_stride}
    recorder = NllRecorder(len(val)) if h.nll_dump_path else None
    def evaluate(stage: str, rec: NllRecorder | None) -> tuple[float, float]:
        if stage == "ttt":
            ttt = score_first_ttt if h.ttt_mode == "chunked" else score_documents_ttt
            return ttt(model, runners, val, h, tables, rt, rec)
        return evaluate_windows(runners.score, val, h.eval_seq_len, strides[stage], h, tables, rt, rec)
    for stage in stages:
        if stage == "ttt" and h.compile:
            warm_up_ttt(model, runners, h, rt)
        result = timed_stage(rt, h, f"final_{stage}", lambda: evaluate(stage, recorder if stage == stages[-1] else None))
    if recorder is not None:
        recorder.write(h.nll_dump_path, rt)
        rt.log(f"nll_dump stage:{stages[-1]} path:{h.nll_dump_path}")
    if over_limit:
        # Not tagged final_score: the contract's final_score line always carries a score.
        rt.log("score_withheld reason:artifact_over_limit (see the artifact_over_limit line)")
    else:
        rt.log(f"final_score val_bpb:{result[1]:.8f} stage:{stages[-1]} total_bytes:{total_bytes}")
    return result[1]

def account_artifact(h: Hyperparameters, rt: Runtime, code_bytes: int, model_bytes: int) -> tuple[int, bool]:
    total, limit = code_bytes + model_bytes, h.artifact_limit_bytes
    rt.log(f"artifact code_bytes:{code_bytes} model_bytes:{model_bytes} total_bytes:{total} limit_bytes:{limit}")
    if total > limit:
        rt.log(f"artifact_over_limit total_bytes:{total} limit_bytes:{limit} over_by:{total - limit} -- no final_score "
               f"will be reported. To fit, re-export the checkpoint with EXPORT_ONLY={h.export_only or h.checkpoint_path} "
               f"and higher MLP_CLIP_SIGMAS / ATTN_CLIP_SIGMAS (fewer distinct levels compress better), MATRIX_BITS=5, "
               f"or EMBED_BITS=6, or train a smaller model (MODEL_DIM, NUM_LAYERS, MLP_MULT).")
    return total, total > limit

def run(h: Hyperparameters, rt: Runtime) -> None:
    h.validate(rt.world_size)
    check_outputs(h, rt)
    check_dependencies(h)
    if not (h.eval_only or h.export_only):
        check_training_memory(h, rt)
    source, code_bytes = script_source()
    start_log(h, rt, source, code_bytes)
    rt.doing("checking the attention kernels")
    rt.kernels = pick_attention_kernels(h, rt, rt.log)
    rt.log(rt.kernels.line())
    torch.manual_seed(h.seed)
    np.random.seed(h.seed)
    if h.export_only:  # the checkpoint before the data: a damaged one wastes nothing
        rt.doing("loading the checkpoint")
        model = load_checkpoint(h.export_only, rt.device, h.vocab_size, h.tokenizer_sha256)
    rt.doing("loading the tokenizer and the validation tokens")
    sp = load_tokenizer(h.tokenizer_path, h.vocab_size)
    tables = build_byte_tables(sp, h.vocab_size)
    tables.sidecar = load_validation_bytes(h.data_path, h.val_tokens_limit, h.byte_sidecar, sidecar_limit(tables))
    caseops = is_caseops_tokenizer(sp)
    if caseops and tables.sidecar is None and h.byte_sidecar != "0":
        raise InputError(f"TOKENIZER_PATH={h.tokenizer_path} is a CaseOps tokenizer, but DATA_PATH={h.data_path} has no "
                         f"byte sidecars (fineweb_val_bytes_*.bin): its bits per byte would count operator bytes the text "
                         f"never had. Download the data with 'python3 data/cached_challenge_fineweb.py --variant "
                         f"sp8192_caseops'.")
    tables, val = tables.to(rt.device), load_validation_tokens(h.data_path, h.val_tokens_limit).to(rt.device)
    if int(val.max()) >= h.vocab_size:
        raise InputError(f"the validation shards in {h.data_path} hold token id {int(val.max())}, outside "
                         f"VOCAB_SIZE={h.vocab_size}; the data and tokenizer do not match.")
    check_scored_bytes(val, tables, h.data_path)
    rt.log(f"data val_tokens:{len(val)} tokenizer:{h.tokenizer_path} tokenizer_sha256:{h.tokenizer_sha256} "
           f"data_path:{h.data_path} bytes:{tables.denominator} caseops:{int(caseops)}")
    check_evaluation_settings(h, val)
    keep_earlier_outputs(h, rt)  # every check passed: this run will write its own outputs
    if h.eval_only:
        blob = share_bytes(read_artifact_file(h.artifact_path) if rt.is_main else None, rt)
        rt.log(f"artifact_loaded path:{h.artifact_path} bytes:{len(blob)} sha256:{hashlib.sha256(blob).hexdigest()}")
        evaluate_artifact(blob, h, rt, val, tables, *account_artifact(h, rt, code_bytes, len(blob)))
        return
    full_eval = lambda score_fn: evaluate_windows(score_fn, val, h.eval_seq_len, h.eval_seq_len, h, tables, rt)
    if h.export_only:
        runners = prepare_model(model, h, rt)
        rt.log(f"export_only checkpoint:{h.export_only}")
        blob, quant_ms = export_model(model, runners, h, rt)
        rt.log(f"export gptq_time:{quant_ms:.0f}ms")
    else:
        t0 = time.perf_counter()
        rt.doing("checking the training shards' token ids")
        check_train_tokens(h, rt)
        rt.log(f"train_tokens_checked time:{1000 * (time.perf_counter() - t0):.0f}ms")
        rt.doing("building the model")
        model = untrained_model(h)
        rt.log(f"init_probe seed:{h.seed} values:{','.join(f'{v:.7g}' for v in model.init_probe())}")
        model = model.to(rt.device)
        runners = prepare_model(model, h, rt)
        stats = train_model(h, model, runners, rt, lambda: full_eval(runners.score))
        log_peak_memory(rt)
        blob, quant_ms = export_model(model, runners, h, rt)
        rt.log(f"wallclock train_time:{stats['train_ms']:.0f}ms gptq_time:{quant_ms:.0f}ms "
               f"total:{stats['train_ms'] + quant_ms:.0f}ms limit:{1000 * h.max_wallclock_seconds:.0f}ms")
    timed_stage(rt, h, "final_prequant", lambda: full_eval(runners.score))
    del model, runners
    model_bytes = len(blob) if not rt.is_main else Path(h.artifact_path).stat().st_size
    evaluate_artifact(blob, h, rt, val, tables, *account_artifact(h, rt, code_bytes, model_bytes))

def main() -> None:
    rt, code = None, 0
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        h = Hyperparameters()
        rt = setup_runtime(h)
        run(h, rt)
        rt.doing("finishing (waiting for every rank)")
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # tear down together: no rank leaves while another still communicates
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        report_failure(rt, f"error: interrupted while {rt.activity if rt else 'starting'}: no score from this run")
    except Terminated:
        code, message = lost_peer_failure(rt, "stopped by SIGTERM")
        report_failure(rt, message)
    except (ConfigError, InputError, TrainingDiverged, KernelFault) as exc:
        code = {ConfigError: EXIT_CONFIG, InputError: EXIT_INPUT, TrainingDiverged: EXIT_DIVERGED,
                KernelFault: EXIT_KERNEL}[type(exc)]
        # Settings are the same on every rank: one line from rank 0 is enough.
        if rt is None or rt.is_main or not isinstance(exc, ConfigError):
            prefix = f"rank {rt.rank}: " if rt is not None and rt.world_size > 1 and not rt.is_main else ""
            report_failure(rt, f"error: {prefix}{exc}")
    except Exception as exc:
        if is_out_of_memory(exc):
            code = EXIT_MEMORY
            asked = re.search(r"tried to allocate [\d.]+ ?\w+", str(exc), re.IGNORECASE)
            report_failure(rt, f"error: out of memory while {rt.activity if rt else 'starting'} "
                               f"({asked.group(0) if asked else type(exc).__name__}): no score from this run; lower "
                               f"MICRO_BATCH_SEQS (training), EVAL_BATCH_SEQS or TTT_DOC_BATCH (evaluation), or the "
                               f"model (NUM_LAYERS, MODEL_DIM, MLP_MULT)")
        elif rt is None or rt.world_size == 1 or not is_peer_failure(exc):
            raise
        else:
            reason = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().split(". ")[0])  # drop gloo's source location
            code, message = lost_peer_failure(rt, f"a collective failed: {reason[:120]}")
            report_failure(rt, message)
    finally:
        if dist.is_available() and dist.is_initialized() and code not in (EXIT_STALLED, EXIT_TERMINATED):
            dist.destroy_process_group()
    if rt is not None and rt.world_size > 1:
        # About 1 run in 30 of two gloo processes aborted at interpreter shutdown ("terminate called without an active
        # exception") after its work: gloo threads free tensors at finalization (pytorch PR #179291). Skip finalization.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
