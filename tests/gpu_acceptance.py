"""Take one GPU through every stage of the default model in one call and print one table.

    python3 tests/gpu_acceptance.py                          # the GPU box: 11 x 512, SP8192, at most ~8 minutes
    python3 tests/gpu_acceptance.py --debug gptq             # rerun one stage's process under CUDA_LAUNCH_BLOCKING=1
    python3 tests/gpu_acceptance.py --debug ttt_docs --sanitizer   # the same under compute-sanitizer --tool memcheck
    python3 tests/gpu_acceptance.py --dry-run                # the CPU: a tiny model, COMPILE=1, every stage (CI)

Each group of stages runs in its own process, so a device fault (a CUDA illegal memory access
loses the context) ends that process only, and the table names the stage it was in:

  main         one train_gpt.py run: startup (settings, attention kernel check, data), the compile
               warm-ups, ITERATIONS=60 steps with looping switched on at step 30, GPTQ calibration +
               quantisation, serialize + compress, pre-quantisation evaluation, the round-trip
               (artifact load + evaluation), sliding
  ttt_phased   EVAL_ONLY=1 on the main run's artifact with TTT_MODE=phased, then chunked, then docs,
  ttt_chunked  each on the first --val-tokens validation tokens (65,536), in document batches of half
  ttt_docs     the documents there, so phased runs one global phase between its two batches
  compare      when training ran a varlen kernel (fa3_varlen, torch_varlen): a short second run with
               ATTENTION_KERNEL=flex (16 steps, no TTT, no sliding, one calibration batch), ended once
               it logs peak_memory: flex's compile time and tokens/s beside the main run's

A stage passed when its line of the log-line contract appeared (warm-up: warmup_done; training
before looping: looping_enabled; after: peak_memory; GPTQ: quantize; compression: serialize;
round-trip: eval_model, then final_roundtrip; and so on: STEPS below). In a process that failed,
the part after the last such line is the one that failed: its row says which part, the last
contract line, the exit status, the `error:` line or exception and the function of train_gpt.py
it came from. The stages after it are "not run"; when the main run fails, no TTT process starts.

Per stage: wall seconds (from the end of the stage before), the attention kernel, the peak memory
(exact where the stage raised the peak or the counters were reset at its start, else "<=" a
bound), and for training tokens/s per GPU. Each process is `python3 tests/gpu_acceptance.py
--child ...`: it imports train_gpt.py and calls its main(), so the log is the script's own, and
writes a trace of the time and memory at every log line beside it (it resets the peak counters
at stage lines only after train_gpt.py has logged its own peak_memory).

Optional processes start only if they fit in what is left of --budget-seconds (480), estimated
from the processes before them (each TTT mode from phased's time; the comparison from the main
run's warm-up and step times); they run in the order chunked, docs, comparison, so the comparison
is the first to go, and a skipped one says so in the table. A process still running at
--kill-after (budget + 60 s) is killed and its stage marked TIMEOUT. All processes share one inductor
cache (TORCHINDUCTOR_CACHE_DIR under --out), so later ones, and a rerun after a fix, reuse what
earlier ones compiled. When brotli or zstandard do not import, the wheels in .whl/ (from
tests/prepare_gpu_carry.sh) are installed first with pip --no-index.

--dry-run runs the same processes on the CPU (bench_pipeline's tiny preset with three layers, a
tiny local dataset, COMPILE=1) through dynamo with its `eager` backend: every graph is traced
whole, warmed up and counted, but no code is generated (inductor's C++ compile takes minutes
on two cores). The comparison needs CUDA: a dry run skips it unless --compare-kernel is given.
tests/test_gpu_acceptance.py runs the dry run. The table is also written as JSON (--json,
default --out/acceptance.json). Exit status: 0 when no stage failed or timed out, else 1.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import glob
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import bench_pipeline as bp
from bench_pipeline import ROOT, fields, ms

THIS = Path(__file__).resolve()
TTT_MODES = ("phased", "chunked", "docs")  # the order they run in; phased is the submission's mode
VARLEN_KERNELS = ("fa3_varlen", "torch_varlen")
EXIT_MEANINGS = {0: "finished", 1: "an exception", 2: "a setting", 3: "an input file", 4: "training diverged", 5: "a stalled rank"}

# What a process logs, in order: (table row, what that part of the row does, the line that ends it).
STARTUP = [("settings check", "run_info"), ("attention kernel check", "attention_kernels"), ("tokenizer and data", "data ")]
STEPS = {
    "main": [*(("startup", what, line) for what, line in STARTUP),
             ("startup", "training-token check and model", "train_setup"),
             ("warmup", "compile warm-ups", "warmup_done"),
             ("train_unlooped", "training before looping", "looping_enabled"),
             ("train_looped", "training after looping", "peak_memory"),
             ("gptq", "GPTQ calibration + quantisation", "quantize method:"),
             ("serialize", "serialize + compress", "serialize compressor:"),
             ("prequant", "pre-quantisation evaluation", "final_prequant"),
             ("roundtrip", "artifact load", "eval_model"),
             ("roundtrip", "round-trip evaluation", "final_roundtrip"),
             ("sliding", "sliding evaluation", "final_sliding")],
    "ttt": [*(("ttt", what, line) for what, line in STARTUP),
            ("ttt", "artifact load", "eval_model"),
            ("ttt", "round-trip evaluation (before TTT)", "final_roundtrip"),
            ("ttt", "TTT compile warm-up", "ttt_warmup"),
            ("ttt", "TTT evaluation", "final_ttt")],
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
MAIN_ROWS = list(dict.fromkeys(row for row, _, _ in STEPS["main"]))
COMPARE_ROWS = list(dict.fromkeys(row for row, _, _ in STEPS["compare"]))
ALL_ROWS = ["setup", *MAIN_ROWS, *(f"ttt_{m}" for m in TTT_MODES), *COMPARE_ROWS]
# bench_pipeline's tiny preset with three layers (layer 1 run twice once looping starts): dynamo
# traces every graph of every process, and a fourth layer made the dry run a third slower.
DRY_RUN_MODEL = {**bp.PRESETS["tiny"], "NUM_LAYERS": "3", "LOOP_START": "1", "LOOP_END": "1", "PARALLEL_RESIDUAL_START": "2"}
PROCESS_OF = {**{row: "main" for row in MAIN_ROWS}, **{f"ttt_{m}": f"ttt_{m}" for m in TTT_MODES},
              **{row: "compare" for row in COMPARE_ROWS}, "main": "main", "compare": "compare"}


# ---- the child: train_gpt.main() with a trace of time and memory at every log line ----

class InjectedFault(Exception):
    """--inject-fault: raised where the stage starts, as a device fault would end the process."""


def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="gpu_acceptance.py --child")
    p.add_argument("--trace", required=True)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--reset-after", default="", help="reset the peak-memory counters at stage lines after this line")
    p.add_argument("--fault-after", help="raise InjectedFault after the first line starting with this ('' = at once)")
    a = p.parse_args(argv)
    if a.fault_after == "":
        raise InjectedFault("injected by gpu_acceptance.py --inject-fault before the first line")
    import resource

    import torch
    if a.backend != "inductor":
        torch.compile = functools.partial(torch.compile, backend=a.backend)
    sys.path.insert(0, str(ROOT))
    import train_gpt
    trace = open(a.trace, "a", encoding="utf-8")
    resetting = a.reset_after == ""

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
        nonlocal resetting
        original(self, line, console)
        if not self.is_main:
            return
        resetting = resetting or line.startswith(a.reset_after)
        record(line, reset=resetting and line.startswith(MARKERS))
        if a.fault_after and line.startswith(a.fault_after):
            raise InjectedFault(f"injected by gpu_acceptance.py --inject-fault after the line {line[:60]!r}")

    train_gpt.Runtime.log = log
    atexit.register(record, "<exit>")
    train_gpt.main()


# ---- running one process ----

@dataclass
class Process:
    name: str  # main, ttt_phased, ..., compare; eval and export under --debug
    kind: str  # a key of STEPS
    run_id: str
    env: dict[str, str]
    started: float = 0.0
    ended: float = 0.0
    exit_code: int | None = None
    stopped: str = ""  # why the harness ended it: "" (it exited), "planned", or the reason
    lines: list[tuple[float, str]] = field(default_factory=list)  # (time, stdout + stderr line)
    trace: list[dict] = field(default_factory=list)
    output_path: str = ""

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


def run_process(proc: Process, out: Path, args, deadline: float, stop_at: str | None = None) -> Process:
    """Run one child, echoing its output; ended at `stop_at`'s line (planned), at the deadline, or
    when a GPU run finds no GPU. Reads its trace afterwards."""
    trace_path = out / f"{proc.run_id}.trace.jsonl"
    cmd = [sys.executable, str(THIS), "--child", "--trace", str(trace_path), "--backend", args.compile_backend,
           "--reset-after", "peak_memory" if proc.kind in ("main", "compare") else ""]  # the others log no peak_memory
    if args.inject_fault in stages_of(proc.kind, proc.name):
        cmd += ["--fault-after", fault_line(proc.kind, args.inject_fault, proc.name)]
    sanitizer = find_sanitizer() if args.sanitizer else None
    if sanitizer:
        cmd = [sanitizer, "--tool", "memcheck", *cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"TORCHINDUCTOR_CACHE_DIR": str(out / "inductor_cache"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                "TORCHINDUCTOR_AUTOGRAD_CACHE": "1", "PYTHONUNBUFFERED": "1", **proc.env})
    if args.debug:
        env["CUDA_LAUNCH_BLOCKING"] = "1"
    if sanitizer:
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # else memcheck misses accesses inside cached blocks
    proc.output_path = str(out / f"{proc.run_id}.out")
    settings = " ".join(f"{k}={v}" for k, v in proc.env.items() if k not in ("DATA_PATH", "TOKENIZER_PATH"))
    print(f"[gpu_acceptance] {proc.name}: starting ({settings})", flush=True)
    lines: queue.Queue = queue.Queue()
    proc.started, stop_due = time.time(), 0.0
    child_proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace")

    def read() -> None:
        for line in child_proc.stdout:
            lines.put((time.time(), line.rstrip("\n")))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    with open(proc.output_path, "w", encoding="utf-8") as copy:
        while True:
            try:
                item = lines.get(timeout=1.0)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                proc.lines.append(item)
                print(item[1], flush=True)
                copy.write(item[1] + "\n")
                text = item[1]
                if not proc.stopped and stop_at and text.startswith(stop_at):
                    proc.stopped, stop_due = "planned", time.time() + 2  # time to write the line's trace entry
                if not proc.stopped and not args.dry_run and text.startswith("run_info") and "device:cpu" in text:
                    proc.stopped = "torch sees no CUDA device (run_info device:cpu); on a CPU machine use --dry-run"
                    stop(child_proc)
            if stop_due and time.time() > stop_due:
                stop_due = 0.0
                stop(child_proc)
            if not proc.stopped and time.time() > deadline:
                proc.stopped = f"killed at --kill-after {args.kill_after:.0f} s"
                stop(child_proc)
    proc.exit_code = child_proc.wait()
    proc.ended = time.time()
    if trace_path.is_file():
        proc.trace = [json.loads(line) for line in trace_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return proc


def stop(child_proc: subprocess.Popen) -> None:
    child_proc.terminate()
    try:
        child_proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        child_proc.kill()


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer") or sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    return found if isinstance(found, str) or not found else found[-1]


def steps_of(kind: str, process: str) -> list[tuple[str, str, str]]:
    """STEPS[kind] with the row names of this process (a TTT process's row is its name)."""
    return [(process if kind == "ttt" else row, what, line) for row, what, line in STEPS[kind]]


def stages_of(kind: str, process: str) -> list[str]:
    return list(dict.fromkeys(row for row, _, _ in steps_of(kind, process)))


def fault_line(kind: str, stage: str, process: str) -> str:
    """The line after which `stage` starts in a process of `kind` ('' = at once); a TTT process's
    TTT starts after its round-trip."""
    if kind == "ttt":
        return "final_roundtrip"
    steps = steps_of(kind, process)
    first = next((i for i, (row, _, _) in enumerate(steps) if row == stage), 0)
    return steps[first - 1][2] if first > 0 else ""


# ---- reading a process: one row per stage ----

@dataclass
class Row:
    stage: str
    result: str  # pass, FAIL, TIMEOUT (killed at --kill-after), not run (why), skipped: why
    seconds: float | None = None
    attention: str = "-"
    memory: str = "-"
    tokens_per_s: str = "-"
    detail: str = ""


def error_of(proc: Process) -> str:
    """The process's one-line error: its `error:` line, else the exception its last traceback ended
    with, else its last line; with where in train_gpt.py and compute-sanitizer's first finding."""
    texts = proc.texts()
    line = next((t for t in reversed(texts) if t.startswith("error:")), None)
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
    if proc.stopped and proc.stopped != "planned":
        return proc.stopped
    code = proc.exit_code
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit {code}: {EXIT_MEANINGS.get(code, 'unknown')}"


def kernels_of(proc: Process) -> dict[str, str]:
    kernels = proc.first("attention_kernels")
    if kernels:  # the check's result may hold spaces ("not needed")
        kernels["check"] = next(t for t in proc.texts() if t.startswith("attention_kernels")).partition(" check:")[2] or "-"
    else:  # a script from before the attention_kernels line
        attention = proc.first("run_info").get("attention", "-")
        kernels = {"train": attention, "eval": proc.first("eval_model").get("attention", attention), "check": "-"}
        kernels.update(calibration=kernels["eval"], documents=kernels["eval"])
    return kernels


def attention_for(row: str, kernels: dict[str, str]) -> str:
    def k(name: str) -> str:
        return kernels.get(name, "-")

    if row in ("warmup", "train_unlooped", "train_looped", "compare_warmup", "compare_train_unlooped", "compare_train_looped"):
        return k("train")
    if row == "startup":
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


def training_rate(proc: Process, looped: bool, tokens_per_step: int) -> tuple[float, float, int, int] | None:
    """(ms per step, tokens/s, first step, last step) between two step lines before (after) looping,
    as bench_pipeline measures: from step 2 to the switch, and from the step after the first looped one."""
    steps = [fields(t) for t in proc.texts() if t.startswith("step:") and "train_loss:" in t]
    loop_at = proc.first("looping_enabled").get("step")
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


def tokens_per_step(proc: Process) -> int:
    return int(proc.first("train_setup").get("tokens_per_step", 0))


def memory_text(entry: dict | None, before: dict | None) -> str:
    """Exact when the counters were reset at the stage's start or the stage raised the peak, else a bound."""
    if not entry or entry.get("alloc") is None:
        return "-"
    value = f"{entry['alloc']:,} / {entry['reserved']:,} MiB"
    exact = before is None or before.get("reset") or (before.get("alloc") or 0) < entry["alloc"]
    return value if exact else f"<= {value}"


def rows_of(proc: Process, out: Path) -> list[Row]:
    """The process's stages: passed up to its last contract line, then the failing one, then not run."""
    steps = steps_of(proc.kind, proc.name)
    texts = proc.texts()
    found = [next((i for i, t in enumerate(texts) if t.startswith(line)), None) for _, _, line in steps]
    last = max((i for i, at in enumerate(found) if at is not None), default=-1)
    failed_step = last + 1 if proc.failed else None
    if failed_step is not None and failed_step >= len(steps):
        failed_step = len(steps) - 1  # every line written, then the process failed: its last stage
    trace_at = {}
    for entry in proc.trace:
        if entry["line"].startswith(MARKERS):
            trace_at.setdefault(next(m for m in MARKERS if entry["line"].startswith(m)), entry)
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
            r.result = "TIMEOUT" if proc.stopped.startswith("killed at --kill-after") else "FAIL"
            r.seconds, r.memory = proc.ended - previous_end, memory_text(exit_entry, previous_entry)
            r.detail = f"failed in {what} (no `{line.strip()}` line; last contract line: `{after}`); {exit_text(proc)}"
            r.detail += "" if proc.stopped else f"; {error_of(proc)}"  # stopped by the harness: its reason says it all
            blocked = f"{row} failed"
        elif found[end] is None:
            r.result, r.attention = "not run", "-"
            r.detail = ("the process was stopped as planned" if proc.stopped == "planned" else
                        f"no `{steps[end][2].strip()}` line although the process ended normally (disabled by a setting?)")
        else:
            t_end = proc.lines[found[end]][0]
            entry = trace_at.get(steps[end][2])
            r.seconds, r.memory = t_end - previous_end, memory_text(entry, previous_entry)
            r.tokens_per_s, r.detail = describe(row, proc)
            previous_end, previous_entry = t_end, entry
        rows.append(r)
    return rows


def seconds(value: str | None) -> str:
    return f"{ms(value) / 1000:.1f} s" if value else "?"


def describe(row: str, proc: Process) -> tuple[str, str]:
    """(tokens/s per GPU, detail) of a stage that passed, from its contract lines."""
    texts = proc.texts()

    def new_graphs(stage: str) -> str:
        line = proc.first(f"compiled_graphs stage:{stage} ")
        return f"{line['new']} new graph{'' if line['new'] == '1' else 's'}" if line else "graphs not logged"

    if row == "startup":
        data, kernels = proc.first("data "), proc.first("attention_kernels")
        rejected = "".join(f"; {t}" for t in texts if t.startswith("attention_kernel_rejected"))
        return "-", f"{data.get('val_tokens', '?')} val tokens; " + (
            f"kernels train:{kernels.get('train')} eval:{kernels.get('eval')} documents:{kernels.get('documents')}"
            if kernels else "no attention_kernels line") + rejected
    if row in ("warmup", "compare_warmup"):
        compiles = [fields(t) for t in texts if t.startswith("compile_time ")]
        listed = ", ".join(f"{c.get('graph')} {seconds(c.get('time'))}" for c in compiles) or "no compile_time lines"
        warm = proc.first("warmup_done")
        return "-", f"warmup_done {seconds(warm.get('time'))} ({warm.get('steps', '?')} steps): {listed}; {new_graphs('warmup')}"
    if row in ("train_unlooped", "train_looped", "compare_train_unlooped", "compare_train_looped"):
        looped = row.endswith("_looped")  # not "_unlooped"
        rate = training_rate(proc, looped, tokens_per_step(proc))
        if rate is None:
            return "-", "too few step lines to time"
        # Progressive context: each row length's own step time inside this row's steps.
        stretches = [f"rows of {length} {step_ms:.1f} ms/step (steps {n0}-{n1})"
                     for length, is_looped, step_ms, n0, n1 in bp.stretch_rates(texts) if is_looped == looped]
        extra = "".join(f"; {s}" for s in stretches if len(stretches) > 1)
        extra += f"; {new_graphs('training')} while training" if row.endswith("train_looped") else ""
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
    stage_line = {"prequant": "final_prequant", "roundtrip": "final_roundtrip", "sliding": "final_sliding"}.get(row, "final_ttt")
    final = proc.first(stage_line + " ")
    detail = f"val_bpb {float(final.get('val_bpb', 'nan')):.4f}, eval_time {seconds(final.get('eval_time'))}"
    if row.startswith("ttt_"):
        warm, docs = proc.first("ttt_warmup"), proc.first("ttt_docs")
        detail += f"; warm-up {seconds(warm.get('time'))}; {new_graphs('ttt')} while scoring"
        if docs:
            detail += f"; {docs.get('documents')} documents in {docs.get('batches')} batches"
        if docs and row == "ttt_phased":
            ends = docs.get("phase_ends")
            detail += f", a global phase after batch {ends}" if ends != "-" else " (NO global phase ran: too few documents)"
    else:
        detail += f"; {new_graphs(row)}"
    return "-", detail


# ---- the acceptance run ----

def count_documents(data_path: str, tokens: int) -> int:
    """Documents (BOS tokens) in the first `tokens` validation tokens, as TTT will see them."""
    seen, docs = 0, 0
    for shard in sorted(Path(data_path).glob("fineweb_val_[0-9]*.bin")):  # not the byte sidecars
        n = int(np.fromfile(shard, dtype="<i4", count=3)[2])
        ids = np.memmap(shard, dtype="<u2", mode="r", offset=256 * 4, shape=(n,))[: max(tokens - seen, 0)]
        docs, seen = docs + int((ids == 1).sum()), seen + len(ids)
        if seen >= tokens:
            break
    return docs


CARRIED = ("brotli", "zstandard", "sentencepiece")  # the wheels tests/prepare_gpu_carry.sh downloads


def install_wheels(out: Path) -> str:
    """Make brotli, zstandard and sentencepiece importable: pip --no-index from .whl/, else the
    wheels unpacked into --out/site (put on PYTHONPATH for the children). Returns what was done."""
    missing = [m for m in CARRIED if importlib.util.find_spec(m) is None]
    if not missing:
        return f"{', '.join(CARRIED)} import"
    wheels = sorted(str(p) for p in (ROOT / ".whl").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"{', '.join(missing)} do not import and .whl/ holds no wheels: run tests/prepare_gpu_carry.sh "
                         f"on a networked machine and carry .whl/ over, or pip install {' '.join(missing)}")
    pip = [sys.executable, "-m", "pip", "install", "--no-index", *wheels]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0 and "externally-managed" in done.stdout + done.stderr:
        done = subprocess.run(pip + ["--break-system-packages"], capture_output=True, text=True)
    importlib.invalidate_caches()
    if done.returncode == 0 and all(importlib.util.find_spec(m) for m in missing):
        return f"installed {len(wheels)} wheels from .whl/ with pip --no-index"
    site = out / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    check = subprocess.run([sys.executable, "-c", f"import {', '.join(missing)}"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"pip could not install .whl/ ({(done.stderr or done.stdout).strip().splitlines()[-1:]}) and the "
                         f"unpacked wheels do not import either ({check.stderr.strip().splitlines()[-1:]}): wrong Python version?")
    return f"unpacked {len(wheels)} wheels from .whl/ into {site} (pip: {(done.stderr or done.stdout).strip().splitlines()[-1:]})"


def tiny_data(out: Path) -> dict[str, str]:
    root = out / "data"
    got = {"DATA_PATH": str(root / "datasets" / "tiny_sp512"), "TOKENIZER_PATH": str(root / "tokenizers" / "tiny_512_bpe.model"),
           "VOCAB_SIZE": "512"}
    if not Path(got["TOKENIZER_PATH"]).is_file():
        proc = subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--output-root", str(root),
                               "--vocab-size", "512", "--max-bytes", "3000000", "--val-docs", "20", "--name", "tiny"],
                              capture_output=True, text=True, check=True)
        got = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    return got


class Acceptance:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.stamp = time.strftime("%Y%m%d_%H%M%S")
        self.deadline = self.t0 + args.kill_after
        self.processes: list[Process] = []
        self.rows: list[Row] = []
        self.artifact = self.out / "model.ptz"
        self.checkpoint = self.out / "model.pt"

    def elapsed(self) -> float:
        return time.time() - self.t0

    def setup(self) -> None:
        t = time.time()
        args = self.args
        try:
            missing = [m for m in ("torch", "sentencepiece", "numpy") if importlib.util.find_spec(m) is None]
            if missing:
                raise SystemExit(f"{', '.join(missing)} do not import here: pip install {' '.join(missing)}")
            wheels = install_wheels(self.out)
            if args.data_path:  # absolute: the processes run in --out
                data = {"DATA_PATH": str(Path(args.data_path).resolve()), "TOKENIZER_PATH": str(Path(args.tokenizer_path).resolve()),
                        "VOCAB_SIZE": str(args.vocab)}
            else:
                data = tiny_data(self.out) if args.dry_run else bp.ensure_data(args)
            docs = count_documents(data["DATA_PATH"], args.val_tokens)
        except (SystemExit, subprocess.CalledProcessError, OSError) as exc:
            self.rows.append(Row("setup", "FAIL", time.time() - t, detail=str(exc)))
            return
        self.data = data
        # Half the scored documents per TTT batch (at most the default 64), and the phase after the
        # first batch: phased TTT runs one global phase between its two batches.
        batch = str(max(1, min(64, math.ceil(docs / 2))))
        self.ttt_env = {"TTT_DOC_BATCH": batch, "PHASED_TTT_PREFIX_DOCS": batch, "PHASED_TTT_PHASES": "1"}
        sanitizer = ""
        if args.sanitizer:
            sanitizer = f"; compute-sanitizer: {find_sanitizer() or 'NOT FOUND, running under CUDA_LAUNCH_BLOCKING=1 only'}"
        self.rows.append(Row("setup", "pass", time.time() - t, detail=f"{wheels}; data {Path(data['DATA_PATH']).name}, "
                             f"{docs} documents in the first {args.val_tokens:,} val tokens{sanitizer}"))

    def base_env(self) -> dict[str, str]:
        args = self.args
        env = {**(DRY_RUN_MODEL if args.dry_run else {}), "COMPILE": "1", **self.data,
               "ITERATIONS": str(args.iterations), "MAX_WALLCLOCK_SECONDS": "0", "ENABLE_LOOPING_AT": "0.5",
               "WARMUP_STEPS": "2", "TRAIN_LOG_EVERY": "1" if args.dry_run else "5", "VAL_TOKENS_LIMIT": str(args.val_tokens)}
        if args.dry_run:
            env.update({"TTT_EPOCHS": "1", "TTT_DOC_CHUNK_TOKENS": "32", "GLOBAL_TTT_CHUNK_TOKENS": "1024"})
        return env

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

    def launch(self, name: str, kind: str, extra: dict[str, str], stop_at: str | None = None) -> Process:
        run_id = f"{name}_{self.stamp}"
        proc = Process(name, kind, run_id, {"RUN_ID": run_id, **self.env_for(name, extra, kind)})
        run_process(proc, self.out, self.args, self.deadline, stop_at)
        self.processes.append(proc)
        print(f"[gpu_acceptance] {name}: {proc.wall:.1f} s, {exit_text(proc) if proc.stopped != 'planned' else 'stopped as planned'} "
              f"({self.elapsed():.0f} s of the {self.args.budget_seconds:.0f} s budget used)", flush=True)
        return proc

    def main_env(self) -> dict[str, str]:
        return {"TTT_ENABLED": "0", "SLIDING_ENABLED": "1", "ARTIFACT_PATH": str(self.artifact),
                "CHECKPOINT_PATH": str(self.checkpoint)}

    def ttt_env_for(self, mode: str) -> dict[str, str]:
        return {"EVAL_ONLY": "1", "ARTIFACT_PATH": str(self.artifact), "TTT_ENABLED": "1", "TTT_MODE": mode,
                "SLIDING_ENABLED": "0", **self.ttt_env}

    def compare_env(self) -> dict[str, str]:
        return {"ATTENTION_KERNEL": self.args.compare_kernel or "sdpa", "ITERATIONS": str(self.args.compare_iterations),
                "TTT_ENABLED": "0", "SLIDING_ENABLED": "0", "GPTQ_CALIB_BATCHES": "1",
                "ARTIFACT_PATH": str(self.out / "compare.ptz"), "CHECKPOINT_PATH": ""}

    def skip(self, rows: list[str], why: str) -> None:
        self.rows.extend(Row(r, f"skipped: {why}") for r in rows)

    def fits(self, estimate: float) -> str | None:
        """None when `estimate` seconds fit in the budget, else why not."""
        left = self.args.budget_seconds - self.elapsed()
        return None if estimate <= left else f"needs ~{estimate:.0f} s, {max(left, 0):.0f} s of --budget-seconds left"

    def run_all(self) -> None:
        self.setup()
        if self.rows[-1].result != "pass":
            self.skip(ALL_ROWS[1:], "setup failed")
            return
        main = self.launch("main", "main", self.main_env())
        self.rows += rows_of(main, self.out)
        if main.failed or not self.artifact.is_file():
            failed = next((r.stage for r in self.rows if r.result in ("FAIL", "TIMEOUT")), "?")
            reason = f"the main run failed at {failed}: no artifact"
            self.rows += [Row(f"ttt_{m}", f"not run ({reason})") for m in TTT_MODES]
            self.rows += [Row(r, f"not run ({reason})") for r in COMPARE_ROWS]
            return
        ttt_wall = 0.0
        for mode in TTT_MODES:
            why = self.fits(ttt_wall) if mode != "phased" else None
            if why:
                self.skip([f"ttt_{mode}"], why)
                continue
            proc = self.launch(f"ttt_{mode}", "ttt", self.ttt_env_for(mode))
            self.rows += rows_of(proc, self.out)
            ttt_wall = max(ttt_wall, proc.wall) if mode == "phased" else ttt_wall
        self.compare(main)

    def compare(self, main: Process) -> None:
        train = kernels_of(main).get("train", "-")
        if self.args.dry_run and not self.args.compare_kernel:
            self.skip(COMPARE_ROWS, "dry run: flex needs CUDA (--compare-kernel sdpa runs this path on the CPU)")
            return
        if not self.args.dry_run and train not in VARLEN_KERNELS:
            self.skip(COMPARE_ROWS, f"training ran {train}, not a varlen kernel: nothing to compare {self.args.compare_kernel} with")
            return
        if "attention_kernels" not in " ".join(main.texts()):
            self.skip(COMPARE_ROWS, "this train_gpt.py has no ATTENTION_KERNEL setting (no attention_kernels line)")
            return
        rows = {r.stage: r for r in self.rows}
        warm = (rows["startup"].seconds or 0) + (rows["warmup"].seconds or 0)
        step_s = max((rows[r].seconds or 0) / max(self.args.iterations / 2, 1) for r in ("train_unlooped", "train_looped"))
        why = self.fits(warm + self.args.compare_iterations * step_s)
        if why:
            self.skip(COMPARE_ROWS, why)
            return
        proc = self.launch("compare", "compare", self.compare_env(), stop_at="peak_memory")
        compare_rows = rows_of(proc, self.out)
        for r in compare_rows:
            base = rows.get(r.stage.removeprefix("compare_"))
            if r.result == "pass" and base and base.tokens_per_s != "-" and r.tokens_per_s != "-":
                ratio = float(r.tokens_per_s.replace(",", "")) / float(base.tokens_per_s.replace(",", ""))
                r.detail += f"; {ratio:.2f}x the main run's {base.attention} ({base.tokens_per_s} tokens/s)"
            elif r.result == "pass" and r.stage == "compare_warmup":
                r.detail += f"; the main run's warm-up: {rows['warmup'].seconds:.1f} s with {rows['warmup'].attention}"
        self.rows += compare_rows

    def run_debug(self, stage: str) -> None:
        """One stage's process again (CUDA_LAUNCH_BLOCKING=1, maybe compute-sanitizer), as small as it can be:
        TTT on the artifact; round-trip and sliding on the artifact; GPTQ, serialize and prequant from the
        checkpoint; anything else the main run, stopped once the stage's line appears."""
        self.setup()
        if self.rows[-1].result != "pass":
            return
        process = PROCESS_OF[stage]
        if process.startswith("ttt_"):
            if not self.artifact.is_file():
                raise SystemExit(f"--debug {stage} needs {self.artifact}: run the whole acceptance (same --out) first")
            proc = self.launch(process, "ttt", self.ttt_env_for(process.removeprefix("ttt_")))
        elif process == "compare":
            proc = self.launch("compare", "compare", self.compare_env(), stop_at="peak_memory")
        elif stage in ("roundtrip", "sliding") and self.artifact.is_file():
            proc = self.launch("eval", "eval", {"EVAL_ONLY": "1", "ARTIFACT_PATH": str(self.artifact), "TTT_ENABLED": "0",
                                                "SLIDING_ENABLED": "1"})
        elif stage in ("gptq", "serialize", "prequant") and self.checkpoint.is_file():
            proc = self.launch("export", "export", {"EXPORT_ONLY": str(self.checkpoint), "TTT_ENABLED": "0", "SLIDING_ENABLED": "0",
                                                    "ARTIFACT_PATH": str(self.out / "debug_model.ptz")})
        else:
            ends = [line for row, _, line in STEPS["main"] if row == stage]
            proc = self.launch("main", "main", {**self.main_env(), "ARTIFACT_PATH": str(self.out / "debug_model.ptz"),
                                                "CHECKPOINT_PATH": ""}, stop_at=ends[-1])
        self.rows += rows_of(proc, self.out)
        print("\n[gpu_acceptance] the last lines of its output:\n" + "\n".join(proc.texts()[-30:]), flush=True)

    def report(self) -> int:
        info = next((fields(t) for p in self.processes for t in p.texts() if t.startswith("run_info")), {})
        mode = f"--debug {self.args.debug}" if self.args.debug else ("--dry-run" if self.args.dry_run else "default model")
        title = (f"gpu_acceptance {mode}: {info.get('hardware', '?')}, torch {info.get('torch', '?')}, "
                 f"{self.elapsed():.0f} s of the {self.args.budget_seconds:.0f} s budget; processes: "
                 + ", ".join(f"{p.name} {p.wall:.0f} s" for p in self.processes))
        header = ("stage", "result", "seconds", "attention", "peak memory (alloc / reserved)", "tokens/s per GPU", "detail")
        print(f"\n{title}\n\n| {' | '.join(header)} |\n|{'---|' * len(header)}")
        for r in self.rows:
            cells = (r.stage, r.result, f"{r.seconds:.1f}" if r.seconds is not None else "-", r.attention, r.memory,
                     r.tokens_per_s, r.detail.replace("|", "/"))
            print(f"| {' | '.join(cells)} |")
        json_path = self.args.json or self.out / (f"debug_{self.args.debug}.json" if self.args.debug else "acceptance.json")
        json_path.write_text(json.dumps({
            "title": title, "run_info": info, "elapsed_s": self.elapsed(), "budget_seconds": self.args.budget_seconds,
            "processes": [{"name": p.name, "run_id": p.run_id, "wall_s": p.wall, "exit_code": p.exit_code, "stopped": p.stopped,
                           "env": p.env, "output": p.output_path, "log": str(self.out / "logs" / f"{p.run_id}.txt")}
                          for p in self.processes],
            "rows": [asdict(r) for r in self.rows]}, indent=1))
        return 1 if any(r.result in ("FAIL", "TIMEOUT") for r in self.rows) else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU: the tiny model, COMPILE=1 (dynamo, eager backend)")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "gpu_acceptance", help="logs, traces, artifact, inductor cache")
    p.add_argument("--json", type=Path, help="where the table goes as JSON (default: --out/acceptance.json)")
    p.add_argument("--budget-seconds", type=float, default=480.0, help="optional processes start only if they fit in it")
    p.add_argument("--kill-after", type=float, help="seconds after which a running process is killed (default: budget + 60)")
    p.add_argument("--debug", metavar="STAGE", choices=ALL_ROWS[1:], help="rerun one stage's process under CUDA_LAUNCH_BLOCKING=1")
    p.add_argument("--sanitizer", action="store_true", help="with --debug: under compute-sanitizer --tool memcheck")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="train_gpt.py settings for every process")
    p.add_argument("--env-stage", nargs=2, action="append", default=[], metavar=("STAGE", "KEY=VALUE"),
                   help="a setting for the process that runs STAGE (a stage, or main / compare)")
    p.add_argument("--inject-fault", metavar="STAGE", choices=ALL_ROWS[1:], help="end STAGE's process as it starts STAGE (tests the naming)")
    p.add_argument("--iterations", type=int, help="training steps of the main run (default 60; dry run 12)")
    p.add_argument("--val-tokens", type=int, help="validation tokens every evaluation scores (default 65,536; dry run 3,000)")
    p.add_argument("--compare-kernel", help="ATTENTION_KERNEL of the comparison run (default flex; a dry run skips it unless given)")
    p.add_argument("--compare-iterations", type=int, help="training steps of the comparison run (default 16; dry run 8)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; dry run eager)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--data-path", help="DATA_PATH (default: FineWeb if present, else the local SP8192 set, built if missing)")
    p.add_argument("--tokenizer-path", help="TOKENIZER_PATH, with --data-path")
    args = p.parse_args(argv)
    if args.data_path and not args.tokenizer_path:
        p.error("--data-path needs --tokenizer-path")
    if args.sanitizer and not args.debug:
        p.error("--sanitizer goes with --debug STAGE (memcheck slows a whole run far past any budget)")
    for item in args.env + [item for _, item in args.env_stage]:
        if "=" not in item:
            p.error(f"settings take KEY=VALUE, got {item!r}")
    for stage, _ in args.env_stage:
        if stage not in PROCESS_OF:
            p.error(f"--env-stage {stage}: not a stage or process ({', '.join(PROCESS_OF)})")
    dry = args.dry_run
    args.iterations = args.iterations or (12 if dry else 60)
    args.val_tokens = args.val_tokens or (3000 if dry else 65536)
    args.compare_kernel = args.compare_kernel or ("" if dry else "flex")
    args.compare_iterations = args.compare_iterations or (8 if dry else 16)
    args.compile_backend = args.compile_backend or ("eager" if dry else "inductor")
    args.kill_after = args.kill_after or args.budget_seconds + 60
    if dry and not args.data_path:
        args.vocab = 512
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    args = parse_args(argv)
    run = Acceptance(args)
    try:
        run.run_debug(args.debug) if args.debug else run.run_all()
    except SystemExit as exc:
        run.rows.append(Row(args.debug or "setup", "FAIL", detail=str(exc)))
    return run.report()


if __name__ == "__main__":
    sys.exit(main())
