"""Take one GPU through every stage of the default model in one call and print one table.

    python3 tests/gpu_acceptance.py --report-dir "$OUT"      # one H100 80 GB, cold cache: at most 7 minutes
    python3 tests/gpu_acceptance.py --first-stage-only       # only the first stage (at most 2 minutes)
    python3 tests/gpu_acceptance.py --debug gptq             # one stage's process again, CUDA_LAUNCH_BLOCKING=1
    python3 tests/gpu_acceptance.py --debug ttt_docs --sanitizer   # the same under compute-sanitizer --tool memcheck
    OMP_NUM_THREADS=1 python3 tests/gpu_acceptance.py --dry-run    # the CPU: a tiny model, COMPILE=1, every stage (CI)

The stage plan (one H100 80 GB, PyTorch 2.11, a cold inductor cache; --budget-seconds 420, every
process stopped at --kill-after 410; seconds are ESTIMATES below, summed by estimate_of):

  stage          process       budget  what runs
  setup          (this one)      10 s  carried wheels, data, the validation subset below
  first stage    first       71 (120)  two train_gpt.main() calls in one process, each through the real
                                       start-up check (settings, attention kernel check, data): 4 eager
                                       steps of 8 rows x 2,048 tokens (looping from step 3), then the
                                       looped training graph compiled at the real micro-batch and 3
                                       compiled steps; PASS or FAIL (at most 120 s) before anything long
  main           main           184 s  start-up 15, warm-up (unlooped graph cold 45, looped graph from
                                       the cache 10, 2 steps 3), 12 steps of 786,432 tokens with looping
                                       from step 6 17, GPTQ on 2 calibration batches 10, serialize with
                                       zstd 50, the eval graph cold 20, pre-quantisation, round-trip
                                       (its model from the cache 10) and sliding 5
  ttt_phased     main           125 s  in the same process: the document graphs with and without
                                       gradients 65, the global phase's graph 45, phased TTT 15 (one
                                       global phase between its batches)
                                 ----
                                390 s  of the 410 s before --kill-after
  brotli         brotli  120 (beside)  brotli quality 11 of the main run's real payload on a spare CPU
                                       core, read back by the script's loader: the submission's
                                       compressor, off the GPU path
  ttt_docs       ttt_docs        62 s  EVAL_ONLY: start-up 15, graphs from the cache 30, round-trip, TTT  } each only if
  ttt_chunked    ttt_chunked     82 s  EVAL_ONLY: its own training graph cold 45, chunked TTT            } it fits

So the default budget runs every stage except the docs and chunked TTT modes unless the run goes
faster than estimated; --budget-seconds 560 (under the 10 minutes one command may take) leaves
room for both.

What the budgets rest on (the JSON holds each estimate, its basis and what this run measured):
measured on the first GPU run (2026-11-26, one H200, flex attention): 195.5 s to compile three
graphs, 0.94 / 1.56 s per 786,432-token step before / after looping, 45 GiB peak; measured on the
CPU machine (2026-12-06, one core of a loaded 2-core machine) on the default model's
36,136,999-byte payload: zstd level 22 80 s, lzma 9e 119 s, brotli 11 159 s, so the main run
serializes with zstd, the fastest, and brotli runs beside the GPU work. Everything else is an
estimate, none of it measured on this code on a GPU yet. The run measures as it goes: the first
stage's start-up, eager step and compile times replace the estimates of later processes, and a
process is started only if its estimate fits in what is left before --kill-after; a required
one that does not fit is refused (exit 5), an optional one skipped, and the table says which and
why. Every process still running at its deadline (the first stage's 120 s, or --kill-after) gets
SIGTERM, so train_gpt.py writes its own `error: stopped by SIGTERM while ...` line (exit 143),
and SIGKILL --grace-seconds later; its row shows that line.

Settings the plan relies on are passed explicitly (PR #2135's configuration, old or new
defaults alike): TRAIN_SEQ_LEN=2048, PROGRESSIVE_CONTEXT= (two training graphs: unlooped and
looped), EVAL_SEQ_LEN=2560, TTT_DOC_BATCH=64, TTT_DOC_CHUNK_TOKENS=48, TTT_SHORT_DOC_CHUNKS=0,
PHASED_TTT_PHASES=1, PHASED_TTT_PREFIX_DOCS=64, GPTQ_CALIB_BATCHES=2, COMPRESSOR=zstd, and
MICRO_BATCH_SEQS at the micro-batch one rank of an 8-GPU run compiles. The model is the
script's default. Every evaluation scores a validation subset written to --out/data: the first
validation document at least EVAL_SEQ_LEN + TTT_DOC_CHUNK_TOKENS tokens long, cut there (so
per-document TTT slides its window inside a document), then the next documents cut to
--ttt-doc-tokens (512) each until --val-tokens (65,536) tokens and more than 64 documents (the
carried set gives 148 documents, 65,916 tokens: three TTT batches, none dominated by one
document; a single 32,278-token document would cost 673 chunk steps).

Each process is `python3 tests/gpu_acceptance.py --child ...`: it imports train_gpt.py and calls
its main(), so the log is the script's own, and writes a trace of the time and memory at every
log line beside it. A stage passed when its line of the log-line contract appeared (STEPS
below, matched in order). In a process that failed, the part after the last such line is the one
that failed: its row names that part, the last contract line, the exit status and what it means
(EXIT_MEANINGS: every status train_gpt.py uses), the `error:` line or exception and the function
of train_gpt.py it came from. All processes share one inductor cache under --out, so later ones,
and a rerun after a fix, reuse what earlier ones compiled. When brotli or zstandard do not
import, the wheels in .whl/ (tests/prepare_gpu_carry.sh) are installed first with pip --no-index.

--report-dir DIR (default --out/report) receives the table (acceptance.md), the JSON
(acceptance.json), every process's console output (acceptance_output.txt), train_gpt.py's logs
without their source (acceptance_logs.txt) and the memory traces (acceptance_traces.jsonl): five
files, each cut to at most 8 MiB, so they come back from a machine with no network. Under --debug STAGE the names start
with debug_STAGE. --dry-run runs the same processes on the CPU (bench_pipeline's tiny preset
with three layers, a tiny local dataset, COMPILE=1) through dynamo's `eager` backend: every
graph is traced whole and counted, but no code is generated. tests/test_gpu_acceptance.py
runs it.

Exit status of this script (train_gpt.py's own statuses are in EXIT_MEANINGS):
  0    every required stage passed (an optional one may be skipped: the table says why)
  1    a stage failed: its row names the part, the exit status and the error line
  2    a bad option (one `error:` line naming it; nothing ran)
  3    setup: --out, --report-dir or --json unusable; the data, tokenizer or wheels missing; no GPU
  4    a stage ran past its deadline (SIGTERM, then SIGKILL): its row shows its last error line
  5    a required stage's estimate did not fit in what was left before --kill-after (refused)
  130  interrupted (Ctrl-C): the children are stopped and the report of what ran is written
"""
from __future__ import annotations

import argparse
import atexit
import functools
import gc
import glob
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import bench_pipeline as bp
from bench_pipeline import ROOT, fields, ms

THIS = Path(__file__).resolve()

# This script's exit statuses.
PASSED, FAILED, BAD_OPTION, SETUP, TIMED_OUT, OVER_BUDGET, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130

# Every exit status train_gpt.py uses: (what it means, what to do).
EXIT_MEANINGS = {
    0: ("finished", "nothing"),
    1: ("an unexpected exception (a traceback: a bug)", "rerun the stage with --debug STAGE (CUDA_LAUNCH_BLOCKING=1; "
        "--sanitizer adds compute-sanitizer) and fix the function named"),
    2: ("a setting (ConfigError)", "fix the variable the error line names (--env / --env-stage)"),
    3: ("an input file or dependency (InputError)", "carry the named file or package (tests/prepare_gpu_carry.sh: "
        "wheels in .whl/, the data set) or rebuild it"),
    4: ("training diverged: non-finite weights or scores", "lower the learning rates the error line names; "
        "a GPTQ or export failure replays from the checkpoint with --debug gptq"),
    5: ("a stalled or lost peer rank", "one GPU has no peers: another process holds the GPU or the rendezvous; "
        "check nvidia-smi and rerun"),
    6: ("an attention kernel crashed the GPU in its start-up check (KernelFault)",
        "rerun with --env ATTENTION_KERNEL=sdpa (never flex: flex in graphs without gradients is the prime suspect "
        "of the first GPU run's fault)"),
    7: ("out of memory", "lower MICRO_BATCH_SEQS (training), EVAL_BATCH_SEQS or TTT_DOC_BATCH (evaluation) with --env-stage"),
    130: ("interrupted (Ctrl-C)", "rerun"),
    143: ("terminated (SIGTERM): this script's deadline or a kill from outside",
          "the row says which; raise --budget-seconds or rerun the stage with --debug STAGE"),
}

# The settings the plan relies on, whatever train_gpt.py's defaults are.
GPU_SETTINGS = {
    "TRAIN_SEQ_LEN": "2048", "PROGRESSIVE_CONTEXT": "", "EVAL_SEQ_LEN": "2560", "TTT_DOC_BATCH": "64",
    "TTT_DOC_CHUNK_TOKENS": "48", "TTT_SHORT_DOC_CHUNKS": "0", "PHASED_TTT_PHASES": "1", "PHASED_TTT_PREFIX_DOCS": "64",
    "GPTQ_CALIB_BATCHES": "2", "COMPRESSOR": "zstd",
}
# bench_pipeline's tiny preset with three layers (layer 1 run twice once looping starts): dynamo
# traces every graph of every process, and a fourth layer made the dry run a third slower.
DRY_RUN_SETTINGS = {**bp.PRESETS["tiny"], "NUM_LAYERS": "3", "LOOP_START": "1", "LOOP_END": "1", "PARALLEL_RESIDUAL_START": "2",
                    "TTT_SHORT_DOC_CHUNKS": "0", "TTT_EPOCHS": "1", "GLOBAL_TTT_CHUNK_TOKENS": "1024", "COMPRESSOR": "zstd"}
EAGER_ROWS = 8  # eager steps hold more activations than the compiled graph: fewer rows of the real length

# Seconds on one H100 with a cold cache: (estimate, what it rests on). Measurements of this run
# replace them as they come in (Acceptance.measure); the JSON shows both.
ESTIMATES = {
    "start": (15.0, "process start to train_setup: Python, torch, CUDA, the kernel check, data (estimate)"),
    "restart": (6.0, "a second train_gpt.main() in the same process: kernel check, data, model (estimate)"),
    "eager_step": (1.0, "one eager step of 8 rows of 2,048 tokens (estimate)"),
    "compile_train": (45.0, "one training graph, cold (the first GPU run: 195.5 s for three graphs with flex, whose "
                      "attention kernels inductor generates; the varlen kernels are library calls: estimate)"),
    "compile_cached": (10.0, "a graph already in the inductor cache: dynamo's trace, cached code (estimate)"),
    "compile_eval": (20.0, "one graph without gradients, cold (estimate: under half a training graph)"),
    "step_unlooped": (1.05, "786,432-token step before looping (the first GPU run: 0.94 s on an H200; +10 % for an H100)"),
    "step_looped": (1.75, "the same after looping (the first GPU run: 1.56 s on an H200; +10 %)"),
    "gptq": (10.0, "2 calibration batches, GPTQ with AWQ-lite and LQER (the time model counts 3.9 s for 16 batches; "
             "LQER's SVDs on the CPU: estimate)"),
    "serialize": (50.0, "zstd level 22 of the 36,136,999-byte payload: 80 s measured on one core of a loaded 2-core CPU "
                  "machine (lzma 9e: 119 s, brotli 11: 159 s), an unloaded core assumed ~1.6x faster"),
    "eval": (1.5, "one evaluation pass over the ~66,000-token subset; sliding 30 batches of 32 x 2,560 (estimate)"),
    "ttt_run": (15.0, "per-document TTT over the subset: 55 + 11 chunk steps of 64 rows, 4.9M tokens forward and "
                "backward at the first GPU run's looped 504,200 tokens/s, plus the global phase (estimate)"),
    "ttt_chunked_run": (10.0, "chunked TTT over the subset: 2 chunks, 3 epochs (estimate)"),
    "brotli": (120.0, "brotli quality 11 of the 36,136,999-byte payload: 159 s measured on one core of a loaded 2-core "
               "CPU machine, an unloaded core assumed faster; it runs beside the GPU work"),
}
# The dry run's tiny processes: a tenth of the GPU's, so that gating runs and passes on the CPU.
DRY_ESTIMATES = {name: (value / 10, "dry run: a tenth of the GPU estimate") for name, (value, _) in ESTIMATES.items()}


def estimate_of(process: str, e: dict[str, float], iterations: int, eager_steps: int, ttt_in_main: bool = True) -> dict[str, float]:
    """The parts of one process's estimate, in seconds."""
    if process == "first":
        return {"start": e["start"], "eager steps": eager_steps * e["eager_step"], "restart": e["restart"],
                "compile looped graph": e["compile_train"], "compiled steps": 2 * e["step_looped"] / 4}
    if process == "main":
        return {"start": e["start"], "compile unlooped graph": e["compile_train"], "looped graph from the cache": e["compile_cached"],
                "warm-up steps": e["step_unlooped"] + e["step_looped"],
                "training steps": iterations / 2 * (e["step_unlooped"] + e["step_looped"]), "gptq": e["gptq"],
                "serialize": e["serialize"], "compile eval graph": e["compile_eval"],
                "round-trip model from the cache": e["compile_cached"], "evaluations": 3 * e["eval"]}
    if process == "ttt_phased":  # inside the main process
        return {"compile document graphs": e["compile_train"] + e["compile_eval"], "compile global phase graph": e["compile_train"],
                "ttt": e["ttt_run"]}
    if process == "ttt_docs":
        return {"start": e["start"], "graphs from the cache": 3 * e["compile_cached"], "round-trip": e["eval"], "ttt": e["ttt_run"]}
    if process == "ttt_chunked":
        return {"start": e["start"], "eval graph from the cache": e["compile_cached"], "round-trip": e["eval"],
                "compile training graph": e["compile_train"], "ttt": e["ttt_chunked_run"]}
    if process == "brotli":
        return {"brotli": e["brotli"]}
    if process == "compare":
        return {"start": e["start"], "compile two graphs": 2 * e["compile_train"],
                "training steps": iterations / 2 * (e["step_unlooped"] + e["step_looped"])}
    raise KeyError(process)


# What a process logs, in order: (table row, what that part of the row does, the line that ends it).
STARTUP = [("settings check", "run_info"), ("attention kernel check", "attention_kernels"), ("tokenizer and data", "data ")]
MAIN = [*(("startup", what, line) for what, line in STARTUP),
        ("startup", "training-token check and model", "train_setup"),
        ("warmup", "compile warm-ups", "warmup_done"),
        ("train_unlooped", "training before looping", "looping_enabled"),
        ("train_looped", "training after looping", "peak_memory"),
        ("gptq", "GPTQ calibration + quantisation", "quantize method:"),
        ("serialize", "serialize + compress", "serialize compressor:"),
        ("prequant", "pre-quantisation evaluation", "final_prequant"),
        ("roundtrip", "artifact load", "eval_model"),
        ("roundtrip", "round-trip evaluation", "final_roundtrip"),
        ("sliding", "sliding evaluation", "final_sliding")]
TTT = [("ttt", "TTT compile warm-up", "ttt_warmup"), ("ttt", "TTT evaluation", "final_ttt")]
STEPS = {
    "first": [*(("check", what, line) for what, line in STARTUP),
              ("check", "training-token check and model", "train_setup"),
              ("eager_steps", "eager training steps", "peak_memory"),
              ("compile_looped", "the compiled run's start-up", "train_setup"),
              ("compile_looped", "compile of the looped training graph", "warmup_done"),
              ("compiled_steps", "compiled training steps", "peak_memory")],
    "main": MAIN,
    "main_ttt": [*MAIN, *(("ttt_phased", what, line) for _, what, line in TTT)],
    "ttt": [*(("ttt", what, line) for what, line in STARTUP),
            ("ttt", "artifact load", "eval_model"),
            ("ttt", "round-trip evaluation (before TTT)", "final_roundtrip"), *TTT],
    "recompress": [("brotli", "reading the main run's artifact", "recompress_read"),
                   ("brotli", "brotli quality 11 and the loader's read-back", "recompress_done")],
    "compare": [*(("compare_warmup", what, line) for what, line in STARTUP),
                ("compare_warmup", "training-token check and model", "train_setup"),
                ("compare_warmup", "compile warm-ups", "warmup_done"),
                ("compare_train_unlooped", "training before looping", "looping_enabled"),
                ("compare_train_looped", "training after looping", "peak_memory")],
    # --debug only: an existing artifact or checkpoint, without training again.
    "eval": [*(("roundtrip", what, line) for what, line in STARTUP),
             ("roundtrip", "artifact load", "eval_model"),
             ("roundtrip", "round-trip evaluation", "final_roundtrip"),
             ("sliding", "sliding evaluation", "final_sliding")],
    "export": [*(("gptq", what, line) for what, line in STARTUP),
               ("gptq", "checkpoint load", "export_only"),
               ("gptq", "GPTQ calibration + quantisation", "quantize method:"),
               ("serialize", "serialize + compress", "serialize compressor:"),
               ("prequant", "pre-quantisation evaluation", "final_prequant"),
               ("roundtrip", "artifact load", "eval_model"),
               ("roundtrip", "round-trip evaluation", "final_roundtrip")],
}
MARKERS = tuple(sorted({line for steps in STEPS.values() for _, _, line in steps}))


def rows_in(kind: str) -> list[str]:
    return list(dict.fromkeys(row for row, _, _ in STEPS[kind]))


FIRST_ROWS, MAIN_ROWS, COMPARE_ROWS = rows_in("first"), rows_in("main_ttt"), rows_in("compare")
ALL_ROWS = ["setup", *FIRST_ROWS, *MAIN_ROWS, "brotli", "ttt_docs", "ttt_chunked", *COMPARE_ROWS]
PROCESS_OF = {**{row: "first" for row in FIRST_ROWS}, **{row: "main" for row in MAIN_ROWS}, "brotli": "brotli",
              "ttt_docs": "ttt_docs", "ttt_chunked": "ttt_chunked", **{row: "compare" for row in COMPARE_ROWS},
              "first": "first", "main": "main", "compare": "compare"}
OPTIONAL = {"brotli", "ttt_docs", "ttt_chunked", *COMPARE_ROWS}


# ---- the child: train_gpt.main() with a trace of time and memory at every log line ----

class InjectedFault(Exception):
    """--inject-fault: raised where the stage starts, as a device fault would end the process."""


class PlannedStop(BaseException):
    """A run of the first stage ends here, by plan: train_gpt.main() lets it through (not an Exception)."""


def stop_signal_handler(doing: list[str]):
    """SIGTERM outside train_gpt.main() (which installs its own): the same one-line error, exit 143."""
    def handler(signum, frame) -> None:
        print(f"error: stopped by SIGTERM while {doing[0]}: no score from this run", flush=True)
        os._exit(143)
    return handler


def child(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gpu_acceptance.py --child")
    p.add_argument("--trace", required=True)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--runs", required=True, help="JSON list of {env, stop_after}: train_gpt.main() calls in this process")
    p.add_argument("--steps", required=True, help="JSON list of the contract lines, in order")
    p.add_argument("--reset-after", default="", help="reset the peak-memory counters at stage lines after this line")
    p.add_argument("--fault-step", type=int, help="raise InjectedFault once this many contract lines were seen")
    p.add_argument("--hang-step", type=int, help="sleep once this many contract lines were seen (a hung kernel)")
    a = p.parse_args(argv)
    doing = ["starting (importing torch and train_gpt.py)"]
    signal.signal(signal.SIGTERM, stop_signal_handler(doing))
    steps, runs = json.loads(a.steps), json.loads(a.runs)
    if a.fault_step == 0:
        raise InjectedFault("injected by gpu_acceptance.py --inject-fault before the first line")
    if a.hang_step == 0:
        time.sleep(3600)
    import resource

    import torch
    if a.backend != "inductor":
        torch.compile = functools.partial(torch.compile, backend=a.backend)
    sys.path.insert(0, str(ROOT))
    import train_gpt
    trace = open(a.trace, "a", encoding="utf-8")
    state = {"seen": 0, "resetting": a.reset_after == "", "stop_after": None, "fired": False}

    def record(line: str, reset: bool = False) -> None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                alloc, reserved = torch.cuda.max_memory_allocated() >> 20, torch.cuda.max_memory_reserved() >> 20
                if reset:
                    torch.cuda.reset_peak_memory_stats()
            elif torch.cuda.is_available():
                alloc = reserved = 0
            else:  # the CPU: the process's peak resident memory, which no counter resets
                alloc = reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
                reset = False
        except Exception:  # after a device fault the counters may not answer either
            alloc = reserved = None
            reset = False
        trace.write(json.dumps({"t": time.time(), "alloc": alloc, "reserved": reserved, "reset": reset, "line": line[:300]}) + "\n")
        trace.flush()

    original = train_gpt.Runtime.log

    def log(self, line: str = "", console: bool = True) -> None:
        original(self, line, console)
        if not self.is_main:
            return
        state["resetting"] = state["resetting"] or line.startswith(a.reset_after)
        record(line, reset=state["resetting"] and line.startswith(MARKERS))
        if state["seen"] < len(steps) and line.startswith(steps[state["seen"]]):
            state["seen"] += 1
            if not state["fired"] and state["seen"] == a.fault_step:
                state["fired"] = True
                raise InjectedFault(f"injected by gpu_acceptance.py --inject-fault after the line {line[:60]!r}")
            if not state["fired"] and state["seen"] == a.hang_step:
                state["fired"] = True
                time.sleep(3600)  # SIGTERM ends it: train_gpt.py's handler writes the error line
        if state["stop_after"] and line.startswith(state["stop_after"]):
            raise PlannedStop()

    train_gpt.Runtime.log = log
    atexit.register(record, "<exit>")
    for i, run in enumerate(runs):
        for key, value in run["env"].items():
            os.environ[key] = value
        state["stop_after"] = run.get("stop_after")
        try:
            train_gpt.main()
        except PlannedStop:
            pass
        except SystemExit as exc:
            if exc.code:
                raise
        # train_gpt.main() left its SIGTERM handler (it raises outside main): ours until the next run.
        doing[0] = f"between runs {i + 1} and {i + 2}"
        signal.signal(signal.SIGTERM, stop_signal_handler(doing))
        gc.collect()  # the stopped run's model and optimizer, held by the traceback's frames until now
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # each run reports its own peak_memory
    return 0


def recompress_child(argv: list[str]) -> int:
    """The brotli check: the artifact's payload compressed as train_gpt.py compresses with
    COMPRESSOR=brotli, sealed, and read back by train_gpt.py's loader, tensor for tensor."""
    p = argparse.ArgumentParser(prog="gpu_acceptance.py --child-recompress")
    p.add_argument("--artifact", required=True)
    p.add_argument("--vocab", type=int, required=True)
    a = p.parse_args(argv)
    doing = ["starting (importing torch and train_gpt.py)"]
    signal.signal(signal.SIGTERM, stop_signal_handler(doing))
    sys.path.insert(0, str(ROOT))
    import torch
    import train_gpt as tg
    blob = Path(a.artifact).read_bytes()
    method = tg.COMPRESSORS[blob[4]]
    doing[0] = f"decompressing the {method} artifact"
    decoder, parts = tg.BoundedDecompressor(blob[tg.ARTIFACT_PREFIX_BYTES:], method), []
    while chunk := decoder.read(1 << 24):
        parts.append(chunk)
    payload = b"".join(parts)
    print(f"recompress_read path:{a.artifact} bytes:{len(blob)} compressor:{method} payload_bytes:{len(payload)}", flush=True)
    doing[0] = f"compressing {len(payload):,} bytes with brotli quality 11"
    t0 = time.perf_counter()
    sealed = tg.seal_artifact("brotli", tg.compress(payload, "brotli"))
    seconds = time.perf_counter() - t0
    doing[0] = "reading both artifacts back with train_gpt.py's loader"
    _, want = tg.deserialize_artifact(blob, a.vocab)
    _, got = tg.deserialize_artifact(sealed, a.vocab)
    differ = [name for name in want if name not in got or not torch.equal(want[name], got[name])]
    if differ or set(got) != set(want):
        print(f"error: the brotli artifact reads back differently from the {method} one: {', '.join(differ[:5]) or 'tensor names'}",
              flush=True)
        return 1
    print(f"recompress_done compressor:brotli bytes:{len(sealed)} time:{1000 * seconds:.0f}ms "
          f"rate:{len(payload) / max(seconds, 1e-9) / 1e6:.3f}MB/s tensors:{len(got)} identical:1", flush=True)
    return 0


# ---- running one process ----

@dataclass
class Process:
    name: str  # first, main, brotli, ttt_docs, ttt_chunked, compare; eval and export under --debug
    kind: str  # a key of STEPS
    run_id: str
    env: dict[str, str]
    started: float = 0.0
    ended: float = 0.0
    exit_code: int | None = None
    stopped: str = ""  # why the harness ended it: "" (it exited), "planned", or the reason
    timed_out: bool = False
    lines: list[tuple[float, str]] = field(default_factory=list)  # (time, stdout + stderr line)
    trace: list[dict] = field(default_factory=list)
    output_path: str = ""
    estimate: float | None = None

    @property
    def wall(self) -> float:
        return self.ended - self.started

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def first(self, prefix: str) -> dict[str, str]:
        return next((fields(text) for text in self.texts() if text.startswith(prefix)), {})

    @property
    def failed(self) -> bool:
        return self.stopped not in ("", "planned") or (not self.stopped and self.exit_code != 0)


LIVE: set[subprocess.Popen] = set()  # children still running, stopped on Ctrl-C


def stop(child_proc: subprocess.Popen, grace: float, first: int = signal.SIGTERM) -> str:
    """`first` (SIGTERM: train_gpt.py writes its error line and exits 143), then SIGKILL to the
    whole process group (inductor's compile workers too) if it is still there after `grace` s."""
    with_signal = "SIGINT" if first == signal.SIGINT else "SIGTERM"
    try:
        child_proc.send_signal(first)
        child_proc.wait(timeout=grace)
        return with_signal
    except subprocess.TimeoutExpired:
        pass
    with_signal += f", then SIGKILL after {grace:.0f} s"
    try:
        os.killpg(child_proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child_proc.kill()
    child_proc.wait()
    return with_signal


def command_of(proc: Process, out: Path, args, runs: list[dict]) -> tuple[list[str], Path]:
    trace_path = out / f"{proc.run_id}.trace.jsonl"
    if proc.kind == "recompress":
        return [sys.executable, str(THIS), "--child-recompress", "--artifact", proc.env["ARTIFACT_PATH"],
                "--vocab", proc.env["VOCAB_SIZE"]], trace_path
    steps = [line for _, _, line in STEPS[proc.kind]]
    cmd = [sys.executable, str(THIS), "--child", "--trace", str(trace_path), "--backend", args.compile_backend,
           "--runs", json.dumps(runs), "--steps", json.dumps(steps),
           "--reset-after", "peak_memory" if proc.kind in ("main", "main_ttt", "compare") else ""]
    for option, stage in (("--fault-step", args.inject_fault), ("--hang-step", args.inject_hang)):
        if stage in stages_of(proc.kind, proc.name):
            cmd += [option, str(start_step(proc.kind, stage, proc.name))]
    sanitizer = find_sanitizer() if args.sanitizer else None
    if sanitizer:
        cmd = [sanitizer, "--tool", "memcheck", *cmd]
    return cmd, trace_path


def run_process(proc: Process, out: Path, args, deadline: float, runs: list[dict] | None = None, stop_at: str | None = None,
                on_line=None, prefix: str = "") -> Process:
    """Run one child, echoing its output (with `prefix`) into --out/RUN_ID.out; ended at
    `stop_at`'s line (planned), at `deadline` (SIGTERM, then SIGKILL), or when a GPU run finds no
    GPU. `on_line(text)` sees every line. Reads its trace afterwards."""
    runs = runs if runs is not None else [{"env": {}}]
    cmd, trace_path = command_of(proc, out, args, runs)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"TORCHINDUCTOR_CACHE_DIR": str(out / "inductor_cache"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                "TORCHINDUCTOR_AUTOGRAD_CACHE": "1", "PYTHONUNBUFFERED": "1", **proc.env})
    if proc.kind == "recompress":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job beside the GPU processes
    if args.debug:
        env["CUDA_LAUNCH_BLOCKING"] = "1"
    if args.sanitizer:
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # else memcheck misses accesses inside cached blocks
    proc.output_path = str(out / f"{proc.run_id}.out")
    settings = " ".join(f"{k}={v}" for k, v in proc.env.items() if k not in ("DATA_PATH", "TOKENIZER_PATH"))
    print(f"[gpu_acceptance] {proc.name}: starting ({settings})", flush=True)
    lines: queue.Queue = queue.Queue()
    proc.started, stop_due = time.time(), 0.0
    child_proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", start_new_session=True)  # a group of its own: SIGKILL reaches its workers
    LIVE.add(child_proc)

    def read() -> None:
        for line in child_proc.stdout:
            lines.put((time.time(), line.rstrip("\n")))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    copy = open(proc.output_path, "w", encoding="utf-8")

    def take(item: tuple[float, str]) -> str:
        proc.lines.append(item)
        print(prefix + item[1], flush=True)
        copy.write(item[1] + "\n")
        return item[1]

    try:
        while True:
            try:
                item = lines.get(timeout=0.5)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                text = take(item)
                if on_line:
                    on_line(text)
                if not proc.stopped and stop_at and text.startswith(stop_at):
                    proc.stopped, stop_due = "planned", time.time() + 2  # time to write the line's trace entry
                if not proc.stopped and not args.dry_run and text.startswith("run_info") and "device:cpu" in text:
                    proc.stopped = "torch sees no CUDA device (run_info device:cpu); on a CPU machine use --dry-run"
                    stop(child_proc, args.grace_seconds)
            if stop_due and time.time() > stop_due:
                stop_due = 0.0
                stop(child_proc, args.grace_seconds)
            if not proc.stopped and time.time() > deadline and child_proc.poll() is None:
                proc.timed_out = True
                how = stop(child_proc, args.grace_seconds)
                proc.stopped = f"stopped at its deadline ({how})"
    except KeyboardInterrupt:
        proc.stopped = f"interrupted (Ctrl-C; {stop(child_proc, args.grace_seconds, signal.SIGINT)})"
        raise
    finally:
        proc.exit_code = child_proc.wait()
        LIVE.discard(child_proc)
        proc.ended = time.time()
        while True:  # what it wrote after a Ctrl-C ended the loop above: its error line
            try:
                item = lines.get(timeout=5)
            except queue.Empty:
                break
            if item is None:
                break
            take(item)
        copy.close()
        if trace_path.is_file():
            proc.trace = [json.loads(line) for line in trace_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return proc


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer") or sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    return found if isinstance(found, str) or not found else found[-1]


def steps_of(kind: str, process: str) -> list[tuple[str, str, str]]:
    """STEPS[kind] with the row names of this process (a TTT process's row is its name)."""
    return [(process if row == "ttt" else row, what, line) for row, what, line in STEPS[kind]]


def stages_of(kind: str, process: str) -> list[str]:
    return list(dict.fromkeys(row for row, _, _ in steps_of(kind, process)))


def start_step(kind: str, stage: str, process: str) -> int:
    """How many contract lines the process has written when `stage` starts; a TTT process's TTT
    starts after its round-trip."""
    steps = steps_of(kind, process)
    lines = [line for _, _, line in steps]
    if kind == "ttt":
        return lines.index("ttt_warmup")
    return next(i for i, (row, _, _) in enumerate(steps) if row == stage)


# ---- reading a process: one row per stage ----

@dataclass
class Row:
    stage: str
    result: str  # pass, FAIL, TIMEOUT, REFUSED: why, not run (why), skipped: why
    seconds: float | None = None
    attention: str = "-"
    memory: str = "-"
    tokens_per_s: str = "-"
    detail: str = ""
    estimate: float | None = None


def error_of(proc: Process) -> str:
    """The process's one-line error: its last `error:` line, else the exception its last traceback
    ended with, else its last line; with where in train_gpt.py and compute-sanitizer's first finding."""
    texts = proc.texts()
    line = next((t for t in reversed(texts) if t.startswith("error:")), None)
    if line is None and proc.timed_out:
        last = next((t for t in reversed(texts) if t.strip()), "none")
        line = f"no `error:` line: it did not answer SIGTERM (its last line: {last.strip()[:200]})"
    tracebacks = [i for i, t in enumerate(texts) if t.startswith("Traceback (most recent call last)")]
    if line is None and tracebacks:  # the exception is the first unindented line after the frames
        line = next((t for t in texts[tracebacks[-1] + 1:] if t.strip() and not t.startswith(" ")), None)
    if line is None:
        line = next((t for t in reversed(texts) if t.strip()), "no output")
    frames = re.findall(r'File ".*train_gpt\.py", line (\d+), in (\w+)', "\n".join(texts))
    where = f" (in train_gpt.py {frames[-1][1]}, line {frames[-1][0]})" if frames else ""
    found = next((t for t in texts if t.startswith("========= ") and ("Invalid" in t or "Error" in t)), "")
    sanitizer = f"; compute-sanitizer: {found.removeprefix('========= ')[:200]}" if found else ""
    return f"{line.strip()[:300]}{where}{sanitizer}"


def exit_text(proc: Process) -> str:
    code = proc.exit_code
    if code is not None and code < 0:
        status = f"killed by signal {-code} (no exit status)"
    else:
        meaning, todo = EXIT_MEANINGS.get(code, ("not a status train_gpt.py uses", "read the output"))
        stopped_here = proc.stopped not in ("", "planned") and not proc.timed_out  # the reason says what to do
        status = f"exit {code}: {meaning}" + (f"; to do: {todo}" if code and not stopped_here else "")
    return f"{proc.stopped}; {status}" if proc.stopped and proc.stopped != "planned" else status


def kernels_of(proc: Process) -> dict[str, str]:
    lines = [t for t in proc.texts() if t.startswith("attention_kernels")]
    if lines:  # the last run's; the check's result may hold spaces ("not needed")
        kernels = fields(lines[-1])
        kernels["check"] = lines[-1].partition(" check:")[2] or "-"
    else:  # a script from before the attention_kernels line
        attention = proc.first("run_info").get("attention", "-")
        kernels = {"train": attention, "eval": proc.first("eval_model").get("attention", attention), "check": "-"}
        kernels.update(calibration=kernels["eval"], documents=kernels["eval"])
    return kernels


def attention_for(row: str, kernels: dict[str, str]) -> str:
    def k(name: str) -> str:
        return kernels.get(name, "-")

    if row in ("warmup", "train_unlooped", "train_looped", "eager_steps", "compile_looped", "compiled_steps",
               "compare_warmup", "compare_train_unlooped", "compare_train_looped"):
        return k("train")
    if row in ("startup", "check"):
        return f"check:{k('check')}"
    if row == "gptq":
        return k("calibration")
    if row in ("prequant", "roundtrip", "sliding"):
        return k("eval")
    if row == "ttt_chunked":
        return f"eval:{k('eval')} train:{k('train')}"
    if row == "ttt_phased":
        return f"documents:{k('documents')} train:{k('train')}"
    if row == "ttt_docs":
        return f"documents:{k('documents')}"
    return "-"


def step_lines(texts: list[str]) -> list[dict[str, str]]:
    return [fields(t) for t in texts if t.startswith("step:") and "train_loss:" in t]


def training_rate(texts: list[str], looped: bool, tokens_per_step: int) -> tuple[float, float, int, int] | None:
    """(ms per step, tokens/s, first step, last step) between two step lines before (after) looping,
    as bench_pipeline measures: from step 2 to the switch, and from the step after the first looped one."""
    steps = step_lines(texts)
    loop_at = next((fields(t)["step"] for t in texts if t.startswith("looping_enabled")), None)
    loop_at = int(loop_at) if loop_at is not None else None
    number = [int(s["step"].split("/")[0]) for s in steps]
    if looped:
        chosen = [s for s, n in zip(steps, number) if loop_at is not None and n > loop_at + 1]
    else:
        chosen = [s for s, n in zip(steps, number) if n >= 2 and (loop_at is None or n <= loop_at)]
    if len(chosen) < 2:
        return None
    n0, n1 = (int(s["step"].split("/")[0]) for s in (chosen[0], chosen[-1]))
    dt = ms(chosen[-1]["train_time"]) - ms(chosen[0]["train_time"])
    if n1 <= n0 or dt <= 0:
        return None
    step_ms = dt / (n1 - n0)
    return step_ms, tokens_per_step / (step_ms / 1000), n0, n1


def memory_text(entry: dict | None, before: dict | None) -> str:
    """Exact when the counters were reset at the stage's start or the stage raised the peak, else a bound."""
    if not entry or entry.get("alloc") is None:
        return "-"
    value = f"{entry['alloc']:,} / {entry['reserved']:,} MiB"
    exact = before is None or before.get("reset") or (before.get("alloc") or 0) < entry["alloc"]
    return value if exact else f"<= {value}"


def found_in_order(texts: list[str], lines: list[str]) -> list[int | None]:
    """Where each contract line appears, each searched after the one before (a process may run
    train_gpt.main() twice, so a line can appear twice)."""
    found, at = [], 0
    for line in lines:
        index = next((i for i in range(at, len(texts)) if texts[i].startswith(line)), None)
        found.append(index)
        if index is None:
            found.extend([None] * (len(lines) - len(found)))
            break
        at = index + 1
    return found


def rows_of(proc: Process, out: Path) -> list[Row]:
    """The process's stages: passed up to its last contract line, then the failing one, then not run."""
    steps = steps_of(proc.kind, proc.name)
    texts = proc.texts()
    found = found_in_order(texts, [line for _, _, line in steps])
    last = max((i for i, at in enumerate(found) if at is not None), default=-1)
    failed_step = last + 1 if proc.failed else None
    if failed_step is not None and failed_step >= len(steps):
        failed_step = len(steps) - 1  # every line written, then the process failed: its last stage
    entries = [e for e in proc.trace if e["line"].startswith(MARKERS)]
    trace_at = {}  # the trace entry of each found contract line, matched in order like the lines
    cursor = 0
    for i, at in enumerate(found):
        if at is None:
            break
        match = next((j for j in range(cursor, len(entries)) if entries[j]["line"].startswith(steps[i][2])), None)
        if match is not None:
            trace_at[i], cursor = entries[match], match + 1
    exit_entry = next((e for e in reversed(proc.trace) if e["line"] == "<exit>"), None)
    kernels = kernels_of(proc)
    rows, previous_end, previous_entry, blocked = [], proc.started, None, ""
    for row in dict.fromkeys(r for r, _, _ in steps):
        indices = [i for i, (r, _, _) in enumerate(steps) if r == row]
        end = indices[-1]
        r = Row(row, "pass", attention=attention_for(row, kernels))
        if blocked:
            r.result, r.attention = f"not run ({blocked})", "-"
        elif failed_step in indices:
            what, line = steps[failed_step][1], steps[failed_step][2]
            after = texts[found[last]][:80] if last >= 0 else "none"
            r.result = "TIMEOUT" if proc.timed_out else "FAIL"
            r.seconds, r.memory = proc.ended - previous_end, memory_text(exit_entry, previous_entry)
            r.detail = f"failed in {what} (no `{line.strip()}` line; last contract line: `{after}`); {exit_text(proc)}"
            if proc.stopped.startswith("torch sees no CUDA"):
                pass  # the reason says it all
            else:  # the child's own last words, also when this script stopped it at its deadline
                r.detail += f"; {error_of(proc)}"
            blocked = f"{row} failed"
        elif found[end] is None:
            r.result, r.attention = "not run", "-"
            r.detail = ("the process was stopped as planned" if proc.stopped == "planned" else
                        f"no `{steps[end][2].strip()}` line although the process ended normally (disabled by a setting?)")
        else:
            t_end = proc.lines[found[end]][0]
            entry = trace_at.get(end)
            r.seconds, r.memory = t_end - previous_end, memory_text(entry, previous_entry)
            start = found[indices[0] - 1] + 1 if indices[0] > 0 and found[indices[0] - 1] is not None else 0
            r.tokens_per_s, r.detail = describe(row, proc, start, found[end])
            previous_end, previous_entry = t_end, entry
        rows.append(r)
    return rows


def seconds(value: str | None) -> str:
    return f"{ms(value) / 1000:.1f} s" if value else "?"


def describe(row: str, proc: Process, start: int, end: int) -> tuple[str, str]:
    """(tokens/s per GPU, detail) of a stage that passed, from its contract lines: those from
    `start` (after the stage before's last contract line) to `end` (this stage's last one); a
    line logged after it (compiled_graphs, GPTQ's time, the artifact) is the next one after `start`."""
    texts = proc.texts()
    part, upto, after = texts[start:end + 1], texts[:end + 1], texts[start:]

    def first(prefix: str, within: list[str] = part) -> dict[str, str]:
        return next((fields(t) for t in within if t.startswith(prefix)), {})

    def new_graphs(stage: str, within: list[str] = after) -> str:
        line = first(f"compiled_graphs stage:{stage} ", within)
        return f"{line['new']} new graph{'' if line['new'] == '1' else 's'}" if line else "graphs not logged"

    if row in ("startup", "check"):
        data, kernels = first("data "), first("attention_kernels")
        rejected = "".join(f"; {t}" for t in part if t.startswith("attention_kernel_rejected"))
        return "-", f"{data.get('val_tokens', '?')} val tokens; " + (
            f"kernels train:{kernels.get('train')} eval:{kernels.get('eval')} documents:{kernels.get('documents')}"
            if kernels else "no attention_kernels line") + rejected
    if row in ("eager_steps", "compiled_steps"):
        steps, peak = step_lines(part), first("peak_memory")
        setup = next((fields(t) for t in reversed(upto) if t.startswith("train_setup")), {})  # this run's
        if len(steps) < 2:
            return "-", f"{len(steps)} steps; peak {peak.get('allocated', '?')}"
        (s0, s1), per = (steps[0], steps[-1]), int(setup.get("tokens_per_step", 0))
        n = int(s1["step"].split("/")[0]) - int(s0["step"].split("/")[0])
        step_ms = (ms(s1["train_time"]) - ms(s0["train_time"])) / max(n, 1)
        shape = f"{setup.get('micro_batch_seqs', '?')} x {setup.get('window_len', '?')} tokens"
        rate = f"{per / (step_ms / 1000):,.0f}" if step_ms > 0 else "-"
        return rate, f"{len(steps)} steps of {shape}, {step_ms:.1f} ms/step after the first; loss {s1['train_loss']}; peak {peak.get('allocated', '?')}"
    if row in ("warmup", "compare_warmup", "compile_looped"):
        compiles = [fields(t) for t in part if t.startswith("compile_time ")]
        listed = ", ".join(f"{c.get('graph')} {seconds(c.get('time'))}" for c in compiles) or "no compile_time lines"
        warm = first("warmup_done")
        return "-", f"warmup_done {seconds(warm.get('time'))} ({warm.get('steps', '?')} steps): {listed}; {new_graphs('warmup')}"
    if row in ("train_unlooped", "train_looped", "compare_train_unlooped", "compare_train_looped"):
        looped = row.endswith("_looped")  # not "_unlooped"
        rate = training_rate(texts, looped, int(proc.first("train_setup").get("tokens_per_step", 0)))
        if rate is None:
            return "-", "too few step lines to time"
        extra = f"; {new_graphs('training')} while training" if row.endswith("train_looped") else ""
        return f"{rate[1]:,.0f}", f"{rate[0]:.1f} ms/step (steps {rate[2]}-{rate[3]}){extra}"
    if row == "gptq":
        timed = (proc.first("wallclock") or proc.first("export ")).get("gptq_time")  # after serialize: may be absent
        damping, quant = proc.first("gptq_damping_raised"), proc.first("quantize method:")
        return "-", (f"{'gptq_time ' + seconds(timed) + '; ' if timed else ''}{quant.get('matrices', '?')} matrices, "
                     f"{quant.get('quantized_tensors', '?')} quantized tensors"
                     f"{'; damping raised on ' + damping['matrices'] + ' matrices' if damping else ''}; {new_graphs('gptq')}")
    if row == "serialize":
        s, art = proc.first("serialize compressor:"), proc.first("artifact ")
        detail = f"{s.get('compressor')} {int(s.get('bytes', 0)):,} bytes in {seconds(s.get('time'))}"
        if art:
            over = " OVER THE LIMIT (score withheld)" if any(t.startswith("artifact_over_limit") for t in texts) else ""
            detail += f"; artifact {int(art['total_bytes']):,} of {int(art['limit_bytes']):,} bytes{over}"
        return "-", detail
    if row == "brotli":
        read, done = proc.first("recompress_read"), proc.first("recompress_done")
        return "-", (f"{int(read.get('payload_bytes', 0)):,}-byte payload of the {read.get('compressor')} artifact: brotli "
                     f"{int(done.get('bytes', 0)):,} bytes in {seconds(done.get('time'))} ({done.get('rate')}); the loader "
                     f"reads back the same {done.get('tensors')} tensors (a 12-step model: not the trained size)")
    stage_line = {"prequant": "final_prequant", "roundtrip": "final_roundtrip", "sliding": "final_sliding"}.get(row, "final_ttt")
    final = proc.first(stage_line + " ")
    detail = f"val_bpb {float(final.get('val_bpb', 'nan')):.4f}, eval_time {seconds(final.get('eval_time'))}"
    if row.startswith("ttt_"):
        warm, docs = proc.first("ttt_warmup"), proc.first("ttt_docs")
        detail += f"; warm-up {seconds(warm.get('time'))}; {new_graphs('ttt_warmup')} in the warm-up, {new_graphs('ttt')} while scoring"
        if docs:
            detail += f"; {docs.get('documents')} documents in {docs.get('batches')} batches"
        if docs and row == "ttt_phased":
            ends = docs.get("phase_ends")
            detail += f", a global phase after batch {ends}" if ends != "-" else " (NO global phase ran: too few documents)"
    else:
        detail += f"; {new_graphs(row)}"
    return "-", detail


# ---- setup: wheels, data, the validation subset ----

class SetupError(Exception):
    """Setup cannot go on: the message says what is missing and how to get it."""


def read_shard(path: Path) -> np.ndarray:
    n = int(np.fromfile(path, dtype="<i4", count=3)[2])
    return np.memmap(path, dtype="<u2", mode="r", offset=256 * 4, shape=(n,))


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


def write_val_subset(data_path: Path, out: Path, window: int, chunk: int, batch: int, cap: int, target: int) -> tuple[Path, dict]:
    """A copy of the data set (training shards linked) whose validation split is: the first
    document with at least window + chunk tokens, cut there (per-document TTT then slides its
    window inside a document), then the next documents cut to `cap` tokens each, until `target`
    tokens and more than `batch` documents (so phased TTT runs a global phase between batches).
    Byte sidecars (CaseOps) are cut the same way."""
    vals = sorted(data_path.glob("fineweb_val_[0-9]*.bin"))
    trains = sorted(data_path.glob("fineweb_train_[0-9]*.bin"))
    if not vals or not trains:
        raise SetupError(f"{data_path} holds no fineweb_val_*.bin or fineweb_train_*.bin shards: run tests/prepare_gpu_carry.sh "
                         f"and carry data/, or pass --data-path")
    sidecars = [v.with_name(v.name.replace("fineweb_val_", "fineweb_val_bytes_")) for v in vals]
    with_bytes = all(s.is_file() for s in sidecars)
    enough = max(8 * target, 1 << 20)  # enough documents, never the whole split
    tokens = np.concatenate([read_shard(v)[:enough] for v in vals])
    counts = np.concatenate([read_shard(s)[:enough] for s in sidecars]) if with_bytes else None
    starts = np.flatnonzero(tokens == 1).tolist()
    spans = [(s, e - s) for s, e in zip(starts, starts[1:] + [len(tokens)]) if e - s >= 2]
    long_need = window + chunk
    first_long = next((i for i, (_, n) in enumerate(spans) if n >= long_need), None)
    if first_long is None:
        first_long = max(range(len(spans)), key=lambda i: spans[i][1]) if spans else None
    picked = [(spans[first_long][0], min(spans[first_long][1], long_need))] if first_long is not None else []
    for i, (s, n) in enumerate(spans):
        if len(picked) > batch and sum(n for _, n in picked) >= target:
            break
        if i != first_long:
            picked.append((s, min(n, cap)))
    if len(picked) <= batch:
        raise SetupError(f"{data_path}'s validation split has {len(picked)} documents in its first {len(tokens):,} tokens; "
                         f"phased TTT needs more than TTT_DOC_BATCH={batch} for a global phase between two batches: rebuild "
                         f"the data with more --val-docs (tests/prepare_gpu_carry.sh)")
    folder = out / "data" / f"{data_path.name}_subset"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for shard in trains:  # linked, not copied: the training data is the set's own
        (folder / shard.name).symlink_to(shard.resolve())
    write_shard(folder / "fineweb_val_000000.bin", np.concatenate([tokens[s:s + n] for s, n in picked]))
    if counts is not None:
        write_shard(folder / "fineweb_val_bytes_000000.bin", np.concatenate([counts[s:s + n] for s, n in picked]))
    info = {"documents": len(picked), "tokens": sum(n for _, n in picked), "longest": max(n for _, n in picked),
            "batches": math.ceil(len(picked) / batch), "byte_sidecar": bool(counts is not None)}
    return folder, info


def cuda_missing() -> bool:
    import torch
    return not torch.cuda.is_available()


CARRIED = ("brotli", "zstandard")  # the wheels tests/prepare_gpu_carry.sh downloads


def brotli_too_old() -> bool:
    try:
        from importlib.metadata import version
        return tuple(int(p) for p in version("brotli").split(".")[:2]) < (1, 2)
    except Exception:
        return False


def install_wheels(out: Path) -> str:
    """Make brotli (>= 1.2: the loader's output_buffer_limit) and zstandard importable: the
    wheels in .whl/ installed with pip --no-index into --out/site, put on the children's PYTHONPATH."""
    missing = [m for m in CARRIED if importlib.util.find_spec(m) is None]
    if "brotli" not in missing and brotli_too_old():
        missing.append("brotli>=1.2")
    if importlib.util.find_spec("sentencepiece") is None:
        raise SetupError("sentencepiece does not import here: pip install sentencepiece (the GPU image has it)")
    if not missing:
        return f"{', '.join(CARRIED)} import"
    wheels = sorted(str(p) for p in (ROOT / ".whl").glob("*.whl"))
    if not wheels:
        raise SetupError(f"{', '.join(missing)} not importable and .whl/ holds no wheels: run tests/prepare_gpu_carry.sh on a "
                         f"networked machine and carry .whl/, or pip install {' '.join(missing)}")
    site = out / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--upgrade", "--target", str(site), *wheels], capture_output=True, text=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(site))
    check = subprocess.run([sys.executable, "-c", "import brotli, zstandard; print(brotli.__version__)"], capture_output=True, text=True)
    if done.returncode != 0 or check.returncode != 0:
        said = (done.stderr or check.stderr).strip().splitlines()[-1:]
        raise SetupError(f"the wheels in .whl/ did not install or import ({said}): were they downloaded for this Python "
                         f"({sys.version.split()[0]})? PYTHON_VERSION=... bash tests/prepare_gpu_carry.sh")
    return f"installed {len(wheels)} wheels from .whl/ into {site} (brotli {check.stdout.strip()})"


def acceptance_data(args, out: Path) -> dict[str, str]:
    """DATA_PATH / TOKENIZER_PATH / VOCAB_SIZE: --data-path, else FineWeb if present, else the
    carried acceptance set (built here if missing); the dry run builds a tiny one under --out."""
    if args.data_path:
        data = {"DATA_PATH": str(Path(args.data_path).resolve()), "TOKENIZER_PATH": str(Path(args.tokenizer_path).resolve()),
                "VOCAB_SIZE": str(args.vocab)}
    elif args.dry_run:
        root = out / "data"
        data = {"DATA_PATH": str(root / "datasets" / "tiny_sp512"), "TOKENIZER_PATH": str(root / "tokenizers" / "tiny_512_bpe.model"),
                "VOCAB_SIZE": "512"}
        if not Path(data["TOKENIZER_PATH"]).is_file():
            made = subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--output-root", str(root),
                                   "--vocab-size", "512", "--max-bytes", "3000000", "--val-docs", "20", "--name", "tiny"],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise SetupError(f"the tiny data set did not build: {made.stderr.strip().splitlines()[-1:]}")
            data = dict(item.split("=", 1) for item in made.stdout.strip().splitlines()[-1].split())
    else:
        fineweb = ROOT / "data" / "datasets" / f"fineweb10B_sp{args.vocab}"
        carried = ROOT / "data" / "datasets" / f"acceptance_sp{args.vocab}"
        if any(fineweb.glob("fineweb_val_*.bin")):
            data = {"DATA_PATH": str(fineweb), "TOKENIZER_PATH": str(ROOT / "data" / "tokenizers" / f"fineweb_{args.vocab}_bpe.model"),
                    "VOCAB_SIZE": str(args.vocab)}
        else:
            data = {"DATA_PATH": str(carried), "TOKENIZER_PATH": str(ROOT / "data" / "tokenizers" / f"acceptance_{args.vocab}_bpe.model"),
                    "VOCAB_SIZE": str(args.vocab)}
            if not Path(data["TOKENIZER_PATH"]).is_file():  # the carry's own builder, on the spot (~20 s)
                made = subprocess.run(["bash", str(ROOT / "tests" / "prepare_gpu_carry.sh"), "--data-only"], capture_output=True,
                                      text=True, cwd=ROOT)
                if made.returncode != 0:
                    raise SetupError(f"no data: {carried} is missing and did not build ({made.stderr.strip().splitlines()[-1:]}); "
                                     f"run tests/prepare_gpu_carry.sh and carry data/")
    for key in ("DATA_PATH", "TOKENIZER_PATH"):
        if not Path(data[key]).exists():
            raise SetupError(f"{key}={data[key]} does not exist: run tests/prepare_gpu_carry.sh and carry data/, or pass "
                             f"--data-path and --tokenizer-path")
    return data


# ---- the acceptance run ----

class Acceptance:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.report_dir = args.report_dir.resolve() if args.report_dir else self.out / "report"
        self.t0 = time.time()
        self.stamp = time.strftime("%Y%m%d_%H%M%S")
        self.deadline = self.t0 + args.kill_after
        self.processes: list[Process] = []
        self.rows: list[Row] = []
        self.artifact = self.out / "model.ptz"
        self.checkpoint = self.out / "model.pt"
        self.estimates = {name: value for name, (value, _) in (DRY_ESTIMATES if args.dry_run else ESTIMATES).items()}
        self.measured: dict[str, float] = {}
        self.settings: dict[str, str] = {}
        self.data: dict[str, str] = {}
        self.data_info: dict = {}
        self.background: list[threading.Thread] = []
        self.brotli_decided = False
        self.interrupted = False
        self.setup_failed = False
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        """Seconds until --kill-after: a process must end before its SIGTERM."""
        return self.deadline - time.time()

    def setup(self) -> None:
        t = time.time()
        args = self.args
        try:
            missing = [m for m in ("torch", "numpy") if importlib.util.find_spec(m) is None]
            if missing:
                raise SetupError(f"{', '.join(missing)} do not import here: pip install {' '.join(missing)}")
            wheels = install_wheels(self.out)
            data = acceptance_data(args, self.out)
            settings = {**(DRY_RUN_SETTINGS if args.dry_run else GPU_SETTINGS)}
            sys.path.insert(0, str(ROOT))
            import train_gpt as tg
            if not args.dry_run and cuda_missing():
                raise SetupError("torch sees no CUDA device here: on a machine without a GPU, use --dry-run")
            given = {key: value for key, _, value in (item.partition("=") for item in args.env)}  # --env shapes the plan too
            h = tg.Hyperparameters(environ={**settings, "VOCAB_SIZE": data["VOCAB_SIZE"], **given})
            # The micro-batch one rank of an 8-GPU run compiles: the real shape (the dry run's own).
            world = 1 if args.dry_run or (h.train_batch_tokens // h.window_len) % 8 else 8
            settings["MICRO_BATCH_SEQS"] = str(h.micro_batch(world))
            folder, info = write_val_subset(Path(data["DATA_PATH"]), self.out, h.eval_seq_len, h.ttt_doc_chunk_tokens,
                                            h.ttt_doc_batch, args.ttt_doc_tokens, args.val_tokens)
            if h.ttt_chunk_tokens >= info["tokens"] - 1:  # chunked TTT needs two chunks to train once
                settings["TTT_CHUNK_TOKENS"] = str(max(1, (info["tokens"] - 1) // 2))
            self.rows_per_step = int(settings["MICRO_BATCH_SEQS"])
            self.seq_len = h.train_seq_len
        except (SetupError, OSError, ImportError, ValueError) as exc:  # ValueError: train_gpt.py's ConfigError
            self.setup_failed = True
            self.rows.append(Row("setup", "FAIL", time.time() - t, detail=str(exc)))
            return
        self.settings, self.data, self.data_info = settings, {**data, "DATA_PATH": str(folder)}, info
        sanitizer = ""
        if args.sanitizer:
            sanitizer = f"; compute-sanitizer: {find_sanitizer() or 'NOT FOUND, running under CUDA_LAUNCH_BLOCKING=1 only'}"
        self.rows.append(Row("setup", "pass", time.time() - t, detail=(
            f"{wheels}; data {Path(data['DATA_PATH']).name}: validation subset of {info['documents']} documents, "
            f"{info['tokens']:,} tokens, the longest {info['longest']:,} ({info['batches']} TTT batches); micro-batch "
            f"{settings['MICRO_BATCH_SEQS']} x {h.train_seq_len}{sanitizer}")))

    def base_env(self) -> dict[str, str]:
        args = self.args
        return {**self.settings, "COMPILE": "1", **self.data, "ITERATIONS": str(args.iterations), "MAX_WALLCLOCK_SECONDS": "0",
                "ENABLE_LOOPING_AT": "0.5", "WARMUP_STEPS": "2", "TRAIN_LOG_EVERY": "1", "VAL_TOKENS_LIMIT": "0"}

    def env_for(self, name: str, extra: dict[str, str], kind: str | None = None) -> dict[str, str]:
        """The settings of process `name`: the run's, the process's own, --env, then each --env-stage
        whose stage this process runs (or that names it)."""
        env = {**self.base_env(), **extra}
        for item in self.args.env:
            key, _, value = item.partition("=")
            env[key] = value
        runs = stages_of(kind or ("ttt" if name.startswith("ttt_") else name), name)
        for stage, item in self.args.env_stage:
            if stage == name or stage in runs:
                key, _, value = item.partition("=")
                env[key] = value
        return env

    def launch(self, name: str, kind: str, extra: dict[str, str], stop_at: str | None = None, runs: list[dict] | None = None,
               deadline: float | None = None, on_line=None, prefix: str = "", estimate: float | None = None) -> Process:
        run_id = f"{name}_{self.stamp}"
        env = {"RUN_ID": run_id, **self.env_for(name, extra, kind)} if kind != "recompress" else extra
        proc = Process(name, kind, run_id, env, estimate=estimate)
        with self.lock:
            self.processes.append(proc)
        try:
            run_process(proc, self.out, self.args, min(deadline or self.deadline, self.deadline), runs, stop_at, on_line, prefix)
        finally:
            print(f"[gpu_acceptance] {name}: {proc.wall:.1f} s (estimate {estimate or 0:.0f} s), "
                  f"{exit_text(proc) if proc.stopped != 'planned' else 'stopped as planned'} "
                  f"({self.elapsed():.0f} s of the {self.args.budget_seconds:.0f} s budget used)", flush=True)
        return proc

    def estimate(self, process: str, **kw) -> tuple[float, str]:
        parts = estimate_of(process, self.estimates, self.args.iterations, self.args.eager_steps, **kw)
        total = sum(parts.values())
        return total, f"~{total:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()) + ")"

    def fits(self, seconds: float) -> str | None:
        """None when `seconds` fit in what is left of the budget, else why not."""
        left = self.left()
        return None if seconds <= left else f"needs ~{seconds:.0f} s, {max(left, 0):.0f} s left before --kill-after"

    def measure(self, proc: Process) -> None:
        """Replace estimates with what this process measured."""
        texts = proc.texts()
        setups = [i for i, t in enumerate(texts) if t.startswith("train_setup")]
        if setups and proc.name == "first":
            self.measured["start"] = proc.lines[setups[0]][0] - proc.started
        for line in (fields(t) for t in texts if t.startswith("compile_time ")):
            graph, took = line.get("graph", ""), ms(line.get("time", "0ms")) / 1000
            if proc.name == "first" and graph.startswith("train_"):
                self.measured["compile_train"] = took
            elif proc.name == "main" and graph.startswith("train_looped"):
                self.measured["compile_cached"] = took
            elif proc.name == "main" and graph.startswith("train_unlooped"):
                self.measured["compile_train"] = took
        steps = step_lines(texts)
        if proc.name == "first" and len(steps) >= 2:
            self.measured["eager_step"] = ms(steps[1]["train_time"]) / 2
        final = {name: fields(t) for t in texts for name in ("final_roundtrip", "final_ttt") if t.startswith(name + " ")}
        if "final_roundtrip" in final:
            self.measured["eval"] = ms(final["final_roundtrip"]["eval_time"]) / 1000
        if "final_ttt" in final and proc.name == "main":
            self.measured["ttt_run"] = ms(final["final_ttt"]["eval_time"]) / 1000
        for name in ("start", "compile_train", "compile_cached", "eval", "ttt_run", "eager_step"):
            if name in self.measured:
                self.estimates[name] = self.measured[name]
        if "compile_train" in self.measured:  # a graph without gradients compiles as much faster or slower
            table = DRY_ESTIMATES if self.args.dry_run else ESTIMATES
            self.estimates["compile_eval"] = table["compile_eval"][0] * self.measured["compile_train"] / table["compile_train"][0]

    def skip(self, rows: list[str], why: str) -> None:
        self.rows.extend(Row(r, f"skipped: {why}") for r in rows)

    def first_runs(self) -> list[dict]:
        """The first stage's two train_gpt.main() calls: eager steps, then the looped graph compiled."""
        args, rows = self.args, self.rows_per_step
        eager_rows = min(EAGER_ROWS, rows)
        common = {"TTT_ENABLED": "0", "SLIDING_ENABLED": "0", "ARTIFACT_PATH": str(self.out / "first.ptz"), "CHECKPOINT_PATH": ""}
        eager = {**common, "RUN_ID": f"first_eager_{self.stamp}", "COMPILE": "0", "ITERATIONS": str(args.eager_steps),
                 "ENABLE_LOOPING_AT": "0.5", "WARMUP_STEPS": "0", "MICRO_BATCH_SEQS": str(eager_rows),
                 "TRAIN_BATCH_TOKENS": str(eager_rows * self.seq_len)}
        compiled = {**common, "RUN_ID": f"first_compiled_{self.stamp}", "COMPILE": "1", "ITERATIONS": str(args.compiled_steps),
                    "ENABLE_LOOPING_AT": "0", "WARMUP_STEPS": "1", "MICRO_BATCH_SEQS": str(rows),
                    "TRAIN_BATCH_TOKENS": str(rows * self.seq_len)}
        for run in (eager, compiled):  # --env and --env-stage reach both runs, over the runs' own values
            for item in args.env + [item for s, item in args.env_stage if s in FIRST_ROWS or s == "first"]:
                key, _, value = item.partition("=")
                run[key] = value
        return [{"env": eager, "stop_after": "peak_memory"}, {"env": compiled, "stop_after": "peak_memory"}]

    def main_env(self, ttt: bool) -> dict[str, str]:
        return {"TTT_ENABLED": "1" if ttt else "0", "TTT_MODE": "phased", "SLIDING_ENABLED": "1",
                "ARTIFACT_PATH": str(self.artifact), "CHECKPOINT_PATH": str(self.checkpoint)}

    def ttt_env_for(self, mode: str) -> dict[str, str]:
        return {"EVAL_ONLY": "1", "ARTIFACT_PATH": str(self.artifact), "TTT_ENABLED": "1", "TTT_MODE": mode,
                "SLIDING_ENABLED": "0", "CHECKPOINT_PATH": ""}

    def compare_env(self) -> dict[str, str]:
        return {"ATTENTION_KERNEL": self.args.compare_kernel or "sdpa", "ITERATIONS": str(self.args.compare_iterations),
                "TTT_ENABLED": "0", "SLIDING_ENABLED": "0", "GPTQ_CALIB_BATCHES": "1",
                "ARTIFACT_PATH": str(self.out / "compare.ptz"), "CHECKPOINT_PATH": ""}

    def run_first(self) -> bool:
        """The first stage; True when it passed."""
        total, parts = self.estimate("first")
        cap = self.args.first_stage_seconds
        why = None if total <= cap else f"its estimate {parts} exceeds --first-stage-seconds {cap:.0f}"
        why = why or self.fits(total)
        if why:
            self.rows += [Row(r, f"REFUSED: {why}") for r in FIRST_ROWS]
            return False
        print(f"[gpu_acceptance] first stage: estimate {parts}; at most {cap:.0f} s", flush=True)
        proc = self.launch("first", "first", {}, runs=self.first_runs(), deadline=time.time() + cap, estimate=total)
        self.rows += rows_of(proc, self.out)
        self.measure(proc)
        passed = not proc.failed
        print(f"[gpu_acceptance] FIRST STAGE {'PASS' if passed else 'FAIL'} in {proc.wall:.0f} s", flush=True)
        return passed

    def start_brotli(self, text: str) -> None:
        """On the main run's serialize line: the brotli check in a thread, beside the GPU work."""
        if not text.startswith("serialize compressor:") or self.brotli_decided:
            return
        self.brotli_decided = True
        total, parts = self.estimate("brotli")
        why = self.fits(total)
        if why:
            self.skip(["brotli"], why)
            return
        extra = {"ARTIFACT_PATH": fields(text).get("path", str(self.artifact)), "VOCAB_SIZE": self.data["VOCAB_SIZE"]}

        def work() -> None:
            proc = self.launch("brotli", "recompress", extra, prefix="[brotli] ", estimate=total)
            with self.lock:
                self.rows.extend(rows_of(proc, self.out))

        thread = threading.Thread(target=work, daemon=True)
        self.background.append(thread)
        thread.start()

    def run_all(self) -> None:
        self.setup()
        if self.rows[-1].result != "pass":
            self.skip(ALL_ROWS[1:], "setup failed")
            return
        if not self.run_first():
            failed = next((r.stage for r in self.rows if r.result in ("FAIL", "TIMEOUT")), None)
            reason = f"the first stage failed at {failed}: fix it, then rerun" if failed else "the first stage was refused"
            self.rows += [Row(r, f"not run ({reason})") for r in ALL_ROWS if r not in ("setup", *FIRST_ROWS)]
            return
        if self.args.first_stage_only:
            self.skip([r for r in ALL_ROWS if r not in ("setup", *FIRST_ROWS)], "--first-stage-only")
            return
        main_total, main_parts = self.estimate("main")
        ttt_total, ttt_parts = self.estimate("ttt_phased")
        why = self.fits(main_total)
        if why:
            self.rows += [Row(r, f"REFUSED: {why}; its estimate {main_parts}") for r in MAIN_ROWS]
            self.skip(["brotli", "ttt_docs", "ttt_chunked", *COMPARE_ROWS], "the main run was refused: no artifact")
            return
        ttt_refused = self.fits(main_total + ttt_total)
        ttt = ttt_refused is None
        print(f"[gpu_acceptance] main: estimate {main_parts}; phased TTT in it: {ttt_parts}"
              f"{'' if ttt else ' -- does not fit: skipped'}", flush=True)
        main = self.launch("main", "main_ttt" if ttt else "main", self.main_env(ttt), on_line=self.start_brotli,
                           estimate=main_total + (ttt_total if ttt else 0))
        self.rows += rows_of(main, self.out)
        if not ttt:
            self.rows.append(Row("ttt_phased", f"REFUSED: {ttt_refused} when the main run started (main and phased TTT "
                                               f"together); its estimate {ttt_parts}"))
        self.measure(main)
        if not self.artifact.is_file() or not any(t.startswith("serialize compressor:") for t in main.texts()):
            failed = next((r.stage for r in self.rows if r.result in ("FAIL", "TIMEOUT")), "?")
            reason = f"the main run failed at {failed}: no artifact"
            self.rows += [Row(r, f"not run ({reason})") for r in ("brotli", "ttt_docs", "ttt_chunked", *COMPARE_ROWS)
                          if not (r == "brotli" and self.brotli_decided)]
            return
        for mode in ("docs", "chunked"):
            total, parts = self.estimate(f"ttt_{mode}")
            why = self.fits(total)
            if why:
                self.skip([f"ttt_{mode}"], f"{why}; its estimate {parts}")
                continue
            proc = self.launch(f"ttt_{mode}", "ttt", self.ttt_env_for(mode), estimate=total)
            self.rows += rows_of(proc, self.out)
        self.compare(main)

    def compare(self, main: Process) -> None:
        if not self.args.compare_kernel:
            self.skip(COMPARE_ROWS, "not asked for (--compare-kernel flex times flex's compile and steps beside the main run's)")
            return
        total, parts = self.estimate("compare")
        why = self.fits(total)
        if why:
            self.skip(COMPARE_ROWS, f"{why}; its estimate {parts}")
            return
        proc = self.launch("compare", "compare", self.compare_env(), stop_at="peak_memory", estimate=total)
        compare_rows = rows_of(proc, self.out)
        rows = {r.stage: r for r in self.rows}
        for r in compare_rows:
            base = rows.get(r.stage.removeprefix("compare_"))
            if r.result == "pass" and base and base.tokens_per_s != "-" and r.tokens_per_s != "-":
                ratio = float(r.tokens_per_s.replace(",", "")) / float(base.tokens_per_s.replace(",", ""))
                r.detail += f"; {ratio:.2f}x the main run's {base.attention} ({base.tokens_per_s} tokens/s)"
            elif r.result == "pass" and r.stage == "compare_warmup" and "warmup" in rows:
                r.detail += f"; the main run's warm-up: {rows['warmup'].seconds or 0:.1f} s with {rows['warmup'].attention}"
        self.rows += compare_rows

    def run_debug(self, stage: str) -> None:
        """One stage's process again (CUDA_LAUNCH_BLOCKING=1, maybe compute-sanitizer), as small as it can be:
        TTT on the artifact; round-trip and sliding on the artifact; GPTQ, serialize and prequant from the
        checkpoint (train_gpt.py saves it before GPTQ); the first stage's process; anything else the main
        run, stopped once the stage's line appears."""
        self.setup()
        if self.rows[-1].result != "pass":
            return
        process = PROCESS_OF[stage]
        needs_artifact = process.startswith("ttt_") or stage in ("brotli", "ttt_phased")
        if needs_artifact and not self.artifact.is_file():
            self.rows.append(Row(stage, f"not run (--debug {stage} needs {self.artifact}: run the whole acceptance with the "
                                        f"same --out first)"))
            return
        if process == "first":
            proc = self.launch("first", "first", {}, runs=self.first_runs())
        elif stage == "ttt_phased":
            proc = self.launch("ttt_phased", "ttt", self.ttt_env_for("phased"))
        elif process.startswith("ttt_"):
            proc = self.launch(process, "ttt", self.ttt_env_for(process.removeprefix("ttt_")))
        elif process == "brotli":
            proc = self.launch("brotli", "recompress", {"ARTIFACT_PATH": str(self.artifact), "VOCAB_SIZE": self.data["VOCAB_SIZE"]})
        elif process == "compare":
            proc = self.launch("compare", "compare", self.compare_env(), stop_at="peak_memory")
        elif stage in ("roundtrip", "sliding") and self.artifact.is_file():
            proc = self.launch("eval", "eval", {"EVAL_ONLY": "1", "ARTIFACT_PATH": str(self.artifact), "TTT_ENABLED": "0",
                                                "SLIDING_ENABLED": "1", "CHECKPOINT_PATH": ""})
        elif stage in ("gptq", "serialize", "prequant") and self.checkpoint.is_file():
            proc = self.launch("export", "export", {"EXPORT_ONLY": str(self.checkpoint), "TTT_ENABLED": "0", "SLIDING_ENABLED": "0",
                                                    "ARTIFACT_PATH": str(self.out / "debug_model.ptz"), "CHECKPOINT_PATH": ""})
        else:
            ends = [line for row, _, line in STEPS["main"] if row == stage]
            proc = self.launch("main", "main", {**self.main_env(False), "ARTIFACT_PATH": str(self.out / "debug_model.ptz"),
                                                "CHECKPOINT_PATH": ""}, stop_at=ends[-1])
        self.rows += rows_of(proc, self.out)
        print("\n[gpu_acceptance] the last lines of its output:\n" + "\n".join(proc.texts()[-30:]), flush=True)

    def finish_background(self) -> None:
        for thread in self.background:
            thread.join()  # each ends by its deadline: run_process stops it there

    def status(self) -> int:
        results = [r.result for r in self.rows]
        if self.interrupted:
            return INTERRUPTED
        if self.setup_failed:
            return SETUP
        if "FAIL" in results:
            return FAILED
        if "TIMEOUT" in results:
            return TIMED_OUT
        if any(r.result.startswith("REFUSED") and r.stage not in OPTIONAL for r in self.rows):
            return OVER_BUDGET
        return PASSED

    def report(self) -> int:
        if self.interrupted:  # the process Ctrl-C ended has no rows yet, nor the stages after it
            for p in self.processes:
                if not any(r.stage in stages_of(p.kind, p.name) for r in self.rows):
                    self.rows += rows_of(p, self.out)
            done = {r.stage for r in self.rows}
            self.rows += [Row(stage, "not run (interrupted)") for stage in ALL_ROWS if stage not in done and not self.args.debug]
        code = self.status()
        order = {row: i for i, row in enumerate(ALL_ROWS)}
        rows = sorted(self.rows, key=lambda r: order.get(r.stage, len(order)))
        for r in rows:
            proc = next((p for p in self.processes if r.stage in stages_of(p.kind, p.name)), None)
            r.estimate = proc.estimate if proc else None
        info = next((fields(t) for p in self.processes for t in p.texts() if t.startswith("run_info")), {})
        mode = f"--debug {self.args.debug}" if self.args.debug else ("--dry-run" if self.args.dry_run else "default model")
        title = (f"gpu_acceptance {mode}: {info.get('hardware', '?')}, torch {info.get('torch', '?')}, "
                 f"{self.elapsed():.0f} s of the {self.args.budget_seconds:.0f} s budget; exit {code}; processes: "
                 + ", ".join(f"{p.name} {p.wall:.0f} s (estimate {p.estimate or 0:.0f})" for p in self.processes))
        header = ("stage", "result", "seconds", "attention", "peak memory (alloc / reserved)", "tokens/s per GPU", "detail")
        table = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
        for r in rows:
            cells = (r.stage, r.result, f"{r.seconds:.1f}" if r.seconds is not None else "-", r.attention, r.memory,
                     r.tokens_per_s, r.detail)
            table.append(f"| {' | '.join(c.replace('|', '/') for c in cells)} |")
        report = {
            "title": title, "exit_status": code, "run_info": info, "elapsed_s": self.elapsed(),
            "budget_seconds": self.args.budget_seconds, "kill_after": self.args.kill_after, "settings": self.settings,
            "data": {**self.data, **self.data_info},
            "estimates": {name: {"estimate": value, "basis": basis, "measured": self.measured.get(name)}
                          for name, (value, basis) in (DRY_ESTIMATES if self.args.dry_run else ESTIMATES).items()},
            "processes": [{"name": p.name, "run_id": p.run_id, "wall_s": p.wall, "estimate_s": p.estimate, "exit_code": p.exit_code,
                           "stopped": p.stopped, "env": p.env, "output": p.output_path} for p in self.processes],
            "rows": [asdict(r) for r in rows]}
        try:
            self.write_report(title, table, report)
        except OSError as exc:
            print(f"error: the report could not be written to {self.report_dir}: {exc}", file=sys.stderr, flush=True)
            code = code or SETUP
        print(f"\n{title}\n\n" + "\n".join(table), flush=True)
        return code

    def write_report(self, title: str, table: list[str], report: dict) -> None:
        """At most five files in --report-dir, each cut to REPORT_FILE_BYTES: the table, the JSON,
        every process's output, train_gpt.py's logs (the source left out) and the traces."""
        d, stem = self.report_dir, (f"debug_{self.args.debug}" if self.args.debug else "acceptance")
        d.mkdir(parents=True, exist_ok=True)
        legend = "\n".join(f"- exit {code}: {meaning}; to do: {todo}" for code, (meaning, todo) in EXIT_MEANINGS.items() if code)
        bounded_write(d / f"{stem}.md", f"{title}\n\n" + "\n".join(table) + f"\n\ntrain_gpt.py's exit statuses:\n{legend}\n")
        text = json.dumps(report, indent=1)
        bounded_write(d / f"{stem}.json", text if len(text) <= REPORT_FILE_BYTES else json.dumps({**report, "processes": "cut"}))
        if self.args.json:
            self.args.json.write_text(text)
        outputs, logs, traces = [], [], []
        for p in self.processes:
            outputs.append(f"===== {p.name} ({p.run_id}): {exit_text(p)} =====\n" + "\n".join(p.texts()))
            traces += [json.dumps({"process": p.name, **e}) for e in p.trace]
        for log in sorted((self.out / "logs").glob(f"*_{self.stamp}.txt")):
            body = log.read_text(encoding="utf-8", errors="replace").split("=" * 100 + "\n", 1)[-1]
            logs.append(f"===== {log.name} (source left out: see its `script` line) =====\n{body}")
        bounded_write(d / f"{stem}_output.txt", "\n".join(outputs) + "\n")
        bounded_write(d / f"{stem}_logs.txt", "\n".join(logs) + "\n")
        bounded_write(d / f"{stem}_traces.jsonl", "\n".join(traces) + "\n")


REPORT_FILE_BYTES = 8 << 20  # a lent machine returns files up to 16 MiB: half of that, to be safe


def bounded_write(path: Path, text: str) -> None:
    """Write `text`, keeping its head and tail when it is over REPORT_FILE_BYTES."""
    data = text.encode("utf-8", errors="replace")
    if len(data) > REPORT_FILE_BYTES:
        keep = REPORT_FILE_BYTES // 2 - 200
        data = data[:keep] + f"\n\n[... {len(data) - 2 * keep:,} bytes cut by gpu_acceptance.py ...]\n\n".encode() + data[-keep:]
    path.write_bytes(data)


# ---- options ----

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one `error:` line (exit 2), not usage plus error."""

    def error(self, message: str):
        print(f"error: {message} (python3 tests/gpu_acceptance.py --help lists the options)", file=sys.stderr, flush=True)
        raise SystemExit(BAD_OPTION)


class PathProblem(Exception):
    """An output path that cannot be used: exit SETUP."""


def positive(kind=float, at_least: float = 0.0, strict: bool = True):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value) or (value <= at_least if strict else value < at_least):
            bound = f"greater than {at_least:g}" if strict else f"at least {at_least:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value
    parse.__name__ = kind.__name__
    return parse


def check_folder(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PathProblem(f"{option} {path} is a file, not a folder: name a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathProblem(f"{option} {path} cannot be created ({exc.strerror}): name a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PathProblem(f"{option} {path} is not writable: name a writable folder")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="gpu_acceptance.py", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU: the tiny model, COMPILE=1 (dynamo, eager backend)")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "gpu_acceptance", help="logs, traces, artifact, inductor cache")
    p.add_argument("--report-dir", type=Path, help="the table, JSON and logs: at most 5 files of at most 8 MiB (default --out/report)")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--budget-seconds", type=positive(), help="the whole run's wall time (default 420; dry run 1800)")
    p.add_argument("--kill-after", type=positive(), help="seconds after which a running process gets SIGTERM (default: budget - grace)")
    p.add_argument("--grace-seconds", type=positive(), default=10.0, help="SIGKILL this long after SIGTERM (default 10)")
    p.add_argument("--first-stage-seconds", type=positive(), help="the first stage's limit (default 120; dry run 600)")
    p.add_argument("--first-stage-only", action="store_true", help="stop after the first stage")
    p.add_argument("--debug", metavar="STAGE", choices=ALL_ROWS[1:], help="rerun one stage's process under CUDA_LAUNCH_BLOCKING=1")
    p.add_argument("--sanitizer", action="store_true", help="with --debug: under compute-sanitizer --tool memcheck")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="train_gpt.py settings for every process")
    p.add_argument("--env-stage", nargs=2, action="append", default=[], metavar=("STAGE", "KEY=VALUE"),
                   help="a setting for the process that runs STAGE (a stage, or first / main / compare)")
    p.add_argument("--inject-fault", metavar="STAGE", choices=ALL_ROWS[1:], help="end STAGE's process as it starts STAGE (tests the naming)")
    p.add_argument("--inject-hang", metavar="STAGE", choices=ALL_ROWS[1:], help="hang STAGE's process as it starts STAGE (tests the deadline)")
    p.add_argument("--iterations", type=positive(int, 2, strict=False), help="training steps of the main run (default 12; at least 2)")
    p.add_argument("--eager-steps", type=positive(int, 2, strict=False), default=4, help="the first stage's eager steps (default 4)")
    p.add_argument("--compiled-steps", type=positive(int), default=3, help="the first stage's compiled steps (default 3)")
    p.add_argument("--val-tokens", type=positive(int, 2, strict=False), help="tokens of the validation subset (default 65,536; dry run 3,000)")
    p.add_argument("--ttt-doc-tokens", type=positive(int, 2, strict=False), help="each subset document cut to this (default 512; dry run 48)")
    p.add_argument("--compare-kernel", help="run the comparison: ATTENTION_KERNEL for a short second training run (e.g. flex)")
    p.add_argument("--compare-iterations", type=positive(int, 2, strict=False), help="training steps of the comparison run (default 16)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; dry run eager)")
    p.add_argument("--vocab", type=positive(int, 2, strict=False), default=8192)
    p.add_argument("--data-path", help="DATA_PATH (default: FineWeb if present, else the carried acceptance set)")
    p.add_argument("--tokenizer-path", help="TOKENIZER_PATH, with --data-path")
    args = p.parse_args(argv)
    if args.data_path and not args.tokenizer_path:
        p.error("--data-path needs --tokenizer-path")
    if args.sanitizer and not args.debug:
        p.error("--sanitizer goes with --debug STAGE (memcheck slows a whole run far past any budget)")
    if args.first_stage_only and args.debug:
        p.error("--first-stage-only and --debug STAGE do not go together: --debug check reruns the first stage")
    for item in args.env + [item for _, item in args.env_stage]:
        if "=" not in item or not item.partition("=")[0]:
            p.error(f"settings take KEY=VALUE, got {item!r}")
    for stage, _ in args.env_stage:
        if stage not in PROCESS_OF:
            p.error(f"--env-stage {stage}: not a stage or process ({', '.join(PROCESS_OF)})")
    dry = args.dry_run
    args.budget_seconds = args.budget_seconds or (1800.0 if dry else 420.0)
    args.kill_after = args.kill_after or max(args.budget_seconds - args.grace_seconds, 1.0)
    args.first_stage_seconds = args.first_stage_seconds or (600.0 if dry else 120.0)
    args.iterations = args.iterations or 12
    args.val_tokens = args.val_tokens or (3000 if dry else 65536)
    args.ttt_doc_tokens = args.ttt_doc_tokens or (48 if dry else 512)
    args.compare_iterations = args.compare_iterations or (8 if dry else 16)
    args.compile_backend = args.compile_backend or ("eager" if dry else "inductor")
    if dry and not args.data_path:
        args.vocab = 512
    check_folder("--out", args.out)
    if args.report_dir is not None:
        check_folder("--report-dir", args.report_dir)
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        raise PathProblem(f"--json {args.json}: {'a folder' if args.json.is_dir() else 'its folder does not exist'}; name a file "
                          f"in an existing folder")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    if argv[:1] == ["--child-recompress"]:
        return recompress_child(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2), already printed
        return int(exc.code or 0)
    except PathProblem as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return SETUP
    run = Acceptance(args)
    try:
        run.run_debug(args.debug) if args.debug else run.run_all()
        run.finish_background()
    except KeyboardInterrupt:
        run.interrupted = True
        for child_proc in list(LIVE):  # a background check runs on in its own session otherwise
            stop(child_proc, args.grace_seconds, signal.SIGINT)
        print("[gpu_acceptance] interrupted: the children were stopped; the report holds what ran", flush=True)
    return run.report()


if __name__ == "__main__":
    sys.exit(main())
