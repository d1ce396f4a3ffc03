"""What the README's quick start shows a new user: its main job, `PRESET=cpu python3 train_gpt.py`
on the local dataset, run once per thread count, one run after another, and a table of the results.

    python3 tests/bench_quickstart.py --threads 1 2 default
    python3 tests/bench_quickstart.py --python /tmp/cuda-venv/bin/python --threads default
    python3 tests/bench_quickstart.py --threads 1 --env ITERATIONS=5 VAL_TOKENS_LIMIT=4096   # a check

`default` leaves OMP_NUM_THREADS unset, as the README's command does (torch then takes a thread
per core). --python runs the jobs under another interpreter (another venv's torch build: CPU
against CUDA). The dataset is the quick start's own (data/datasets/local_sp1024, built first with
`python3 data/make_local_dataset.py --vocab-size 1024` when it is missing). Each run has its own
RUN_ID, and its log, artifact and checkpoint go to a temporary folder, removed at the end unless
--keep: the checkout's logs/ and final_model.* are never touched. A full-preset run takes about
7 minutes of a core. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sweep import parse_pairs

ROOT = Path(__file__).resolve().parents[1]
DATA_PATH = ROOT / "data" / "datasets" / "local_sp1024"
TOKENIZER_PATH = ROOT / "data" / "tokenizers" / "local_1024_bpe.model"
BUILD_DATASET = ["data/make_local_dataset.py", "--vocab-size", "1024"]
COLUMNS = ("threads", "torch", "wall s", "steps", "final_score", "pre-quant", "roundtrip")


def thread_setting(value: str) -> str:
    """'default' or a positive thread count (argparse type)."""
    if value == "default" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected a positive thread count or 'default', got {value!r}")


def run_env(base: dict[str, str], threads: str, folder: Path, run_id: str, overrides: dict[str, str]) -> dict[str, str]:
    """The environment of one quick-start run: the caller's, its files under `folder`, the local
    dataset by absolute path (the run's working folder is `folder`, not the checkout)."""
    env = {k: v for k, v in base.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    env.update({"PRESET": "cpu", "DATA_PATH": str(DATA_PATH), "TOKENIZER_PATH": str(TOKENIZER_PATH), "RUN_ID": run_id,
                "ARTIFACT_PATH": str(folder / f"{run_id}.ptz"), "CHECKPOINT_PATH": str(folder / f"{run_id}.pt")})
    env.update(overrides)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    return env


def parse_run(stdout: str) -> dict[str, str]:
    """torch version, thread count, last step and the three scores a run printed ('-' if absent)."""
    found = {"torch": "-", "threads": "-", "steps": "-", "final_score": "-", "pre-quant": "-", "roundtrip": "-"}
    for line in stdout.splitlines():
        if m := re.match(r"run_info .*\btorch:(\S+) .*\bthreads:(\d+)", line):
            found["torch"], found["threads"] = m[1], m[2]
        elif m := re.match(r"step:(\d+)/\d+ train_loss:", line):
            found["steps"] = m[1]
        elif m := re.match(r"final_score val_bpb:(\S+) stage:(\S+)", line):
            found["final_score"] = f"{m[1]} ({m[2]})"
        elif m := re.match(r"final_(prequant|roundtrip) .*\bval_bpb:(\S+)", line):
            found["pre-quant" if m[1] == "prequant" else "roundtrip"] = m[2]
    return found


def table_row(setting: str, seconds: float, found: dict[str, str]) -> str:
    threads = f"default ({found['threads']})" if setting == "default" else setting
    cells = (threads, found["torch"], f"{seconds:.0f}", found["steps"], found["final_score"], found["pre-quant"],
             found["roundtrip"])
    return "| " + " | ".join(cells) + " |"


def spread(rows: list[dict[str, str]]) -> str:
    scores = [float(r["final_score"].split()[0]) for r in rows if r["final_score"] != "-"]
    if len(scores) < 2:
        return ""
    return f"final_score over {len(scores)} runs: {min(scores):.8f} to {max(scores):.8f} (spread {max(scores) - min(scores):.8f})"


def ensure_dataset(python: str) -> None:
    """Build the quick start's dataset with the README's command when it is missing."""
    if TOKENIZER_PATH.is_file() and any(DATA_PATH.glob("fineweb_val_[0-9]*.bin")):
        return
    print(f"building the dataset: python3 {' '.join(BUILD_DATASET)}", flush=True)
    proc = subprocess.run([python, *BUILD_DATASET], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: building the dataset failed (exit {proc.returncode}): {last}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", nargs="+", type=thread_setting, default=["1", "2", "default"],
                   help="thread counts to run, in order ('default': OMP_NUM_THREADS unset)")
    p.add_argument("--python", default=sys.executable, help="interpreter whose torch runs the jobs")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="settings on top of PRESET=cpu")
    p.add_argument("--keep", action="store_true", help="keep the folder of logs and artifacts")
    args = p.parse_args(argv)
    overrides = parse_pairs(args.env)
    if not shutil.which(args.python) and not Path(args.python).is_file():
        raise SystemExit(f"error: --python {args.python} is not an interpreter here")
    if "DATA_PATH" not in overrides:
        ensure_dataset(args.python)

    folder = Path(tempfile.mkdtemp(prefix="bench_quickstart_"))
    stamp = time.strftime("%Y%m%d_%H%M%S")
    rows, results = [], []
    try:
        for i, setting in enumerate(args.threads):
            run_id = f"quickstart_{stamp}_{i}_threads_{setting}"
            env = run_env(dict(os.environ), setting, folder, run_id, overrides)
            print(f"run {i + 1}/{len(args.threads)}: threads {setting}, {args.python} train_gpt.py ...", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([args.python, str(ROOT / "train_gpt.py")], cwd=folder, env=env, capture_output=True,
                                  text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise SystemExit(f"error: the run with threads {setting} exited {proc.returncode}: {last}")
            found = parse_run(proc.stdout)
            results.append(found)
            rows.append(table_row(setting, seconds, found))
            print(rows[-1], flush=True)
    finally:
        if args.keep:
            print(f"logs and artifacts kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    settings = " ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"\nPRESET=cpu {settings}".rstrip() + f", one run after another, {os.cpu_count()} cores:\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print("\n".join(rows))
    if line := spread(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
