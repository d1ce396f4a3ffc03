"""Shared fixtures: one tiny local dataset per test session and a runner for train_gpt.py.

The dataset is built once with data/make_local_dataset.py from a slice of the standard
library (vocab 512), so every test that trains or evaluates reads real challenge-format
shards and a real sentencepiece tokenizer, and no test touches the network.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_VOCAB = 512

# A model small enough that a full train -> export -> evaluate run takes seconds on 2 cores.
TINY_MODEL_ENV = {
    "VOCAB_SIZE": str(TINY_VOCAB), "NUM_LAYERS": "4", "MODEL_DIM": "64", "NUM_HEADS": "4",
    "NUM_KV_HEADS": "2", "MLP_MULT": "2", "ROPE_DIMS": "8", "LOOP_START": "1", "LOOP_END": "2",
    "NUM_LOOPS": "1", "PARALLEL_RESIDUAL_START": "3",
}
TINY_RUN_ENV = {
    **TINY_MODEL_ENV,
    "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "1024", "MICRO_BATCH_SEQS": "16", "PROGRESSIVE_CONTEXT": "",
    "ITERATIONS": "12", "MAX_WALLCLOCK_SECONDS": "0", "WARMUP_STEPS": "2", "TRAIN_LOG_EVERY": "1",
    "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "32", "EVAL_BATCH_SEQS": "8", "VAL_TOKENS_LIMIT": "3000",
    "TTT_CHUNK_TOKENS": "1024", "TTT_EPOCHS": "1", "TTT_BATCH_SEQS": "4", "GPTQ_CALIB_BATCHES": "1",
    "TTT_DOC_BATCH": "2", "TTT_DOC_CHUNK_TOKENS": "16", "TTT_LORA_RANK": "4", "PHASED_TTT_PREFIX_DOCS": "2",
    "PHASED_TTT_PHASES": "1", "SLIDING_ENABLED": "1", "COMPILE": "0", "VAL_LOSS_EVERY": "0",
    "SEED": "1",
}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """In-process models here are tiny; on two shared cores a second OpenMP thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """DATA_PATH, TOKENIZER_PATH and VOCAB_SIZE of a small stdlib dataset (built once)."""
    out = tmp_path_factory.mktemp("data")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--output-root", str(out),
         "--vocab-size", str(TINY_VOCAB), "--max-bytes", "3000000", "--val-docs", "20", "--name", "tiny"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split())


@pytest.fixture
def tiny_env(tiny_data, tmp_path) -> dict[str, str]:
    """Environment for a complete tiny run whose files all land in tmp_path."""
    return {**TINY_RUN_ENV, **tiny_data, "RUN_ID": "tiny",
            "ARTIFACT_PATH": str(tmp_path / "model.ptz"), "CHECKPOINT_PATH": str(tmp_path / "model.pt")}


def nonzero_model(h):
    """The model of `h`'s settings (seed 0) with its zero-initialised parts made random, so every
    path (LoRA, gates, output projections) shapes the output; looping on."""
    import train_gpt as tg
    torch.manual_seed(0)
    model = tg.GPT(h.model_config())
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    model.looping = True
    return model


def same_runner(fn):
    """Runners whose every forward is `fn` (a model, or a spy standing in for one)."""
    import train_gpt as tg
    return tg.Runners(fn, fn, fn, fn)


def run_script(env: dict[str, str], cwd: Path, nproc: int = 1, script: Path | None = None,
               timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run train_gpt.py (or `script`) in `cwd` with `env` on top of a clean environment;
    nproc > 1 goes through torchrun on gloo. The log is at cwd/logs/{RUN_ID}.txt."""
    script = script or ROOT / "train_gpt.py"
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # One thread per process: tests share two cores, and oversubscribed OpenMP threads spin.
    full_env = {**base, "OMP_NUM_THREADS": "1", **env}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    else:
        cmd = [sys.executable, str(script)]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def log_lines(cwd: Path, run_id: str, prefix: str) -> list[str]:
    """Lines after the source separator of logs/{run_id}.txt that start with `prefix`."""
    text = (cwd / "logs" / f"{run_id}.txt").read_text(encoding="utf-8")
    body = text.split("=" * 100 + "\n", 1)[1]
    return [line for line in body.splitlines() if line.startswith(prefix)]


def forward_logits(model, input_ids: torch.Tensor, layout=None) -> torch.Tensor:
    """The model's soft-capped float32 logits (the script itself only ever needs the loss): its
    hidden states through the tied head, capped as in softcapped_nll."""
    logits = model.head(model.hidden_states(input_ids, layout)).float()
    cap = model.cfg.logit_softcap
    return cap * torch.tanh(logits / cap) if cap > 0 else logits
