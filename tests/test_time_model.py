"""tests/bench_time_model.py: the fit reproduces its calibration record, the check record lands
within a stated error, knobs move the prediction the right way, and the CLI prints its table.
Nothing here times anything: the model is arithmetic."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import bench_time_model as bt  # noqa: E402
import train_gpt as tg  # noqa: E402

SHAPE = {"VOCAB_SIZE": "8192", "NUM_LAYERS": "11", "MODEL_DIM": "512", "NUM_HEADS": "8", "NUM_KV_HEADS": "4",
         "MLP_MULT": "4", "LOOP_START": "3", "LOOP_END": "5", "NUM_LOOPS": "2", "ENABLE_LOOPING_AT": "0.35",
         "TRAIN_BATCH_TOKENS": "786432", "TRAIN_SEQ_LEN": "2048", "PROGRESSIVE_CONTEXT": ""}
ASSUMPTIONS = bt.Assumptions()


def predict(env: dict[str, str]) -> dict:
    return bt.predict(tg.Hyperparameters(environ=env), 8, ASSUMPTIONS)


@pytest.fixture(scope="module")
def default_prediction() -> dict:
    return predict({})


def test_pr1855_shape_reproduces_its_steps_in_600_seconds():
    # The calibration point (PR #1855: 4,945 steps, 121.7 ms/step average): checks the fitting code.
    train = predict({**SHAPE, "DOC_ATTENTION": "1", "MAX_WALLCLOCK_SECONDS": "600", "GPTQ_RESERVE_SECONDS": "0"})["train"]
    assert train["clock_s"] == 600
    assert train["steps"] == pytest.approx(4945, rel=0.02)
    assert train["ms_per_step"] == pytest.approx(121.7, rel=0.02)
    assert train["before"]["tokens_per_s_per_gpu"] * 8 == pytest.approx(8.2e6, rel=0.05)


def test_our_own_fit_reproduces_the_step_measured_on_one_h200(default_prediction):
    # The second fit: our code's 938.7 ms per step before looping on one H200 (2026-11-26);
    # after looping it predicts 1,399 ms against the 1,560 ms measured (-10 %): printed, not hidden.
    checks, rates = default_prediction["checks"], default_prediction["rates"]
    assert checks["ours_before_s"] == pytest.approx(0.9387, rel=1e-3)
    assert 1.2 < checks["ours_after_s"] < 1.56
    assert rates["our_mfu"] < rates["mfu"]  # our code was the slower one
    assert default_prediction["train"]["at_our_mfu"]["steps"] < default_prediction["train"]["steps"]


def test_pr1493_shape_is_predicted_within_ten_percent():
    # Not fitted: the same shape without document attention, 4,550 steps in 588 s. Observed
    # error -6.3 % (4,263 steps; sigma 1.0, seed 0); over sigma 0.8-1.2 it ranges -4.7 to
    # -7.5 %. One achieved fraction cannot tell FlashAttention-3 (#1493) from flex_attention
    # (#1855), so the miss is systematic; 10 % leaves room for it and for small model changes.
    train = predict({**SHAPE, "DOC_ATTENTION": "0", "MAX_WALLCLOCK_SECONDS": "600", "GPTQ_RESERVE_SECONDS": "12"})["train"]
    assert train["clock_s"] == 588
    assert train["steps"] == pytest.approx(4550, rel=0.10)


def test_pr2014s_progressive_context_is_predicted_within_five_percent(default_prediction):
    # Not fitted: PR #1855's shape with rows of 1024 / 2048 / 3072 and a 596 s clock averaged
    # 122.0 ms per step; the model predicts 121.4 ms (-0.5 %).
    assert default_prediction["checks"]["pr2014_ms_per_step"] == pytest.approx(122.0, rel=0.05)
    # The default is PR #2014's schedule: four stretches in the order train_model meets them.
    states = default_prediction["train"]["states"]
    assert [(st["seq_len"], st["looped"]) for st in states] == [(1024, False), (2048, False), (2048, True), (3072, True)]
    assert sum(st["fraction"] for st in states) == pytest.approx(1.0)
    assert states[0]["step_s"] < states[1]["step_s"] and states[2]["step_s"] < states[3]["step_s"]  # longer rows, more pairs


def test_document_pairs_match_the_scripts_own_document_ids():
    lengths = np.array([5, 1, 17, 3, 40, 2, 9], dtype=np.int64)
    stream = bt.DocStream(lengths)
    tokens = torch.full((int(lengths.sum()),), 7)
    tokens[torch.from_numpy(stream.starts)] = tg.BOS_ID
    width = 12
    starts = np.arange(0, len(tokens) - width + 1)
    ids = tg.document_ids(torch.stack([tokens[s:s + width] for s in starts]), tg.BOS_ID)
    expected = [float((torch.bincount(row).double() ** 2).sum() / 2) for row in ids]
    assert stream.pairs(starts, width).tolist() == pytest.approx(expected)


def test_knobs_move_the_prediction_the_right_way(default_prediction):
    base = default_prediction
    assert predict({"NUM_LOOPS": "0"})["train"]["steps"] > base["train"]["steps"]
    assert predict({"DOC_ATTENTION": "0"})["train"]["steps"] < base["train"]["steps"]
    bigger_rank = predict({"TTT_LORA_RANK": "160"})["eval"]["docs"]
    assert bigger_rank["seconds"] > base["eval"]["docs"]["seconds"]
    assert bigger_rank["seconds_calibrated"] > base["eval"]["docs"]["seconds_calibrated"]
    assert predict({"EVAL_STRIDE": "128"})["eval"]["sliding"]["seconds"] < base["eval"]["sliding"]["seconds"]
    assert predict({"MATRIX_BITS": "5"})["artifact"]["model_bytes"] < base["artifact"]["model_bytes"]


def test_prediction_is_self_consistent(default_prediction):
    p = default_prediction
    train, ev = p["train"], p["eval"]
    assert train["after"]["step_s"] > train["before"]["step_s"]  # looping adds virtual layers
    assert ev["sliding"]["seconds"] > ev["roundtrip"]["seconds"]
    assert ev["phased"]["seconds"] > ev["docs"]["seconds"]  # docs + global phases
    assert p["artifact"]["code_bytes"] == (ROOT / "train_gpt.py").stat().st_size
    assert 0.05 < p["rates"]["mfu"] < 0.9


def test_cli_prints_the_table_and_writes_json(tmp_path):
    json_path = tmp_path / "model.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_time_model.py"), "--env", "NUM_LOOPS=0",
                           "--json", str(json_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| time model, 8 x H100 SXM, train_gpt.py NUM_LOOPS=0 | value |" in out
    for row in ("| steps in the ", "| eval: roundtrip |", "| eval: TTT chunked |", "| eval: TTT docs",
                "| eval: TTT phased", "| eval budget, roundtrip + TTT phased", "| artifact bytes (predicted model + code) |",
                "| GPTQ total"):
        assert row in out, row
    assert "PR #1493" in out and "Achieved fraction (MFU)" in out and "GB/s" in out and "log-normal" in out
    assert "virtual layers, before / after looping | 11 / 11 |" in out
    assert json_path.is_file()


def test_cli_rejects_a_bad_setting():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_time_model.py"), "--env", "TRAIN_BATCH_TOKENS=1000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "TRAIN_BATCH_TOKENS" in proc.stderr
