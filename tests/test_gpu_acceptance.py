"""tests/gpu_acceptance.py on the CPU, so the one-call GPU acceptance run cannot rot: --dry-run
takes the tiny model (COMPILE=1, dynamo's eager backend) through every process and stage, and a
stage that fails, from a setting, an injected fault or any line the process stopped after, is
named in the table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gpu_acceptance as ga
from conftest import ROOT


def acceptance(data: dict[str, str], out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "gpu_acceptance.py"), "--dry-run", "--out", str(out),
         "--data-path", data["DATA_PATH"], "--tokenizer-path", data["TOKENIZER_PATH"], "--vocab", data["VOCAB_SIZE"], *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # shared cores


def table(stdout: str) -> dict[str, list[str]]:
    """The markdown table printed last: stage -> its cells."""
    lines = stdout.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("| stage | result |"))
    assert all(line.startswith("| ") for line in lines[start + 2:]), "the table is not the last thing printed"
    return {cells[0]: cells for cells in (line[2:-2].split(" | ") for line in lines[start + 2:])}


@pytest.fixture(scope="module")
def dry_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance")
    return acceptance(tiny_data, out), out


def test_the_dry_run_takes_every_stage_through_and_prints_one_table(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = table(proc.stdout)
    assert list(rows) == ga.ALL_ROWS
    for stage, cells in rows.items():
        if stage.startswith("compare_"):
            assert cells[1].startswith("skipped: dry run: flex needs CUDA"), cells  # said, never silent
        else:
            assert cells[1] == "pass", cells
            assert stage == "setup" or (float(cells[2]) >= 0 and cells[4].endswith("MiB")), cells
    for stage in ("train_unlooped", "train_looped"):
        assert float(rows[stage][5].replace(",", "")) > 0 and "ms/step" in rows[stage][6]
    assert "2 new graphs" in rows["warmup"][6] and "0 new graphs while training" in rows["train_looped"][6]
    assert rows["prequant"][3] == "sdpa_mask" and rows["ttt_docs"][3] == "documents:sdpa_causal"
    assert "a global phase after batch 1" in rows["ttt_phased"][6]
    for name in ("main", "ttt_phased", "ttt_chunked", "ttt_docs"):
        assert f"[gpu_acceptance] {name}: " in proc.stdout and "s of the 480 s budget used" in proc.stdout
    report = json.loads((out / "acceptance.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ga.ALL_ROWS
    assert [p["name"] for p in report["processes"]] == ["main", "ttt_phased", "ttt_chunked", "ttt_docs"]
    modes = {p["name"]: p["env"].get("TTT_MODE") for p in report["processes"] if p["env"].get("EVAL_ONLY") == "1"}
    assert modes == {"ttt_phased": "phased", "ttt_chunked": "chunked", "ttt_docs": "docs"}
    for p in report["processes"]:
        assert p["exit_code"] == 0 and "final_score" in open(p["log"]).read()


def replay(out, name: str, kind: str, cut: int | None = None, start: float = 0.0, wall: float = 100.0,
           **state) -> ga.Process:
    """A process of the dry run read back from its output (cut after `cut` lines), its lines
    spread evenly over `wall` seconds from `start`."""
    run_id = next(p.stem for p in out.glob(f"{name}_*.out"))
    texts = (out / f"{run_id}.out").read_text().splitlines()[:cut]
    proc = ga.Process(name, kind, run_id, {}, started=start, ended=start + wall, **{"exit_code": 0, **state})
    proc.lines = [(start + wall * (i + 1) / (len(texts) + 1), text) for i, text in enumerate(texts)]
    return proc


@pytest.mark.parametrize("name, kind", [("main", "main"), ("ttt_docs", "ttt")])
def test_a_process_that_stops_after_any_contract_line_names_the_next_stage(dry_run, name, kind):
    _, out = dry_run
    steps = ga.steps_of(kind, name)
    texts = replay(out, name, kind).texts()
    for i, (row, what, line) in enumerate(steps[:-1]):
        cut = next(n for n, text in enumerate(texts) if text.startswith(line)) + 1
        rows = ga.rows_of(replay(out, name, kind, cut, exit_code=1), out)
        failed = steps[i + 1][0]
        results = {r.stage: r.result for r in rows}
        assert results[failed] == "FAIL", (line, results)
        order = list(results)
        assert all(results[s] == "pass" for s in order[:order.index(failed)])
        assert all(results[s].startswith("not run") for s in order[order.index(failed) + 1:])
        detail = next(r.detail for r in rows if r.stage == failed)
        assert f"failed in {steps[i + 1][1]}" in detail and "exit 1" in detail, detail


def test_the_comparison_rows_read_a_run_ended_at_peak_memory(dry_run):
    _, out = dry_run
    texts = replay(out, "main", "main").texts()
    cut = next(n for n, text in enumerate(texts) if text.startswith("peak_memory")) + 1
    rows = ga.rows_of(replay(out, "main", "compare", cut, exit_code=-15, stopped="planned"), out)
    assert [(r.stage, r.result) for r in rows] == [(s, "pass") for s in ga.COMPARE_ROWS]
    assert all(float(r.tokens_per_s.replace(",", "")) > 0 for r in rows[1:])


def test_the_budget_skips_the_optional_processes_and_says_why(dry_run, tiny_data, monkeypatch):
    _, out = dry_run
    clock = [0.0]

    def launch(self, name, kind, extra, stop_at=None):  # the dry run's processes again, 100 s each
        proc = replay(out, name, kind, start=clock[0])
        proc.env = self.env_for(name, extra)
        clock[0] += proc.wall
        self.processes.append(proc)
        return proc

    monkeypatch.setattr(ga.Acceptance, "launch", launch)
    monkeypatch.setattr(ga.Acceptance, "elapsed", lambda self: clock[0])
    argv = ["--dry-run", "--out", str(out), "--data-path", tiny_data["DATA_PATH"], "--tokenizer-path",
            tiny_data["TOKENIZER_PATH"], "--vocab", tiny_data["VOCAB_SIZE"], "--budget-seconds", "250"]
    assert ga.main(argv) == 0
    report = json.loads((out / "acceptance.json").read_text())
    results = {r["stage"]: r["result"] for r in report["rows"]}
    assert results["ttt_phased"] == "pass"  # always runs: the submission's mode
    assert results["ttt_chunked"] == results["ttt_docs"] == "skipped: needs ~100 s, 50 s of --budget-seconds left"


def test_a_setting_for_one_stage_goes_to_that_stages_process_only(tiny_data, tmp_path):
    run = ga.Acceptance(ga.parse_args(["--dry-run", "--out", str(tmp_path), "--data-path", tiny_data["DATA_PATH"],
                                       "--tokenizer-path", tiny_data["TOKENIZER_PATH"], "--env", "SEED=7",
                                       "--env-stage", "ttt_chunked", "TTT_LR=-1", "--env-stage", "gptq", "GPTQ_CALIB_BATCHES=2"]))
    run.setup()
    envs = {name: run.env_for(name, {}) for name in ("main", "ttt_phased", "ttt_chunked", "ttt_docs", "compare")}
    assert {name for name, env in envs.items() if "TTT_LR" in env} == {"ttt_chunked"}
    assert {name for name, env in envs.items() if env["GPTQ_CALIB_BATCHES"] == "2"} == {"main"}
    assert all(env["SEED"] == "7" and env["COMPILE"] == "1" for env in envs.values())


def test_the_gpu_runs_settings_pass_train_gpts_own_checks(tiny_data, tmp_path):
    """No GPU minute is lost to a misspelt or out-of-range setting: every process's environment of
    the default (GPU) run passes the checks train_gpt.py makes at start."""
    import train_gpt as tg
    run = ga.Acceptance(ga.parse_args(["--out", str(tmp_path), "--data-path", tiny_data["DATA_PATH"],
                                       "--tokenizer-path", tiny_data["TOKENIZER_PATH"]]))
    run.setup()
    extras = {"main": run.main_env(), **{f"ttt_{m}": run.ttt_env_for(m) for m in ga.TTT_MODES}, "compare": run.compare_env()}
    for name, extra in extras.items():
        h = tg.Hyperparameters(environ=run.env_for(name, extra))
        h.validate(1)
        assert (h.num_layers, h.model_dim, h.vocab_size, h.compile, h.warmup_steps) == (11, 512, 8192, True, 2)
        assert h.val_tokens_limit == 65536 and h.max_wallclock_seconds == 0 and h.enable_looping_at == 0.5
        assert h.iterations == (16 if name == "compare" else 60)
    assert tg.Hyperparameters(environ=run.env_for("compare", extras["compare"])).attention_kernel == "flex"


def test_a_process_refused_at_its_settings_is_named_with_its_error_line(dry_run):
    _, out = dry_run
    proc = ga.Process("ttt_chunked", "ttt", "x", {}, started=0.0, ended=4.0, exit_code=2,
                      lines=[(3.9, "error: TTT_LR=-1 must be at least 0.")])
    (row,) = ga.rows_of(proc, out)
    assert row.result == "FAIL" and row.seconds == 4.0
    assert row.detail.startswith("failed in settings check (no `run_info` line; last contract line: `none`); exit 2: a setting; "
                                 "error: TTT_LR=-1 must be at least 0.")


def test_a_fault_inside_a_process_names_the_stage_it_ended(dry_run, tiny_data):
    _, out = dry_run  # the main run again, ended by a fault as its compile warm-up starts
    proc = acceptance(tiny_data, out, "--debug", "warmup", "--inject-fault", "warmup", "--env-stage", "warmup", "WARMUP_STEPS=4")
    assert proc.returncode == 1, proc.stdout[-3000:]
    rows = table(proc.stdout)
    assert [cells[1] for cells in rows.values()][:3] == ["pass", "pass", "FAIL"] and rows["warmup"][3] == "sdpa_mask"
    assert "failed in compile warm-ups" in rows["warmup"][6] and "last contract line: `train_setup" in rows["warmup"][6]
    assert "InjectedFault: injected by gpu_acceptance.py" in rows["warmup"][6] and "(in train_gpt.py " in rows["warmup"][6]
    assert all(cells[1] == "not run (warmup failed)" for stage, cells in rows.items() if ga.ALL_ROWS.index(stage) > 2)
    process = json.loads((out / "debug_warmup.json").read_text())["processes"][0]
    assert "hparam WARMUP_STEPS=4" in open(process["log"]).read()  # --env-stage reached the process running the stage
