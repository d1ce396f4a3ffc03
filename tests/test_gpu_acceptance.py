"""tests/gpu_acceptance.py on the CPU, so the one-call GPU acceptance run cannot rot: --dry-run
takes the tiny model (COMPILE=1, dynamo's eager backend) through every process and stage and
writes its report where a lent machine returns files from; a stage that fails, from a setting,
an injected fault, a hang stopped at its deadline or any line the process stopped after, is
named in the table; a bad option is one line and its own exit status."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    report = tmp_path_factory.mktemp("report")
    return acceptance(tiny_data, out, "--report-dir", str(report)), out, report


def test_the_dry_run_takes_every_stage_through_and_prints_one_table(dry_run):
    proc, out, report = dry_run
    assert proc.returncode == ga.PASSED, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = table(proc.stdout)
    assert list(rows) == ga.ALL_ROWS
    for stage, cells in rows.items():
        if stage.startswith("compare_"):
            assert cells[1].startswith("skipped: not asked for (--compare-kernel"), cells  # said, never silent
        else:
            assert cells[1] == "pass", cells
            assert stage in ("setup", "brotli") or (float(cells[2]) >= 0 and cells[4].endswith("MiB")), cells
    for stage in ("train_unlooped", "train_looped", "eager_steps", "compiled_steps"):
        assert float(rows[stage][5].replace(",", "")) > 0 and "ms/step" in rows[stage][6], rows[stage]
    assert "4 steps of 8 x 64 tokens" in rows["eager_steps"][6] and "3 steps of 16 x 64 tokens" in rows["compiled_steps"][6]
    assert "train_looped_64" in rows["compile_looped"][6] and rows["compile_looped"][6].endswith("; 1 new graph")
    assert "2 new graphs" in rows["warmup"][6] and "0 new graphs while training" in rows["train_looped"][6]
    assert rows["serialize"][6].startswith("zstd ")
    assert rows["prequant"][3] == "sdpa_mask" and rows["ttt_docs"][3] == "documents:sdpa_causal"
    assert "a global phase after batch 1" in rows["ttt_phased"][6]
    assert "the loader reads back the same 25 tensors" in rows["brotli"][6]
    assert "validation subset of" in rows["setup"][6] and "the longest 80" in rows["setup"][6]  # 64-token window + one 16-token chunk
    for name in ("first", "main", "brotli", "ttt_docs", "ttt_chunked"):
        assert f"[gpu_acceptance] {name}: " in proc.stdout and "s of the 1800 s budget used" in proc.stdout
    assert "FIRST STAGE PASS" in proc.stdout
    summary = json.loads((report / "acceptance.json").read_text())
    assert summary["exit_status"] == 0 and [r["stage"] for r in summary["rows"]] == ga.ALL_ROWS
    assert [p["name"] for p in summary["processes"] if p["name"] != "brotli"] == ["first", "main", "ttt_docs", "ttt_chunked"]
    modes = {p["name"]: p["env"].get("TTT_MODE") for p in summary["processes"] if p["env"].get("EVAL_ONLY") == "1"}
    assert modes == {"ttt_docs": "docs", "ttt_chunked": "chunked"}
    main = next(p for p in summary["processes"] if p["name"] == "main")
    assert main["env"]["TTT_MODE"] == "phased" and main["env"]["TTT_ENABLED"] == "1" and main["env"]["VAL_TOKENS_LIMIT"] == "0"
    assert all(p["exit_code"] == 0 for p in summary["processes"])
    assert set(summary["estimates"]) == set(ga.ESTIMATES) and summary["estimates"]["compile_train"]["measured"] > 0


def test_the_report_dir_holds_few_small_files_a_lent_machine_returns(dry_run):
    _, _, report = dry_run
    files = sorted(report.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 << 20 for f in files), files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    assert {f.name for f in files} == {"acceptance.md", "acceptance.json", "acceptance_output.txt", "acceptance_logs.txt",
                                       "acceptance_traces.jsonl"}
    assert "| stage | result |" in (report / "acceptance.md").read_text()
    assert "exit 6: an attention kernel crashed the GPU" in (report / "acceptance.md").read_text()
    logs = (report / "acceptance_logs.txt").read_text()
    for run in ("first_eager", "first_compiled", "main", "ttt_docs", "ttt_chunked"):
        assert f"===== {run}_" in logs
    assert "hparam COMPILE=False" in logs and "hparam COMPILE=True" in logs  # the first stage's two runs
    assert "class Hyperparameters" not in logs  # the script's source is left out
    output = (report / "acceptance_output.txt").read_text()
    assert "===== brotli" in output and "recompress_done" in output
    traces = [json.loads(line) for line in (report / "acceptance_traces.jsonl").read_text().splitlines()]
    assert {t["process"] for t in traces} >= {"first", "main", "ttt_docs", "ttt_chunked"}


def replay(out, name: str, kind: str, cut: int | None = None, start: float = 0.0, wall: float = 100.0,
           **state) -> ga.Process:
    """A process of the dry run read back from its output (cut after `cut` lines), its lines
    spread evenly over `wall` seconds from `start`."""
    run_id = next(p.stem for p in out.glob(f"{name}_*.out"))
    texts = (out / f"{run_id}.out").read_text().splitlines()[:cut]
    proc = ga.Process(name, kind, run_id, {}, started=start, ended=start + wall, **{"exit_code": 0, **state})
    proc.lines = [(start + wall * (i + 1) / (len(texts) + 1), text) for i, text in enumerate(texts)]
    return proc


@pytest.mark.parametrize("name, kind", [("first", "first"), ("main", "main_ttt"), ("ttt_docs", "ttt")])
def test_a_process_that_stops_after_any_contract_line_names_the_next_stage(dry_run, name, kind):
    _, out, _ = dry_run
    steps = ga.steps_of(kind, name)
    texts = replay(out, name, kind).texts()
    found = ga.found_in_order(texts, [line for _, _, line in steps])
    for i, (row, what, line) in enumerate(steps[:-1]):
        rows = ga.rows_of(replay(out, name, kind, found[i] + 1, exit_code=1), out)
        failed = steps[i + 1][0]
        results = {r.stage: r.result for r in rows}
        assert results[failed] == "FAIL", (line, results)
        order = list(results)
        assert all(results[s] == "pass" for s in order[:order.index(failed)])
        assert all(results[s].startswith("not run") for s in order[order.index(failed) + 1:])
        detail = next(r.detail for r in rows if r.stage == failed)
        assert f"failed in {steps[i + 1][1]}" in detail and "exit 1: an unexpected exception" in detail, detail


def test_the_comparison_rows_read_a_run_ended_at_peak_memory(dry_run):
    _, out, _ = dry_run
    texts = replay(out, "main", "main").texts()
    cut = next(n for n, text in enumerate(texts) if text.startswith("peak_memory")) + 1
    rows = ga.rows_of(replay(out, "main", "compare", cut, exit_code=-15, stopped="planned"), out)
    assert [(r.stage, r.result) for r in rows] == [(s, "pass") for s in ga.COMPARE_ROWS]
    assert all(float(r.tokens_per_s.replace(",", "")) > 0 for r in rows[1:])


def test_what_does_not_fit_the_budget_is_refused_or_skipped_and_said(dry_run, tiny_data, monkeypatch):
    """Each process takes its estimate on a clock of the test's: after the first stage the main
    run fits without phased TTT, then only the brotli check does; phased TTT is required, so exit 5."""
    _, out, _ = dry_run
    clock = [0.0]

    def launch(self, name, kind, extra, stop_at=None, runs=None, deadline=None, on_line=None, prefix="", estimate=None):
        proc = replay(out, name, kind, start=clock[0], wall=estimate)
        proc.env, proc.estimate = self.env_for(name, extra, kind), estimate
        clock[0] += estimate if kind != "recompress" else 0  # the brotli check runs beside the others
        for text in proc.texts():
            if on_line:
                on_line(text)
        self.processes.append(proc)
        return proc

    monkeypatch.setattr(ga.Acceptance, "launch", launch)
    monkeypatch.setattr(ga.Acceptance, "left", lambda self: self.args.kill_after - clock[0])
    monkeypatch.setattr(ga.Acceptance, "measure", lambda self, proc: None)
    monkeypatch.setattr(ga.Acceptance, "finish_background", lambda self: [t.join() for t in self.background])
    monkeypatch.setitem(ga.DRY_ESTIMATES, "brotli", (1.0, "the test's"))
    e = {name: value for name, (value, _) in ga.DRY_ESTIMATES.items()}
    first, main, phased = (sum(ga.estimate_of(p, e, 12, 4).values()) for p in ("first", "main", "ttt_phased"))
    docs = sum(ga.estimate_of("ttt_docs", e, 12, 4).values())
    room = 1.6  # after the main run: enough for the brotli check, not for phased TTT or a TTT process
    assert e["brotli"] < room < min(phased, docs)
    kill_after = first + main + room
    argv = ["--dry-run", "--out", str(out), "--data-path", tiny_data["DATA_PATH"], "--tokenizer-path", tiny_data["TOKENIZER_PATH"],
            "--vocab", tiny_data["VOCAB_SIZE"], "--kill-after", str(kill_after), "--report-dir", str(out / "budget_report")]
    assert ga.main(argv) == ga.OVER_BUDGET
    report = json.loads((out / "budget_report" / "acceptance.json").read_text())
    results = {r["stage"]: r["result"] for r in report["rows"]}
    assert all(results[s] == "pass" for s in ga.FIRST_ROWS + ga.MAIN_ROWS if s != "ttt_phased")
    assert results["ttt_phased"].startswith(f"REFUSED: needs ~{main + phased:.0f} s, {main + room:.0f} s left before --kill-after "
                                            f"when the main run started")
    assert results["brotli"] == "pass"  # beside the main run, on the CPU: it fit when the artifact appeared
    assert results["ttt_docs"].startswith(f"skipped: needs ~{docs:.0f} s, 2 s left before --kill-after")
    assert [p["env"]["TTT_ENABLED"] for p in report["processes"] if p["name"] == "main"] == ["0"]


def test_a_setting_for_one_stage_goes_to_that_stages_process_only(tiny_data, tmp_path):
    run = ga.Acceptance(ga.parse_args(["--dry-run", "--out", str(tmp_path), "--data-path", tiny_data["DATA_PATH"],
                                       "--tokenizer-path", tiny_data["TOKENIZER_PATH"], "--env", "SEED=7",
                                       "--env-stage", "ttt_chunked", "TTT_LR=-1", "--env-stage", "gptq", "GPTQ_CALIB_BATCHES=3",
                                       "--env-stage", "eager_steps", "MATRIX_LR=0.01"]))
    run.setup()
    envs = {name: run.env_for(name, {}) for name in ("first", "main", "ttt_docs", "ttt_chunked", "compare")}
    assert {name for name, env in envs.items() if "TTT_LR" in env} == {"ttt_chunked"}
    assert {name for name, env in envs.items() if env["GPTQ_CALIB_BATCHES"] == "3"} == {"main"}
    assert all(env["SEED"] == "7" and env["COMPILE"] == "1" for env in envs.values())
    eager, compiled = (r["env"] for r in run.first_runs())
    assert eager["MATRIX_LR"] == compiled["MATRIX_LR"] == "0.01" and eager["SEED"] == "7"
    assert (eager["COMPILE"], compiled["COMPILE"]) == ("0", "1")


def test_the_gpu_runs_settings_pass_train_gpts_own_checks(tiny_data, tmp_path, monkeypatch):
    """No GPU minute is lost to a misspelt or out-of-range setting: every train_gpt.main() call of
    the default (GPU) run passes the checks train_gpt.py makes at start, with the settings the
    plan relies on (two training graphs, the TTT shapes) and the script's default model."""
    import train_gpt as tg
    subset = {"documents": 126, "tokens": 66_000, "longest": 2_608, "batches": 2, "byte_sidecar": False}
    monkeypatch.setattr(ga, "write_val_subset", lambda data, *rest: (data, subset))  # the tiny set has 20 documents
    monkeypatch.setattr(ga, "cuda_missing", lambda: False)  # settings only: nothing runs
    run = ga.Acceptance(ga.parse_args(["--out", str(tmp_path), "--data-path", tiny_data["DATA_PATH"],
                                       "--tokenizer-path", tiny_data["TOKENIZER_PATH"]]))
    run.setup()
    assert run.rows[-1].result == "pass", run.rows[-1]
    default = tg.Hyperparameters(environ={})
    first = {f"first run {i}": r["env"] for i, r in enumerate(run.first_runs())}
    extras = {"main": run.main_env(True), **{f"ttt_{m}": run.ttt_env_for(m) for m in ("docs", "chunked")}, "compare": run.compare_env()}
    envs = {**{name: run.env_for(name, extra) for name, extra in extras.items()},
            **{name: {**run.env_for("first", {}, "first"), **env} for name, env in first.items()}}
    for name, env in envs.items():
        h = tg.Hyperparameters(environ=env)
        h.validate(1)
        assert (h.num_layers, h.model_dim, h.mlp_mult, h.vocab_size) == (default.num_layers, default.model_dim, default.mlp_mult, 8192)
        assert (h.train_seq_len, h.context_phases(), h.eval_seq_len) == (2048, [(2048, 1.0)], 2560), name
        assert (h.ttt_doc_batch, h.ttt_doc_chunk_tokens, h.ttt_short_doc_chunks, h.phased_ttt_phases, h.phased_ttt_prefix_docs) == \
            (64, 48, False, 1, 64)
        assert (h.compressor, h.val_tokens_limit, h.max_wallclock_seconds) == ("zstd", 0, 0)
        assert h.gptq_calib_batches == (1 if name == "compare" else 2)  # the comparison stops before GPTQ
    main = tg.Hyperparameters(environ=envs["main"])
    assert main.training_states() == [(2048, False), (2048, True)] and main.iterations == 12 and main.warmup_steps == 2
    compiled = tg.Hyperparameters(environ=envs["first run 1"])
    assert compiled.training_states() == [(2048, True)] and compiled.compile  # the looped graph only
    # The first stage compiles the micro-batch the main run steps through (and one rank of 8 GPUs would).
    assert compiled.micro_batch(1) == main.micro_batch(1) == main.micro_batch(8) == int(envs["main"]["MICRO_BATCH_SEQS"])
    eager = tg.Hyperparameters(environ=envs["first run 0"])
    assert not eager.compile and eager.micro_batch(1) == ga.EAGER_ROWS and eager.training_states() == [(2048, False), (2048, True)]
    assert tg.Hyperparameters(environ=envs["compare"]).attention_kernel == "sdpa"  # only --compare-kernel names another


def test_a_process_refused_at_its_settings_is_named_with_its_error_line(dry_run):
    _, out, _ = dry_run
    proc = ga.Process("ttt_chunked", "ttt", "x", {}, started=0.0, ended=4.0, exit_code=2,
                      lines=[(3.9, "error: TTT_LR=-1 must be at least 0.")])
    (row,) = ga.rows_of(proc, out)
    assert row.result == "FAIL" and row.seconds == 4.0
    assert row.detail.startswith("failed in settings check (no `run_info` line; last contract line: `none`); exit 2: a setting "
                                 "(ConfigError); to do: fix the variable the error line names")
    assert row.detail.endswith("; error: TTT_LR=-1 must be at least 0.")


def test_a_fault_inside_a_process_names_the_stage_it_ended(dry_run, tiny_data):
    _, out, _ = dry_run  # the main run again, ended by a fault as its compile warm-up starts
    proc = acceptance(tiny_data, out, "--debug", "warmup", "--inject-fault", "warmup", "--env-stage", "warmup", "WARMUP_STEPS=4")
    assert proc.returncode == ga.FAILED, proc.stdout[-3000:]
    rows = table(proc.stdout)
    assert [cells[1] for cells in rows.values()][:3] == ["pass", "pass", "FAIL"] and rows["warmup"][3] == "sdpa_mask"
    assert "failed in compile warm-ups" in rows["warmup"][6] and "last contract line: `train_setup" in rows["warmup"][6]
    assert "InjectedFault: injected by gpu_acceptance.py" in rows["warmup"][6] and "(in train_gpt.py " in rows["warmup"][6]
    assert all(cells[1] == "not run (warmup failed)" for stage, cells in rows.items() if ga.ALL_ROWS.index(stage) > ga.ALL_ROWS.index("warmup"))
    logs = (out / "report" / "debug_warmup_logs.txt").read_text()
    assert "hparam WARMUP_STEPS=4" in logs  # --env-stage reached the process running the stage


def test_a_process_stopped_at_its_deadline_keeps_its_error_line(tiny_data, tmp_path):
    """A hung first stage (the child sleeps as its eager steps start) is stopped at --kill-after
    with SIGTERM: train_gpt.py (or the child, if it is still starting) writes its own one-line
    error and exits 143, and the row shows that line; nothing after the first stage starts."""
    proc = acceptance(tiny_data, tmp_path, "--inject-hang", "eager_steps", "--kill-after", "20", "--grace-seconds", "20")
    assert proc.returncode == ga.TIMED_OUT, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = table(proc.stdout)
    (stage, cells), = [(s, c) for s, c in rows.items() if c[1] == "TIMEOUT"]
    assert stage in ga.FIRST_ROWS
    assert "stopped at its deadline (SIGTERM); exit 143: terminated (SIGTERM)" in cells[6], cells
    assert "error: stopped by SIGTERM while " in cells[6] and ": no score from this run" in cells[6], cells
    assert all(c[1].startswith("not run (the first stage failed at ") for s, c in rows.items() if s not in ("setup", *ga.FIRST_ROWS))
    assert "FIRST STAGE FAIL" in proc.stdout


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert child.stdout.readline() == "ready\n"  # its handler is in place
    assert ga.stop(child, grace=1.0) == "SIGTERM, then SIGKILL after 1 s"
    assert child.returncode == -9
    proc = ga.Process("first", "first", "x", {}, started=0.0, ended=3.0, exit_code=-9, timed_out=True,
                      stopped="stopped at its deadline (SIGTERM, then SIGKILL after 1 s)", lines=[(1.0, "run_info device:cuda")])
    (check, *_) = ga.rows_of(proc, Path("."))
    assert check.result == "TIMEOUT" and "killed by signal 9 (no exit status)" in check.detail
    assert "no `error:` line: it did not answer SIGTERM (its last line: run_info device:cuda)" in check.detail


def test_every_exit_status_of_train_gpt_has_a_meaning_and_a_remedy():
    source = (ROOT / "train_gpt.py").read_text()
    used = {0, 1}  # a finished run; an exception's traceback
    for names, values in re.findall(r"^((?:EXIT_\w+, )*EXIT_\w+) = ([\d, ]+)$", source, re.M):
        used |= {int(v) for v in values.split(",")}
    assert used >= {0, 1, 2, 3, 4, 5, 6, 7, 130, 143}
    assert set(ga.EXIT_MEANINGS) >= used
    assert all(meaning and todo for meaning, todo in ga.EXIT_MEANINGS.values())
    kernel = ga.EXIT_MEANINGS[6][1]
    assert "ATTENTION_KERNEL=sdpa" in kernel and "ATTENTION_KERNEL=flex" not in kernel
    for code in (ga.PASSED, ga.FAILED, ga.BAD_OPTION, ga.SETUP, ga.TIMED_OUT, ga.OVER_BUDGET, ga.INTERRUPTED):
        assert re.search(rf"^  {code} +\w", ga.__doc__, re.M), f"exit {code} is not in the docstring's table"


BAD_OPTIONS = [  # (options, exit status, what the one line names)
    (["--iterations", "0"], ga.BAD_OPTION, "argument --iterations: '0' must be at least 2"),
    (["--budget-seconds", "-5"], ga.BAD_OPTION, "argument --budget-seconds: '-5' must be greater than 0"),
    (["--kill-after", "-1"], ga.BAD_OPTION, "argument --kill-after: '-1' must be greater than 0"),
    (["--grace-seconds", "0"], ga.BAD_OPTION, "argument --grace-seconds: '0' must be greater than 0"),
    (["--first-stage-seconds", "nan"], ga.BAD_OPTION, "argument --first-stage-seconds: 'nan' must be greater than 0"),
    (["--budget-seconds", "inf"], ga.BAD_OPTION, "argument --budget-seconds: 'inf' must be greater than 0"),
    (["--eager-steps", "1"], ga.BAD_OPTION, "argument --eager-steps: '1' must be at least 2"),
    (["--compiled-steps", "0"], ga.BAD_OPTION, "argument --compiled-steps: '0' must be greater than 0"),
    (["--val-tokens", "many"], ga.BAD_OPTION, "argument --val-tokens: 'many' is not an integer"),
    (["--ttt-doc-tokens", "1"], ga.BAD_OPTION, "argument --ttt-doc-tokens: '1' must be at least 2"),
    (["--compare-iterations", "-3"], ga.BAD_OPTION, "argument --compare-iterations: '-3' must be at least 2"),
    (["--vocab", "0"], ga.BAD_OPTION, "argument --vocab: '0' must be at least 2"),
    (["--env", "SEED"], ga.BAD_OPTION, "settings take KEY=VALUE, got 'SEED'"),
    (["--env-stage", "nosuch", "SEED=1"], ga.BAD_OPTION, "--env-stage nosuch: not a stage or process"),
    (["--debug", "nosuch"], ga.BAD_OPTION, "argument --debug: invalid choice: 'nosuch'"),
    (["--sanitizer"], ga.BAD_OPTION, "--sanitizer goes with --debug STAGE"),
    (["--data-path", "somewhere"], ga.BAD_OPTION, "--data-path needs --tokenizer-path"),
    (["--no-such-option"], ga.BAD_OPTION, "unrecognized arguments: --no-such-option"),
    (["--out", "{file}"], ga.SETUP, "--out {file} is a file, not a folder"),
    (["--report-dir", "{file}"], ga.SETUP, "--report-dir {file} is a file, not a folder"),
    (["--json", "{folder}"], ga.SETUP, "--json {folder}: a folder; name a file in an existing folder"),
]


@pytest.mark.parametrize("options, status, message", BAD_OPTIONS, ids=[" ".join(o) for o, _, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_error_line_and_its_own_exit_status(options, status, message, tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("")
    fill = {"file": str(file), "folder": str(tmp_path)}
    options = [o.format(**fill) for o in options]
    assert ga.main(["--dry-run", "--out", str(tmp_path / "out"), *options]) == status
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message.format(**fill) in err, err


def test_an_out_path_that_is_a_file_stops_the_script_with_one_line_not_a_traceback(tmp_path):
    file = tmp_path / "report.txt"
    file.write_text("kept")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_acceptance.py"), "--dry-run", "--out", str(file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ga.SETUP and proc.stdout == "" and file.read_text() == "kept"
    assert proc.stderr == f"error: --out {file} is a file, not a folder: name a folder (it is created if missing)\n"


def write_shard(path: Path, tokens) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def test_the_validation_subset_keeps_one_window_sized_document_and_two_batches_with_a_phase(tmp_path):
    """The GPU run's subset of a split that starts with a 32,278-token document (as the stdlib set
    does): that document is cut to EVAL_SEQ_LEN + one chunk, the rest to 512 tokens, until 65,536
    tokens; phased TTT then plans a global phase between two batches, and CaseOps byte counts are
    cut with their tokens."""
    import torch
    import train_gpt as tg
    rng = np.random.default_rng(0)
    lengths = [32_278, 3_533, 575, 40, *rng.integers(200, 4_000, 300)]
    tokens = np.concatenate([[1, *rng.integers(2, 8192, n - 1)] for n in lengths])
    data = tmp_path / "set"
    data.mkdir()
    write_shard(data / "fineweb_val_000000.bin", tokens)
    write_shard(data / "fineweb_val_bytes_000000.bin", np.where(tokens == 1, 0, tokens % 7 + 1))
    write_shard(data / "fineweb_train_000000.bin", tokens[:5000])
    folder, info = ga.write_val_subset(data, tmp_path / "out", 2560, 48, 64, 512, 65_536)
    val = torch.from_numpy(ga.read_shard(folder / "fineweb_val_000000.bin").astype(np.int64))
    docs = tg.split_documents(val, 1)
    assert info["longest"] == max(n for _, n in docs) == 2560 + 48  # the 32,278-token document, cut
    assert docs[0][1] == 2608 and all(n <= 512 for _, n in docs[1:])
    assert len(val) == info["tokens"] >= 65_536 and info["documents"] == len(docs) > 64
    h = tg.Hyperparameters(environ=ga.GPU_SETTINGS)
    plan = tg.plan_documents(docs, h, 1, h.phased_ttt_phases)
    assert len(plan.batches) == info["batches"] >= 2 and plan.phase_ends == [1]
    counts = ga.read_shard(folder / "fineweb_val_bytes_000000.bin")
    assert np.array_equal(counts, np.where(val.numpy() == 1, 0, val.numpy() % 7 + 1))  # cut in step with the tokens
    assert (folder / "fineweb_train_000000.bin").resolve() == (data / "fineweb_train_000000.bin").resolve()
