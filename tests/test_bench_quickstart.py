"""tests/bench_quickstart.py: each run's environment and what it reads off a run's output."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bench_quickstart as bq

# Lines as a PRESET=cpu run prints them (ITERATIONS=5 VAL_TOKENS_LIMIT=4096, torch 2.13.0+cpu).
RUN_OUTPUT = """\
run_info python:3.11.7 torch:2.13.0+cpu device:cpu world_size:1 hardware:1xCPU-x86_64 compile:0 doc_attention:1 threads:2
step:1/5 train_loss:6.9058 train_time:3124ms step_avg:3124.39ms tok_s:2621
step:5/5 train_loss:5.9403 train_time:17363ms step_avg:3472.51ms tok_s:2359
final_prequant val_loss:5.86206297 val_bpb:3.73030028 eval_time:389ms
final_roundtrip val_loss:5.86699130 val_bpb:3.73343640 eval_time:792ms
final_sliding val_loss:5.86626597 val_bpb:3.73297484 eval_time:1909ms
final_ttt val_loss:5.56813714 val_bpb:3.54326175 eval_time:24840ms
final_score val_bpb:3.54326175 stage:ttt total_bytes:531623
"""


def test_a_runs_torch_threads_steps_and_scores_are_read_off_its_output():
    found = bq.parse_run(RUN_OUTPUT)
    assert found == {"torch": "2.13.0+cpu", "threads": "2", "steps": "5", "final_score": "3.54326175 (ttt)",
                     "pre-quant": "3.73030028", "roundtrip": "3.73343640"}
    assert bq.table_row("default", 77.4, found) == \
        "| default (2) | 2.13.0+cpu | 77 | 5 | 3.54326175 (ttt) | 3.73030028 | 3.73343640 |"


def test_a_run_that_printed_no_score_shows_dashes_and_no_spread():
    found = bq.parse_run(RUN_OUTPUT.split("final_prequant")[0])
    assert (found["steps"], found["final_score"], found["pre-quant"], found["roundtrip"]) == ("5", "-", "-", "-")
    assert bq.spread([found, bq.parse_run(RUN_OUTPUT)]) == ""


def test_spread_is_max_minus_min_of_the_final_scores():
    rows = [{"final_score": "3.5 (ttt)"}, {"final_score": "3.54326175 (ttt)"}, {"final_score": "3.52 (ttt)"}]
    assert bq.spread(rows) == "final_score over 3 runs: 3.50000000 to 3.54326175 (spread 0.04326175)"


def test_each_run_writes_only_under_its_folder_and_default_leaves_threads_unset(tmp_path: Path):
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1", "RANK": "3", "ITERATIONS": "9"}
    env = bq.run_env(base, "default", tmp_path, "q0", {"ITERATIONS": "5"})
    assert "OMP_NUM_THREADS" not in env and "RANK" not in env
    assert env["PRESET"] == "cpu" and env["ITERATIONS"] == "5" and env["RUN_ID"] == "q0"
    assert env["ARTIFACT_PATH"] == str(tmp_path / "q0.ptz") and env["CHECKPOINT_PATH"] == str(tmp_path / "q0.pt")
    assert Path(env["DATA_PATH"]).is_absolute() and Path(env["TOKENIZER_PATH"]).is_absolute()
    assert bq.run_env(base, "2", tmp_path, "q1", {})["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_thread_setting_is_a_positive_count_or_default(value):
    assert bq.thread_setting("default") == "default" and bq.thread_setting("4") == "4"
    with pytest.raises(argparse.ArgumentTypeError, match="positive thread count or 'default'"):
        bq.thread_setting(value)
