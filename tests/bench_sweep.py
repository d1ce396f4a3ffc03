"""Run train_gpt.py over named variants x seeds and tabulate the final_* lines.

    python3 tests/bench_sweep.py --base PRESET=cpu ITERATIONS=150 MAX_WALLCLOCK_SECONDS=0 \
        --variant baseline NUM_LOOPS=0 PASS_LORA_RANK=0 PASS_EMBED=0 \
        --variant loops PASS_LORA_RANK=0 PASS_EMBED=0 --seeds 1 2 3 --stages prequant

One tool for the README's ablations: training variants (equal steps), export variants
(EXPORT_ONLY=checkpoint with other QUANT_METHOD / MATRIX_BITS / clip settings) and evaluation
variants (EVAL_ONLY=1 with other TTT settings). Prints mean +- sample std of each stage's
val_bpb and its mean evaluation time, plus artifact bytes and the mean training step time.
Setting values may name the run's seed as {seed} (CHECKPOINT_PATH=/tmp/ckpt_{seed}.pt);
--script runs another copy of train_gpt.py (e.g. one frozen with git show). Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def run_once(env: dict[str, str], workdir: Path, script: Path) -> tuple[dict[str, dict[str, float]], float]:
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full.update(env)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=full, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run {env.get('RUN_ID')} failed:\n{proc.stderr[-3000:]}")
    results: dict[str, dict[str, float]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"final_(\w+) val_loss:(\S+) val_bpb:(\S+) eval_time:(\d+)ms", line)
        if m:
            results[m[1]] = {"bpb": float(m[3]), "eval_s": int(m[4]) / 1000}
        m = re.match(r"artifact code_bytes:\d+ model_bytes:(\d+) total_bytes:(\d+)", line)
        if m:
            results["artifact"] = {"model_bytes": int(m[1]), "total_bytes": int(m[2])}
        m = re.match(r"wallclock .*gptq_time:(\d+)ms", line) or re.match(r"export gptq_time:(\d+)ms", line)
        if m:
            results["export"] = {"gptq_s": int(m[1]) / 1000}
        m = re.match(r"step:\d+/\d+ train_loss:\S+ train_time:\d+ms step_avg:(\S+)ms", line)
        if m:  # the last step line's average is the mean step time over the whole run
            results["train"] = {"step_ms": float(m[1])}
    return results, seconds


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings shared by every run")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a name then its settings; repeat for each variant")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--stages", nargs="+", default=["prequant", "roundtrip", "sliding", "ttt"])
    p.add_argument("--workdir", type=Path, default=ROOT)
    p.add_argument("--script", type=Path, default=ROOT / "train_gpt.py", help="the training script to run")
    args = p.parse_args(argv)
    base = parse_pairs(args.base)
    header = ["variant"] + [f"{s} bpb (eval s)" for s in args.stages] + ["model bytes", "export s", "step ms", "run s"]
    rows = []
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)  # the runs' logs and artifacts; checked at start
    for name, *settings in args.variant:
        collected: dict[str, list] = {}
        for seed in args.seeds:
            settings_env = {k: v.replace("{seed}", str(seed)) for k, v in {**base, **parse_pairs(settings)}.items()}
            env = {**settings_env, "SEED": str(seed), "RUN_ID": f"sweep_{name}_{seed}"}
            env.setdefault("ARTIFACT_PATH", str(args.workdir / "logs" / f"sweep_{name}_{seed}.ptz"))
            results, seconds = run_once(env, args.workdir, args.script.resolve())
            step_ms = results.get("train", {}).get("step_ms")
            print(f"{name} seed {seed}: " + " ".join(f"{s}={results[s]['bpb']:.4f}" for s in args.stages if s in results)
                  + f" model_bytes={results.get('artifact', {}).get('model_bytes', 0)}"
                  + (f" step_ms={step_ms:.2f}" if step_ms is not None else "") + f" ({seconds:.0f}s)", flush=True)
            for stage in args.stages:
                if stage in results:
                    collected.setdefault(stage, []).append(results[stage])
            collected.setdefault("model_bytes", []).append(results.get("artifact", {}).get("model_bytes", 0))
            collected.setdefault("export", []).append(results.get("export", {}).get("gptq_s", 0.0))
            if step_ms is not None:
                collected.setdefault("step_ms", []).append(step_ms)
            collected.setdefault("seconds", []).append(seconds)
        cells = [name]
        for stage in args.stages:
            got = collected.get(stage, [])
            cells.append(f"{mean_std([g['bpb'] for g in got])} ({statistics.mean(g['eval_s'] for g in got):.1f})" if got else "-")
        step_cell = f"{statistics.mean(collected['step_ms']):.1f}" if "step_ms" in collected else "-"
        cells += [f"{statistics.mean(collected['model_bytes']):,.0f}", f"{statistics.mean(collected['export']):.2f}",
                  step_cell, f"{statistics.mean(collected['seconds']):.0f}"]
        rows.append(cells)
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
