"""tests/bench_time_model.py: the fit reproduces its calibration record, the check record lands
within a stated error, knobs move the prediction the right way, and the CLI prints its table.
Nothing here times anything: the model is arithmetic."""
from __future__ import annotations

import subprocess
import sys
import types

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
    # 122.0 ms per step; the model predicts 121.4 ms (-0.5 %). Progressive context stays a setting:
    # four stretches in the order train_model meets them, longer rows slower.
    assert default_prediction["checks"]["pr2014_ms_per_step"] == pytest.approx(122.0, rel=0.05)
    states = bt.training(bt.record(bt.PR2014), 8, ASSUMPTIONS, default_prediction["rates"]["mfu"])["states"]
    assert [(st["seq_len"], st["looped"]) for st in states] == [(1024, False), (2048, False), (2048, True), (3072, True)]
    assert sum(st["fraction"] for st in states) == pytest.approx(1.0)
    assert states[0]["step_s"] < states[1]["step_s"] and states[2]["step_s"] < states[3]["step_s"]  # longer rows, more pairs


def test_the_default_trains_two_graphs_of_2048_token_rows(default_prediction):
    # PR #2135's configuration: fixed 2,048-token rows, so one unlooped and one looped graph,
    # looping from 35 % of the 592 s clock (600 - GPTQ_RESERVE_SECONDS 8).
    train = default_prediction["train"]
    assert [(st["seq_len"], st["looped"]) for st in train["states"]] == [(2048, False), (2048, True)]
    assert [st["fraction"] for st in train["states"]] == pytest.approx([0.35, 0.65])
    assert train["clock_s"] == 592
    # PR #1855's fit on this shape: 95.5 / 141.9 ms, 1.03M / 0.69M tokens/s per GPU, 4,882 steps.
    assert train["before"]["step_s"] == pytest.approx(0.0955, rel=0.01)
    assert train["after"]["step_s"] == pytest.approx(0.1419, rel=0.01)
    assert train["before"]["tokens_per_s_per_gpu"] == pytest.approx(1.03e6, rel=0.01)
    assert train["steps"] == pytest.approx(4882, rel=0.01)
    assert train["loop_from_step"] == pytest.approx(0.35 * 592 / train["before"]["step_s"])


def test_pr2135_is_predicted_within_three_percent(default_prediction):
    # Not fitted: PR #2135's log, 4,994 steps at 120.1 ms in 599.6 s, 8.27M tokens/s before
    # looping, looping from step 2,206. Observed: 4,946 steps (-1.0 %), 121.2 ms (+0.9 %),
    # 8.24M tokens/s, step 2,199; 3 % is the #1493 check's few percent.
    c = default_prediction["checks"]
    assert c["pr2135_steps"] == pytest.approx(bt.PR2135_STEPS, rel=0.03)
    assert c["pr2135_ms_per_step"] == pytest.approx(bt.PR2135_MS_PER_STEP, rel=0.03)
    assert c["pr2135_tokens_per_s_before"] == pytest.approx(bt.PR2135_TOKENS_PER_S_BEFORE, rel=0.03)
    assert c["pr2135_loop_from_step"] == pytest.approx(bt.PR2135_LOOP_FROM_STEP, rel=0.03)
    # What the check shows the model overstates (printed beside it): 32 batches' Hessians
    # (9.5 s against 6.9 s: part of the time is fixed) and the evaluation less PR #2135's own
    # n-gram counts (490 s against 340-367 s: its TTT ran faster than PR #1855's calibration).
    assert bt.PR2135_HESSIAN_S < c["pr2135_hessian_s"] < 1.5 * bt.PR2135_HESSIAN_S
    assert c["pr2135_eval_measured_s"] < c["pr2135_eval_s"] < 1.5 * c["pr2135_eval_measured_s"]


@pytest.fixture(scope="module")
def default_plans(default_prediction) -> dict:
    return bt.plans(tg.Hyperparameters(environ={}), default_prediction, ASSUMPTIONS)


def test_calibration_verdict_is_16_batches(default_prediction, default_plans):
    c = default_plans["calibration"]
    assert c["verdict"] == 16
    # The arithmetic the README quotes: -0.0013 / 8 s of training; break-even 0.00019 / that.
    assert c["bpb_per_second"] == pytest.approx(-0.0013 / 8)
    assert c["bpb_per_step"] == pytest.approx(-0.0013 / 8 * default_prediction["train"]["after"]["step_s"])
    assert c["break_even_s"] == pytest.approx(0.00019 / (0.0013 / 8), rel=1e-6)
    sixteen, modelled, records = c["options"]
    assert sixteen["reserve_s"] == 8 and sixteen["net_bpb"] == 0
    # Modelled: 16 more batches cost what 16 cost (Hessians in proportion), ~4.75 s scaled from
    # PR #1855; read off the records: 6.9 - 4.75 = 2.15 s. Both lose more than 32 batches gain.
    assert modelled["extra_s"] == pytest.approx(4.75, rel=0.05)
    assert records["extra_s"] == pytest.approx(2.15)
    for o in (modelled, records):
        assert o["reserve_s"] == pytest.approx(8 + o["extra_s"])
        assert o["steps_lost"] == pytest.approx(o["extra_s"] / default_prediction["train"]["after"]["step_s"])
        assert o["calibration_bpb"] == pytest.approx(-0.00019)
        assert o["extra_s"] > c["break_even_s"] and o["net_bpb"] > 0


def test_slack_table_has_the_default_row_and_it_fits(default_prediction, default_plans):
    sl = default_plans["slack"]
    rows = {(r["phases"], r["prefix_docs"]): r for r in sl["rows"]}
    default = rows[(1, 2500)]
    assert default["configured"] and default["fits"]
    # The row is the main table's phased evaluation; CaseOps's 18 % more tokens cost more.
    assert default["assumed"]["total_s"] == pytest.approx(default_prediction["eval"]["phased"]["stage_total_s"])
    assert default["caseops"]["total_s"] > default["assumed"]["total_s"]
    assert default["worst_s"] * 1.1 <= 600
    # Every extra phase costs time; a phase over more documents costs more phase time.
    by_phases = [rows[(k, 2500)]["worst_s"] for k in (1, 2, 3, 4, 6)]
    assert by_phases == sorted(by_phases)
    assert rows[(1, 5000)]["caseops"]["phase_s"] > default["caseops"]["phase_s"]
    assert all(r["fits"] == (r["worst_s"] * 1.1 <= 600) for r in sl["rows"])
    assert 0 < sl["speed"] < 1  # PR #2135's evaluation ran faster than the model says


def test_size_plan_rows(default_prediction, default_plans):
    z = default_plans["size"]
    rows = {r["label"]: r for r in z["rows"]}
    configured = rows["configured"]
    assert configured["model_bytes"] == default_prediction["artifact"]["model_bytes"]
    assert z["code_bytes"]["plain script"] == (ROOT / "train_gpt.py").stat().st_size
    assert configured["margin_plain script"] == 16_000_000 - configured["model_bytes"] - z["code_bytes"]["plain script"]
    assert z["code_bytes"][z["smallest"]] == min(z["code_bytes"].values())
    # A lower MLP clip spends bytes: 11.5 (PR #2135's, with its lrzip) predicts ~16.05 MB with
    # brotli, over the limit before any code; AWQ-lite's group adds its bound.
    assert configured["model_bytes"] < rows["MLP_CLIP_SIGMAS=12"]["model_bytes"] < rows["MLP_CLIP_SIGMAS=11.5"]["model_bytes"]
    assert rows["MLP_CLIP_SIGMAS=11.5"]["model_bytes"] == pytest.approx(16.05e6, rel=0.002)
    assert rows["AWQ_GROUPS=1"]["model_bytes"] > configured["model_bytes"]


def test_code_sizes_use_what_the_packager_offers(monkeypatch):
    script = ROOT / "train_gpt.py"
    plain = script.stat().st_size
    sizes, source = bt.code_sizes(script)
    assert sizes["plain script"] == plain and len(sizes) > 1 and "records/package.py" in source
    assert all(b < plain for name, b in sizes.items() if name != "plain script")
    # A packager with wrapper_sizes (the minifying one) is asked through it.
    fake = types.ModuleType("package")
    fake.WRAP_METHODS = ("lzma",)
    fake.wrapper_sizes = lambda text: {"source": len(text), "minified": 7, "lzma": 5}
    monkeypatch.setitem(sys.modules, "package", fake)
    assert bt.code_sizes(script) == ({"plain script": plain, "lzma wrapper": 5}, "records/package.py wrapper_sizes()")
    # One that cannot make a wrapper (a missing minifier or compressor) leaves the plain script.
    def broken(*_):
        raise ImportError("no compressor")
    fake.wrapper_sizes = fake.make_wrapper = broken
    sizes, source = bt.code_sizes(script)
    assert sizes == {"plain script": plain} and "no compressor" in source


def test_one_gpu_step_times_for_the_acceptance_run(default_plans):
    g = default_plans["one_gpu"]
    assert g["grad_accum_steps"] == 8 and g["micro_batch_tokens"] == 98_304
    # The second fit is our measured H200 step before looping, the same shape: it comes back.
    assert g["our_mfu"]["before_s"] == pytest.approx(0.9387, rel=1e-3)
    assert g["mfu"]["before_s"] < g["our_mfu"]["before_s"] and g["mfu"]["after_s"] < g["our_mfu"]["after_s"]
    assert g["mfu"]["after_s"] / g["mfu"]["before_s"] == pytest.approx(1.49, rel=0.02)  # 17 / 11 virtual layers, plus attention


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
    for section in ("### Check (not fitted): PR #2135", "### GPTQ calibration batches", "Verdict: GPTQ_CALIB_BATCHES=16",
                    "### Evaluation slack", "### Size plan", "### One GPU"):
        assert section in out, section
    assert "becomes a default only once a GPU has measured the evaluation time" in out
    assert json_path.is_file()


def test_cli_prints_only_the_sections_asked_for():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_time_model.py"), "--only", "calibration", "size"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("### GPTQ calibration batches") and "### Size plan" in proc.stdout
    assert "| time model" not in proc.stdout and "### Evaluation slack" not in proc.stdout


def test_cli_rejects_a_bad_setting():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_time_model.py"), "--env", "TRAIN_BATCH_TOKENS=1000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "TRAIN_BATCH_TOKENS" in proc.stderr
