"""tests/bench_pipeline.py at a tiny scale, so the GPU benchmark harness cannot rot."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import ROOT, TINY_RUN_ENV


def test_harness_runs_the_whole_pipeline_and_prints_its_table(tiny_data, tmp_path):
    json_path = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench_pipeline.py"), "--preset", "tiny", "--seconds", "4",
         "--val-tokens", "2000", "--vocab", tiny_data["VOCAB_SIZE"], "--data-path", tiny_data["DATA_PATH"],
         "--tokenizer-path", tiny_data["TOKENIZER_PATH"], "--workdir", str(tmp_path),
         "--env", "ENABLE_LOOPING_AT=0.3", "TTT_EPOCHS=1", "--json", str(json_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # shared cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("\n| tiny preset"):]
    for row in ("step time, before looping", "tokens/s per device, after looping", "peak memory",
                "launch to first timed step", "GPTQ calibration + quantisation", "artifact bytes",
                "roundtrip: val_bpb / eval time over 2,000 tokens", "sliding: projected eval time",
                "ttt: projected eval time", "ttt (chunked): val_bpb / eval time", "ttt (docs): projected eval time"):
        assert f"| {row}" in table, row
    assert json_path.is_file() and (tmp_path / "logs").is_dir()


def test_harness_refuses_a_data_path_without_tokenizer(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_pipeline.py"), "--data-path", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--tokenizer-path" in proc.stderr


def test_step_cost_timer_builds_each_variant_from_its_settings(tiny_data, capsys):
    import bench_step_cost
    base = [f"{k}={v}" for k, v in {**TINY_RUN_ENV, **tiny_data}.items()]
    model, inputs, targets = bench_step_cost.build(dict(item.split("=", 1) for item in base + ["PASS_LORA_RANK=0"]))
    assert not model.lora_A and model.looping and inputs.shape == targets.shape == (16, 64)
    assert torch.equal(inputs[0, 1:], targets[0, :-1])  # next-token targets from the validation stream
    assert bench_step_cost.main(["--base", *base, "--variant", "no_xsa", "XSA_LAST_N=0", "--rounds", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| default", "| no_xsa"]
    assert rows[0].endswith("| 1.000 |")


def test_sweep_tool_tabulates_variants_from_their_final_lines(tiny_data, tmp_path, capsys):
    import bench_sweep
    base = [f"{k}={v}" for k, v in {**TINY_RUN_ENV, **tiny_data}.items()] + [
        "ITERATIONS=3", "SLIDING_ENABLED=0", "TTT_ENABLED=0", "CHECKPOINT_PATH=", "OMP_NUM_THREADS=1"]
    assert bench_sweep.main(["--base", *base, "--stages", "prequant", "roundtrip", "--workdir", str(tmp_path),
                             "--variant", "default", "--variant", "rank0", "PASS_LORA_RANK=0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"variant", "default", "rank0"}
    for name in ("default", "rank0"):
        prequant, roundtrip, model_bytes = rows[name][1], rows[name][2], int(rows[name][3].replace(",", ""))
        assert 0 < float(prequant.split()[0]) < 12 and 0 < float(roundtrip.split()[0]) < 12 and model_bytes > 0
        assert (tmp_path / "logs" / f"sweep_{name}_1337.txt").is_file()
    assert int(rows["rank0"][3].replace(",", "")) < int(rows["default"][3].replace(",", ""))  # no adapters to store


def test_step_times_are_split_at_every_context_and_looping_switch():
    sys.path.insert(0, str(ROOT / "tests"))
    import bench_pipeline as bp
    steps = [f"step:{n}/12 train_loss:1.0 train_time:{t}ms step_avg:1ms tok_s:1" for n, t in
             [(1, 50), (2, 60), (3, 70), (4, 80), (5, 100), (6, 120), (7, 140), (8, 170), (9, 200), (10, 230), (11, 260), (12, 290)]]
    lines = ["train_setup global_seqs:16 window_len:64 tokens_per_step:1024 row_lens:16,32,64 grad_accum:1",
             *steps[:3], "context_switch step:3 progress:0.250 seq_len:32", *steps[3:6],
             "looping_enabled step:6 progress:0.500 virtual_layers:0 1 2 1 2 3", *steps[6:9],
             "context_switch step:9 progress:0.750 seq_len:64", *steps[9:]]
    # Each stretch is timed from its second step after the switch to its last step line.
    assert bp.stretch_rates(lines) == [(16, False, 10.0, 2, 3), (32, False, 20.0, 5, 6), (32, True, 30.0, 8, 9),
                                       (64, True, 30.0, 11, 12)]
    assert bp.stretch_rates(lines[1:]) == []  # no train_setup line: nothing to attribute
