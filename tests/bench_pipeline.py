"""Benchmark the whole train_gpt.py pipeline on one machine and print one table.

    python3 tests/bench_pipeline.py                         # default model, 180 s of training
    python3 tests/bench_pipeline.py --preset tiny --seconds 20 --val-tokens 20000
    python3 tests/bench_pipeline.py --nproc 2 --env TTT_EPOCHS=1 --json out.json

It runs train_gpt.py (through torchrun when --nproc > 1) for a fixed wall-clock on the chosen
data, then reads the log-line contract: step time, tokens/s per device before and after the
loop switches on, peak memory, compile warm-up, time from launch to the first step, GPTQ
calibration + quantisation time, artifact bytes, and the time of each evaluation stage over
VAL_TOKENS_LIMIT validation tokens. With no DATA_PATH given and no FineWeb shards present it
builds a dataset from the standard library with data/make_local_dataset.py, so it runs on a
bare GPU machine with nothing but this repository.

Projections to 8 devices (stated, not measured): training tokens/s = per-device tokens/s x 8
(Parallel Muon's communication assumed hidden); an evaluation stage over the full split =
measured seconds x (full split tokens / scored tokens) x nproc / 8 (windows split evenly over
ranks). The full split size is counted from the val shards of the data used.
Not collected by pytest (the name does not start with test_); tests/test_bench.py runs it tiny.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {
    # The script's own defaults: 11 x 512, SP8192, loops 3-5 twice from 35% of training.
    "default": {},
    # Seconds per step on a laptop CPU; what tests/test_bench.py uses.
    "tiny": {"NUM_LAYERS": "4", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "MLP_MULT": "2",
             "ROPE_DIMS": "8", "LOOP_START": "1", "LOOP_END": "2", "NUM_LOOPS": "1", "PARALLEL_RESIDUAL_START": "3",
             "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "1024", "MICRO_BATCH_SEQS": "16", "PROGRESSIVE_CONTEXT": "",
             "WARMUP_STEPS": "2",
             "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "32", "EVAL_BATCH_SEQS": "8", "TTT_CHUNK_TOKENS": "1024",
             "TTT_BATCH_SEQS": "4", "GPTQ_CALIB_BATCHES": "1", "GPTQ_RESERVE_SECONDS": "1", "TTT_DOC_BATCH": "2",
             "TTT_DOC_CHUNK_TOKENS": "16", "TTT_LORA_RANK": "4", "PHASED_TTT_PREFIX_DOCS": "2", "PHASED_TTT_PHASES": "1",
             "COMPILE": "0"},
}


def count_val_tokens(data_path: Path) -> int:
    total = 0
    for shard in sorted(data_path.glob("fineweb_val_[0-9]*.bin")):  # not the byte sidecars
        total += int(np.fromfile(shard, dtype="<i4", count=3)[2])
    return total


def ensure_data(args) -> dict[str, str]:
    """DATA_PATH / TOKENIZER_PATH / VOCAB_SIZE to use: given, FineWeb if present, else built."""
    if args.data_path:
        return {"DATA_PATH": args.data_path, "TOKENIZER_PATH": args.tokenizer_path, "VOCAB_SIZE": str(args.vocab)}
    fineweb = ROOT / "data" / "datasets" / f"fineweb10B_sp{args.vocab}"
    if any(fineweb.glob("fineweb_val_*.bin")):
        return {"DATA_PATH": str(fineweb), "TOKENIZER_PATH": str(ROOT / "data" / "tokenizers" / f"fineweb_{args.vocab}_bpe.model"),
                "VOCAB_SIZE": str(args.vocab)}
    local = ROOT / "data" / "datasets" / f"local_sp{args.vocab}"
    tokenizer = ROOT / "data" / "tokenizers" / f"local_{args.vocab}_bpe.model"
    if not (any(local.glob("fineweb_val_*.bin")) and tokenizer.is_file()):
        print(f"no FineWeb sp{args.vocab} data: building {local} from the standard library", flush=True)
        subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--vocab-size", str(args.vocab)],
                       cwd=ROOT, check=True)
    return {"DATA_PATH": str(local), "TOKENIZER_PATH": str(tokenizer), "VOCAB_SIZE": str(args.vocab)}


def run_pipeline(env: dict[str, str], nproc: int, workdir: Path, timeout: float) -> tuple[str, float | None, float]:
    """Run the script, echoing its output; returns (log text, seconds to step 1, total seconds)."""
    script = ROOT / "train_gpt.py"
    cmd = [sys.executable, str(script)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full_env.update(env)
    t0 = time.perf_counter()
    first_step = None
    proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        print(line, end="", flush=True)
        if first_step is None and line.startswith("step:1/"):
            first_step = time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"the run took longer than --timeout {timeout:.0f}s")
    if proc.wait() != 0:
        raise SystemExit(f"train_gpt.py exited with {proc.returncode}; see its output above")
    log = (workdir / "logs" / f"{env['RUN_ID']}.txt").read_text(encoding="utf-8")
    return log.split("=" * 100 + "\n", 1)[1], first_step, time.perf_counter() - t0


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+):(\S+)", line))


def ms(value: str) -> float:
    return float(value.removesuffix("ms"))


def stretch_rates(lines: list[str]) -> list[tuple[int, bool, float, int, int]]:
    """(row length, looped, ms per step, first step, last step) of each stretch of training
    between two switches (context_switch, looping_enabled), timed from the second step after
    its switch (the first pays for the switch) to its last step line."""
    setup = next((fields(l) for l in lines if l.startswith("train_setup")), {})
    if "row_lens" not in setup:
        return []
    switches = [(0, int(setup["row_lens"].split(",")[0]), False)]  # (step, row length, looped) from that step on
    steps = []
    for line in lines:
        if line.startswith(("context_switch", "looping_enabled")):
            f, (_, length, looped) = fields(line), switches[-1]
            switches.append((int(f["step"]), int(f.get("seq_len", length)), looped or line.startswith("looping_enabled")))
        elif line.startswith("step:") and "train_loss:" in line:
            f = fields(line)
            steps.append((int(f["step"].split("/")[0]), ms(f["train_time"])))
    stretches = []
    for i, (start, length, looped) in enumerate(switches):
        end = switches[i + 1][0] if i + 1 < len(switches) else math.inf
        timed = [(n, t) for n, t in steps if start + 2 <= n <= end]
        if len(timed) >= 2 and timed[-1][0] > timed[0][0]:
            (n0, t0), (n1, t1) = timed[0], timed[-1]
            stretches.append((length, looped, (t1 - t0) / (n1 - n0), n0, n1))
    return stretches


def summarize(log: str, nproc: int, val_tokens: int, full_val_tokens: int, first_step: float | None, total_s: float) -> list[tuple[str, str]]:
    lines = log.splitlines()
    steps = [fields(l) for l in lines if l.startswith("step:") and "train_loss:" in l]
    loop_at = next((int(fields(l)["step"]) for l in lines if l.startswith("looping_enabled")), None)
    rows: list[tuple[str, str]] = []

    def find(prefix: str) -> dict[str, str]:
        return next((fields(l) for l in lines if l.startswith(prefix)), {})

    tokens_per_step = int(find("train_setup").get("tokens_per_step", 0))

    def rate(selected: list[dict[str, str]]) -> tuple[float, float] | None:
        """(ms per step, tokens/s per device) between the first and last selected step lines."""
        if len(selected) < 2:
            return None
        s0, s1 = selected[0], selected[-1]
        n0, n1 = int(s0["step"].split("/")[0]), int(s1["step"].split("/")[0])
        dt = ms(s1["train_time"]) - ms(s0["train_time"])
        if n1 <= n0 or dt <= 0:
            return None
        step_ms = dt / (n1 - n0)
        return step_ms, tokens_per_step / (step_ms / 1000) / nproc

    def step_no(s: dict[str, str]) -> int:
        return int(s["step"].split("/")[0])

    before = [s for s in steps if step_no(s) >= 2 and (loop_at is None or step_no(s) <= loop_at)]
    after = [s for s in steps if loop_at is not None and step_no(s) > loop_at + 1]
    for label, selected in (("before looping", before), ("after looping", after)):
        measured = rate(selected)
        if measured:
            rows.append((f"step time, {label}", f"{measured[0]:.1f} ms"))
            rows.append((f"tokens/s per device, {label}", f"{measured[1]:,.0f}"))
            rows.append((f"projected tokens/s on 8 devices, {label}", f"{8 * measured[1]:,.0f}"))
    for length, looped, step_ms, n0, n1 in stretch_rates(lines):
        rows.append((f"step time, rows of {length}, {'looped' if looped else 'unlooped'} (steps {n0}-{n1})",
                     f"{step_ms:.1f} ms, {tokens_per_step / (step_ms / 1000) / nproc:,.0f} tokens/s per device"))
    if steps:
        rows.append(("training steps in the budget", f"{step_no(steps[-1])} (looping from step {loop_at})"))
    memory = find("peak_memory")
    if memory:
        rows.append(("peak memory allocated / reserved", f"{memory['allocated']} / {memory['reserved']}"))
    warm = next((l for l in lines if l.startswith("warmup_done")), "")
    if warm:
        rows.append(("compile warm-up (restored afterwards)", fields(warm)["time"]))
    if first_step is not None:
        rows.append(("launch to first timed step", f"{first_step:.1f} s"))
    wall = find("wallclock")
    if wall:
        rows.append(("GPTQ calibration + quantisation", wall["gptq_time"]))
    serialize = find("serialize")
    if serialize:
        rows.append((f"serialize + compress ({serialize['compressor']})", serialize["time"]))
    artifact = find("artifact ")
    if artifact:
        rows.append(("artifact bytes (code + model)", f"{int(artifact['total_bytes']):,} ({int(artifact['code_bytes']):,} + {int(artifact['model_bytes']):,})"))
    for stage in ("prequant", "roundtrip", "sliding", "ttt"):
        final = find(f"final_{stage} ")
        if not final:
            continue
        seconds = ms(final["eval_time"]) / 1000
        rows.append((f"{stage}: val_bpb / eval time over {val_tokens:,} tokens", f"{float(final['val_bpb']):.4f} / {seconds:.1f} s"))
        if full_val_tokens and stage != "prequant":
            projected = projected_seconds(seconds, val_tokens, full_val_tokens, nproc)
            rows.append((f"{stage}: projected eval time, {full_val_tokens:,} tokens on 8 devices", f"{projected:.0f} s"))
    rows.append(("whole run, launch to exit", f"{total_s:.0f} s"))
    return rows


def projected_seconds(seconds: float, scored: int, full: int, nproc: int) -> float:
    """Eval time of the whole split on 8 devices, assuming time grows with scored tokens (for
    per-document TTT: the prefix's documents are as long as the split's) and splits evenly."""
    return seconds * full / scored * nproc / 8


def other_ttt_modes(env: dict[str, str], log: str, args, scored: int, full: int) -> list[tuple[str, str]]:
    """Re-score the run's artifact (EVAL_ONLY) with every other TTT_MODE in --ttt-modes."""
    ran = re.search(r"^hparam TTT_MODE=(\w+)$", log, re.M)[1]
    rows = []
    for mode in args.ttt_modes:
        if mode == ran:
            continue
        mode_env = {**env, "EVAL_ONLY": "1", "TTT_MODE": mode, "SLIDING_ENABLED": "0", "RUN_ID": f"{env['RUN_ID']}_{mode}"}
        log, _, _ = run_pipeline(mode_env, args.nproc, args.workdir, args.timeout)
        final = fields(next(l for l in log.splitlines() if l.startswith("final_ttt ")))
        seconds = ms(final["eval_time"]) / 1000
        rows.append((f"ttt ({mode}): val_bpb / eval time over {scored:,} tokens", f"{float(final['val_bpb']):.4f} / {seconds:.1f} s"))
        rows.append((f"ttt ({mode}): projected eval time, {full:,} tokens on 8 devices",
                     f"{projected_seconds(seconds, scored, full, args.nproc):.0f} s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--nproc", type=int, default=1, help="processes (devices); >1 runs torchrun")
    p.add_argument("--seconds", type=float, default=180.0, help="training wall-clock (MAX_WALLCLOCK_SECONDS)")
    p.add_argument("--val-tokens", type=int, default=2_000_000, help="validation tokens scored (VAL_TOKENS_LIMIT)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--data-path", help="DATA_PATH (default: FineWeb if present, else a stdlib build)")
    p.add_argument("--tokenizer-path", help="TOKENIZER_PATH, with --data-path")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="extra train_gpt.py settings")
    p.add_argument("--workdir", type=Path, default=ROOT, help="where logs/ and the artifact go")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path, help="also write the table here")
    p.add_argument("--ttt-modes", nargs="*", default=["chunked", "docs", "phased"],
                   help="TTT modes to time: the run's own, then an EVAL_ONLY re-score of its artifact for each other")
    args = p.parse_args(argv)
    if args.data_path and not args.tokenizer_path:
        p.error("--data-path needs --tokenizer-path")
    data = ensure_data(args)
    run_id = f"bench_{args.preset}_{time.strftime('%Y%m%d_%H%M%S')}"
    env = {**PRESETS[args.preset], **data, "RUN_ID": run_id, "MAX_WALLCLOCK_SECONDS": str(args.seconds),
           "VAL_TOKENS_LIMIT": str(args.val_tokens), "TRAIN_LOG_EVERY": "10", "SLIDING_ENABLED": "1",
           "ARTIFACT_PATH": str(args.workdir / "logs" / f"{run_id}.ptz"), "CHECKPOINT_PATH": ""}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)
    log, first_step, total_s = run_pipeline(env, args.nproc, args.workdir, args.timeout)
    full = count_val_tokens(Path(data["DATA_PATH"]))
    scored = min(args.val_tokens, full) if args.val_tokens else full
    rows = summarize(log, args.nproc, scored, full, first_step, total_s)
    rows += other_ttt_modes(env, log, args, scored, full)
    device = fields(next(l for l in log.splitlines() if l.startswith("run_info")))
    print(f"\n| {args.preset} preset, {device.get('hardware')}, torch {device.get('torch')}, "
          f"{Path(data['DATA_PATH']).name}, {args.seconds:.0f} s budget | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        args.json.write_text(json.dumps({"run_id": run_id, "env": env, "rows": rows, "run_info": device}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
