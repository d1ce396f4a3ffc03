"""Tests of records/package.py: packaging run logs into a submission folder, refusals, --check,
and the self-extracting wrapper. Logs are synthetic, written in the log-line contract."""
from __future__ import annotations

import ast
import base64
import hashlib
import json
import lzma
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "records"))
import package  # noqa: E402

FAKE_SOURCE = (
    "import os\n"
    "\n"
    "# A stand-in for train_gpt.py: its defaults feed the README's reproduction command.\n"
    'NUM_LAYERS = int(os.environ.get("NUM_LAYERS", 11))\n'
    'VOCAB_SIZE = int(os.environ.get("VOCAB_SIZE", "8192"))\n'
    'TTT_EPOCHS = int(os.environ.get("TTT_EPOCHS", 1))\n'
    'print("fake train_gpt ×")\n'
)

HPARAMS = {
    "SEED": "1337", "VOCAB_SIZE": "8192", "NUM_LAYERS": "11", "MODEL_DIM": "512",
    "NUM_HEADS": "8", "NUM_KV_HEADS": "4", "MLP_MULT": "4", "TRAIN_SEQ_LEN": "2048",
    "TRAIN_BATCH_TOKENS": "786432", "LOOP_START": "3", "LOOP_END": "5", "NUM_LOOPS": "2",
    "ENABLE_LOOPING_AT": "0.35", "PASS_LORA_RANK": "1", "PASS_LORA_TARGETS": "q,k,v,o",
    "PASS_EMBED": "1", "MATRIX_BITS": "6", "EMBED_BITS": "8", "COMPRESSOR": "brotli",
    "EVAL_STRIDE": "64", "TTT_ENABLED": "1", "TTT_PARAMS": "all", "TTT_OPTIMIZER": "sgd",
    "TTT_EPOCHS": "3", "TTT_LR": "0.005", "TTT_CHUNK_TOKENS": "32768", "VAL_TOKENS_LIMIT": "0",
    "MAX_WALLCLOCK_SECONDS": "600",
}
HARDWARE = "8xNVIDIA H100 80GB HBM3"
TORCH = "2.9.1+cu128"
SEP = "=" * 100


def make_log(seed: int = 1337, bpb: float = 1.0808, total_bytes: int = 15_991_930, *,
             source: str = FAKE_SOURCE, stage: str = "ttt", limit_bytes: int = 16_000_000,
             train_ms: int = 588_000, gptq_ms: int = 11_000, wall_total_ms: int | None = None,
             wall_limit_ms: int = 600_000, hparams: dict[str, str] | None = None,
             final_score: bool = True, over_limit: bool = False, hardware: str = HARDWARE,
             torch_version: str = TORCH, extra: tuple[str, ...] = (),
             code_bytes: int | None = None) -> str:
    """A run log in the contract's format, for one seed. `code_bytes` defaults to a plain run's
    (the source's bytes); pass a wrapper's size for a run of a --make-wrapper wrapper."""
    hp = {**HPARAMS, "SEED": str(seed), "RUN_ID": f"run_{seed}", **(hparams or {})}
    if code_bytes is None:
        code_bytes = len(source.encode("utf-8"))
    total = wall_total_ms if wall_total_ms is not None else train_ms + gptq_ms
    lines = [SEP, f"run_info python:3.12.3 torch:{torch_version} device:cuda world_size:8 hardware:{hardware}"]
    lines += [f"hparam {k}={v}" for k, v in hp.items()]
    lines += [
        "step:1/20000 train_loss:9.0100 train_time:130ms step_avg:130.00ms tok_s:6049476",
        "step:500/20000 val_loss:2.9000 val_bpb:1.2000",
        f"stopping_early: wallclock_cap train_time:{train_ms}ms step:4550/20000",
        f"wallclock train_time:{train_ms}ms gptq_time:{gptq_ms}ms total:{total}ms limit:{wall_limit_ms}ms",
        "peak_memory allocated:40000MiB reserved:42000MiB",
        "final_prequant val_loss:2.80000000 val_bpb:1.08730000 eval_time:9000ms",
        f"artifact code_bytes:{code_bytes} model_bytes:{total_bytes - code_bytes} "
        f"total_bytes:{total_bytes} limit_bytes:{limit_bytes}",
        *extra,
    ]
    if over_limit:
        lines.append(f"artifact_over_limit total_bytes:{total_bytes} limit_bytes:{limit_bytes}")
    else:
        lines += [
            "final_roundtrip val_loss:2.83000000 val_bpb:1.09970000 eval_time:9000ms",
            "final_sliding val_loss:2.80000000 val_bpb:1.08290000 eval_time:121000ms",
            f"final_ttt val_loss:2.79000000 val_bpb:{bpb:.8f} eval_time:367000ms",
        ]
        if final_score:
            lines.append(f"final_score val_bpb:{bpb:.8f} stage:{stage} total_bytes:{total_bytes}")
    return source + "\n".join(lines) + "\n"


SEEDS = [(1337, 1.0808, 15_991_930), (42, 1.0812, 15_990_001), (2025, 1.0801, 15_993_456)]


@pytest.fixture
def env(tmp_path: Path):
    """Writes logs and a script into tmp_path and runs the packager's main() in-process."""
    class Env:
        root = tmp_path
        out = tmp_path / "out"
        script = tmp_path / "train_gpt.py"
        folder = tmp_path / "out" / "2026-04-09_Test"

        def logs(self, texts: list[str], names: str = "abcdefgh") -> list[str]:
            paths = []
            for name, text in zip(names, texts):
                path = tmp_path / f"{name}.txt"
                path.write_text(text, encoding="utf-8")
                paths.append(str(path))
            return paths

        def package(self, texts: list[str], *extra: str, capsys=None) -> int:
            if not self.script.exists():
                self.script.write_text(FAKE_SOURCE, encoding="utf-8")
            argv = ["--name", "Test", "--author", "Ada", "--github-id", "ada", "--date", "2026-04-09",
                    "--script", str(self.script), "--out-root", str(self.out),
                    "--logs", *self.logs(texts), *extra]
            return package.main(argv)

    return Env()


def three_logs(**kwargs) -> list[str]:
    return [make_log(s, b, t, **kwargs) for s, b, t in SEEDS]


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, f"the refusal should be one line: {err!r}"
    return err


# ---- packaging ----


def test_packaged_folder_passes_check_and_numbers_match_logs(env, capsys):
    texts = three_logs()
    assert env.package(texts) == 0
    files = sorted(p.name for p in env.folder.iterdir())
    assert files == ["README.md", "requirements.txt", "submission.json", "train_gpt.py",
                     "train_seed1337.log", "train_seed2025.log", "train_seed42.log"]
    assert (env.folder / "train_gpt.py").read_bytes() == env.script.read_bytes()
    assert (env.folder / "train_seed42.log").read_text(encoding="utf-8") == texts[1]
    assert not [p for p in env.out.iterdir() if p.name.startswith(".")], "no temporary folder left"

    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    bpbs = [b for _, b, _ in SEEDS]
    mean = sum(bpbs) / len(bpbs)
    std = math.sqrt(sum((b - mean) ** 2 for b in bpbs) / (len(bpbs) - 1))
    assert sub["val_bpb"] == pytest.approx(mean, abs=5e-9)
    assert sub["val_bpb_std"] == pytest.approx(std, abs=5e-9)
    assert sub["seeds"] == [42, 1337, 2025]
    assert sub["seed_results"] == {str(s): {"val_bpb": b, "artifact_bytes": t, "stage": "ttt"}
                                   for s, b, t in SEEDS}
    assert (sub["author"], sub["github_id"], sub["name"], sub["date"], sub["track"]) == (
        "Ada", "ada", "Test", "2026-04-09", "10min_16mb")
    assert (sub["hardware"], sub["pytorch_version"]) == (HARDWARE, TORCH)
    assert sub["compliance"] == {"score_first_ttt": True, "full_validation_split": True,
                                 "artifact_under_limit": True, "train_within_wallclock": True,
                                 "gptq_calibration_in_budget": True, "three_seeds": True}
    capsys.readouterr()
    assert package.main(["--check", str(env.folder)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_technique_summary_names_every_mechanism_on_one_line(env):
    assert env.package(three_logs()) == 0
    summary = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))["technique_summary"]
    assert "\n" not in summary
    for part in ["11L×512d", "SP8192 vocab", "depth recurrence L3-5 ×3 passes from 35% of training",
                 "rank-1 per-pass LoRA on q,k,v,o", "pass embeddings",
                 "int6 matrices/int8 embeddings + brotli",
                 "eval round-trip → sliding (stride 64) → score-first TTT (sgd, all params, "
                 "3 epochs, lr 0.005, 32768-token chunks)"]:
        assert part in summary
    for unlogged in ["document-aware", "XSA", "SmearGate", "gate", "per-document"]:
        assert unlogged not in summary


NEW_MECHANISMS = {"DOC_ATTENTION": "1", "XSA_LAST_N": "4", "SMEAR_GATE": "1", "ATTN_GATE": "1",
                  "EMBED_BITS": "7"}


@pytest.mark.parametrize("mode, ttt_words", [
    (None, "score-first TTT (sgd, all params, 3 epochs"),
    ("chunked", "score-first TTT (sgd, all params, 3 epochs"),
    ("docs", "score-first per-document LoRA TTT (sgd"),
    ("phased", "score-first per-document LoRA TTT + global SGD phases (sgd"),
])
def test_technique_summary_names_newer_mechanisms_only_when_logged(mode, ttt_words):
    stages = ["roundtrip", "sliding", "ttt"]
    hp = {**HPARAMS, **NEW_MECHANISMS, **({"TTT_MODE": mode} if mode else {})}
    summary = package.technique_summary(hp, stages)
    assert "\n" not in summary
    for part in ["document-aware attention", "XSA on the last 4 layers", "SmearGate",
                 "attention output gate", "int6 matrices/int7 embeddings + brotli", ttt_words]:
        assert part in summary, f"{part!r} not in {summary!r}"
    switched_off = package.technique_summary(
        {**HPARAMS, "DOC_ATTENTION": "0", "XSA_LAST_N": "0", "SMEAR_GATE": "0", "ATTN_GATE": "0"},
        stages)
    assert not any(w in switched_off for w in ["document-aware", "XSA", "SmearGate", "gate"])


def test_readme_has_results_table_and_reproduction_commands(env):
    assert env.package(three_logs()) == 0
    readme = (env.folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Test\n")
    assert "| seed | val_bpb | stage | artifact bytes |" in readme
    assert "| 1337 | 1.08080000 | ttt | 15991930 |" in readme
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert f"**{sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}**" in readme
    commands = [line for line in readme.splitlines() if "torchrun" in line]
    assert [c.split()[0] for c in commands] == ["SEED=42", "SEED=1337", "SEED=2025"]
    command = commands[0]
    assert command.endswith("torchrun --standalone --nproc_per_node=8 train_gpt.py")
    # Same as the script's default: left out. Different from it, or no default found: spelled out.
    assert "NUM_LAYERS=" not in command and " VOCAB_SIZE=" not in command
    assert "TTT_EPOCHS=3" in command and "MODEL_DIM=512" in command and "NUM_LOOPS=2" in command
    assert "RUN_ID" not in command
    assert "DATA_PATH=" in command and "/data/datasets/fineweb10B_sp8192" in command
    assert "- [x] three_seeds" in readme


def test_one_seed_has_zero_std_and_three_seeds_false(env):
    assert env.package([make_log()]) == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert (sub["val_bpb"], sub["val_bpb_std"], sub["seeds"]) == (1.0808, 0.0, [1337])
    assert sub["compliance"]["three_seeds"] is False


def test_gptq_outside_the_total_is_flagged(env):
    assert env.package(three_logs(wall_total_ms=590_000)) == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["compliance"]["gptq_calibration_in_budget"] is False
    assert sub["compliance"]["train_within_wallclock"] is True


def test_non_record_accepts_a_run_without_clock(env):
    texts = three_logs(hparams={"MAX_WALLCLOCK_SECONDS": "0"}, wall_limit_ms=0, train_ms=900_000)
    assert env.package(texts, "--non-record") == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["track"] == "non_record_16mb"
    assert sub["compliance"]["train_within_wallclock"] is False
    assert package.main(["--check", str(env.folder)]) == 0


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_wrapped_packaging_ships_a_small_script_that_unwraps_to_the_logged_source(env, method):
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    env.script.write_text(big_source, encoding="utf-8")
    assert env.package(three_logs(source=big_source), "--wrap", method) == 0
    shipped = (env.folder / "train_gpt.py").read_text(encoding="utf-8")
    assert package.is_wrapper(shipped) and f"import {method} as L" in shipped
    assert len(shipped) < len(big_source) / 2
    assert package.unwrap(shipped) == big_source
    assert package.main(["--check", str(env.folder)]) == 0


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_a_wrapped_run_counts_its_wrapper_and_must_ship_it(env, capsys, method):
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    env.script.write_text(big_source, encoding="utf-8")
    wrapper_bytes = len(package.make_wrapper(big_source, method).encode("utf-8"))
    texts = three_logs(source=big_source, code_bytes=wrapper_bytes)
    # Shipping the plain script would make the artifact bigger than the runs measured.
    assert env.package(texts) == 2
    err = last_error(capsys)
    assert f"{wrapper_bytes} code bytes, {method}) with --wrap {method}" in err, err
    assert not env.out.exists()
    assert env.package(texts, "--wrap", method) == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["seed_results"]["1337"]["artifact_bytes"] == 15_991_930
    assert (env.folder / "train_gpt.py").stat().st_size == wrapper_bytes
    assert package.main(["--check", str(env.folder)]) == 0


def test_the_wrapper_that_ran_can_be_shipped_as_is(env):
    # A wrapper whose compressed bytes differ from what make_wrapper makes here (another
    # compressor version; here another preset): its size is checked against the file itself.
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    wrapper = package.make_wrapper(big_source, "lzma")
    _, literal = package._wrapper_parts(wrapper)
    other = base64.b85encode(lzma.compress(big_source.encode("utf-8"), preset=1)).decode("ascii")
    wrapper = wrapper.replace(literal, other)
    env.script.write_text(wrapper, encoding="utf-8")
    texts = three_logs(source=big_source, code_bytes=len(wrapper.encode("utf-8")))
    assert env.package(texts) == 0
    assert (env.folder / "train_gpt.py").read_text(encoding="utf-8") == wrapper
    assert package.main(["--check", str(env.folder)]) == 0


def test_blank_line_before_separator_is_the_same_source(env):
    texts = three_logs()
    texts[1] = texts[1].replace(FAKE_SOURCE, FAKE_SOURCE + "\n", 1)
    assert env.package(texts) == 0


def test_force_replaces_an_existing_folder(env, capsys):
    assert env.package(three_logs()) == 0
    before = (env.folder / "submission.json").read_text(encoding="utf-8")
    assert env.package(three_logs()) == 2
    err = last_error(capsys)
    assert "already exists" in err and "--force" in err
    assert (env.folder / "submission.json").read_text(encoding="utf-8") == before
    assert env.package([make_log()], "--force") == 0
    assert json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))["seeds"] == [1337]


# ---- refusals: exit code 2, one sentence naming the problem, nothing written ----

REFUSALS = {
    "source_differs": (lambda: [make_log(1), make_log(2), make_log(3, source=FAKE_SOURCE + "x = 1\n")],
                       (), ["c.txt", "differs from", "a.txt", "line 8"]),
    "missing_final_score": (lambda: [make_log(1), make_log(2, final_score=False)],
                            (), ["b.txt", "no final_score"]),
    "artifact_total_over_limit": (lambda: [make_log(1, total_bytes=16_000_001)],
                                  (), ["a.txt", "over the size limit"]),
    "artifact_over_limit_line": (lambda: [make_log(1), make_log(2, total_bytes=16_100_000, over_limit=True)],
                                 (), ["b.txt", "over the size limit"]),
    "training_over_cap": (lambda: [make_log(1, train_ms=590_000, gptq_ms=12_000)],
                          (), ["a.txt", "602000ms", "over its 600000ms"]),
    "no_clock": (lambda: [make_log(1, hparams={"MAX_WALLCLOCK_SECONDS": "0"}, wall_limit_ms=0)],
                 (), ["a.txt", "MAX_WALLCLOCK_SECONDS=0,", "--non-record"]),
    "clock_over_600": (lambda: [make_log(1, hparams={"MAX_WALLCLOCK_SECONDS": "900"}, wall_limit_ms=900_000)],
                       (), ["a.txt", "MAX_WALLCLOCK_SECONDS=900,"]),
    "duplicated_seed": (lambda: [make_log(7), make_log(8), make_log(7, bpb=1.09)],
                        (), ["c.txt", "a.txt", "SEED=7"]),
    "val_tokens_limit": (lambda: [make_log(1), make_log(2, hparams={"VAL_TOKENS_LIMIT": "65536"},
                                                        extra=("val_tokens_limit tokens:65536",))],
                         (), ["b.txt", "VAL_TOKENS_LIMIT=65536", "VAL_TOKENS_LIMIT=0"]),
    "hardware_differs": (lambda: [make_log(1), make_log(2, hardware="8xNVIDIA H200")],
                         (), ["b.txt", "hardware"]),
    "torch_differs": (lambda: [make_log(1), make_log(2, torch_version="2.8.0")],
                      (), ["b.txt", "torch version"]),
    "hparams_differ": (lambda: [make_log(1), make_log(2, hparams={"TTT_LR": "0.01"})],
                       (), ["b.txt", "TTT_LR=0.01", "only in SEED"]),
    "no_separator": (lambda: [make_log(1).replace(SEP, "=" * 99)], (), ["a.txt", "100 '='"]),
    "script_differs": (lambda: [make_log(1, source="print('other')\n")],
                       (), ["train_gpt.py", "differs from the source recorded in", "a.txt", "--script"]),
    "wrapped_script_too_big": (lambda: [make_log(1, total_bytes=15_999_990)],
                               ("--wrap", "lzma"), ["--wrap", "over 16000000"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_exits_2_with_one_sentence_and_writes_nothing(env, capsys, case):
    texts, extra, needles = REFUSALS[case]
    assert env.package(texts(), *extra) == 2
    err = last_error(capsys)
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not env.out.exists()


def test_missing_log_file_is_refused(env, capsys):
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    argv = ["--name", "Test", "--script", str(env.script), "--out-root", str(env.out),
            "--logs", str(env.root / "nope.txt")]
    assert package.main(argv) == 2
    assert "nope.txt" in last_error(capsys)
    assert not env.out.exists()


# ---- tampered logs: every number is recomputed from the lines that measured it ----


def honest_logs() -> list[str]:
    """Three valid logs whose TTT scores (1.0851-1.0862) are worse than their sliding score
    (1.0829), so claiming the earlier stage would be a tempting edit."""
    return [make_log(s, b + 0.005, t) for s, b, t in SEEDS]


def _edit(pattern: str, replacement: str):
    """A tampering that rewrites the first match of `pattern` (a multi-line regex) in a log."""
    def tamper(text: str) -> str:
        edited, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
        assert count == 1, f"{pattern!r} matched nothing"
        return edited
    return tamper


CODE_BYTES = len(FAKE_SOURCE.encode("utf-8"))
# Applied to seed 1337's log (val_bpb 1.0858, 15991930 bytes): tampering -> message fragments.
LOG_TAMPERING = {
    "score_val_bpb_edited": (_edit(r"^final_score val_bpb:\S+", "final_score val_bpb:1.00000000"),
                             ["'final_score val_bpb:1.00000000", "does not match final_ttt "
                              "val_bpb:1.08580000"]),
    "stage_switched_to_earlier_better_stage": (
        _edit(r"^final_score val_bpb:\S+ stage:ttt", "final_score val_bpb:1.08290000 stage:sliding"),
        ["names stage:sliding", "last stage that ran is ttt", "never the best one"]),
    "second_final_score_appended": (
        lambda text: text + "final_score val_bpb:1.00000000 stage:ttt total_bytes:15991930\n",
        ["is a second final_score line", "a run writes it once"]),
    "final_score_total_bytes_100": (_edit(r"^(final_score .* total_bytes:)\d+", r"\g<1>100"),
                                    ["total_bytes:100", "artifact line", "measured 15991930"]),
    "artifact_total_bytes_edited": (_edit(r"^(artifact .* total_bytes:)\d+", r"\g<1>100"),
                                    ["'artifact code_bytes:", "has total_bytes:100",
                                     "code_bytes + model_bytes = 15991930"]),
    "artifact_code_bytes_edited": (
        _edit(rf"^artifact code_bytes:{CODE_BYTES} model_bytes:\d+",
              f"artifact code_bytes:100 model_bytes:{15_991_930 - 100}"),
        ["counts code_bytes:100", f"logged source is {CODE_BYTES} bytes", "lzma and brotli"]),
    "duplicate_artifact_line": (_edit(r"^(artifact .*\n)", r"\1\1"), ["is a second artifact line"]),
    "duplicate_final_ttt_line": (_edit(r"^(final_ttt .*\n)", r"\1\1"), ["is a second final_ttt line"]),
    "final_score_before_its_stage_line": (_edit(r"^(final_ttt .*\n)(final_score .*\n)", r"\2\1"),
                                          ["comes before the final_ttt line it reports"]),
    "stage_lines_reordered": (
        _edit(r"^(final_sliding .*\n)(final_ttt .*\n)final_score val_bpb:\S+ stage:ttt",
              r"\2\1final_score val_bpb:1.08290000 stage:sliding"),
        ["'final_ttt", "comes before final_sliding", "in the order prequant, roundtrip, sliding, ttt"]),
    "score_withheld_and_final_score": (
        _edit(r"^(final_score .*\n)", "score_withheld reason:artifact_over_limit (see the "
              r"artifact_over_limit line)\n\1"),
        ["comes with a score_withheld line", "writes no final_score"]),
}


def assert_names_the_line(err: str, file_name: str, needles: list[str]) -> None:
    assert err.startswith("error: ")
    assert re.search(rf"line \d+ of \S*{re.escape(file_name)}", err), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "as train_gpt.py wrote it" in err or "unedited log" in err, err


@pytest.mark.parametrize("case", sorted(LOG_TAMPERING))
def test_tampered_log_is_refused_naming_the_line_and_nothing_is_written(env, capsys, case):
    tamper, needles = LOG_TAMPERING[case]
    texts = honest_logs()
    texts[0] = tamper(texts[0])
    assert env.package(texts) == 2
    assert_names_the_line(last_error(capsys), "a.txt", needles)
    assert not env.out.exists()


@pytest.mark.parametrize("case", sorted(LOG_TAMPERING))
def test_check_refuses_a_folder_whose_log_was_tampered(env, capsys, case):
    assert env.package(honest_logs()) == 0
    tamper, needles = LOG_TAMPERING[case]
    log = env.folder / "train_seed1337.log"
    log.write_text(tamper(log.read_text(encoding="utf-8")), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in env.folder.iterdir()}
    capsys.readouterr()
    assert package.main(["--check", str(env.folder)]) == 2
    assert_names_the_line(last_error(capsys), "train_seed1337.log", needles)
    assert {p.name: p.read_bytes() for p in env.folder.iterdir()} == before


def test_submission_numbers_come_from_the_measuring_lines_not_final_score():
    run = package.parse_log(make_log(1337), name="a.txt")
    run.score = package.Score(1.0, "ttt", 100)  # what an edited final_score would claim
    sub = package.build_submission([run], "Ada", "ada", "Test", "2026-04-09", non_record=False)
    assert sub["val_bpb"] == 1.0808
    assert sub["seed_results"]["1337"] == {"val_bpb": 1.0808, "artifact_bytes": 15_991_930,
                                           "stage": "ttt"}


def test_new_informational_lines_and_fields_are_ignored(env):
    extra = ("ttt_mode docs", "attention_kernel flash3", "artifact_checksum sha256:0123abcd",
             "run_info attention:flash3")
    texts = [make_log(s, b, t, extra=extra) for s, b, t in SEEDS]
    texts = [t.replace(" eval_time:", " docs:50 eval_time:") for t in texts]
    assert env.package(texts) == 0
    assert package.main(["--check", str(env.folder)]) == 0


# ---- --check ----


def _edit_json(folder: Path, edit) -> None:
    path = folder / "submission.json"
    sub = json.loads(path.read_text(encoding="utf-8"))
    edit(sub)
    path.write_text(json.dumps(sub), encoding="utf-8")


TAMPERING = {
    "mean": (lambda f: _edit_json(f, lambda s: s.update(val_bpb=1.07)), "val_bpb is 1.07"),
    "std": (lambda f: _edit_json(f, lambda s: s.update(val_bpb_std=0.0)), "val_bpb_std"),
    "artifact_bytes": (lambda f: _edit_json(f, lambda s: s["seed_results"]["42"].update(artifact_bytes=1)),
                       "seed_results.42.artifact_bytes"),
    "hardware": (lambda f: _edit_json(f, lambda s: s.update(hardware="1xA100")), "hardware"),
    "compliance": (lambda f: _edit_json(f, lambda s: s["compliance"].update(three_seeds=False)),
                   "compliance.three_seeds"),
    "script": (lambda f: (f / "train_gpt.py").write_text("print('changed')\n"), "differs from the source"),
    "removed_log": (lambda f: (f / "train_seed2025.log").unlink(), "seeds"),
    "renamed_log": (lambda f: (f / "train_seed2025.log").rename(f / "train_seed7.log"), "rename it"),
    "readme_table": (lambda f: (f / "README.md").write_text("# Test\n"), "README.md"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_check_refuses_a_folder_that_disagrees_with_its_logs(env, capsys, case):
    assert env.package(three_logs()) == 0
    tamper, needle = TAMPERING[case]
    tamper(env.folder)
    capsys.readouterr()
    assert package.main(["--check", str(env.folder)]) == 2
    assert needle in last_error(capsys)


def test_cli_runs_as_a_script(env):
    assert env.package(three_logs()) == 0
    cli = [sys.executable, str(REPO / "records" / "package.py")]
    ok = subprocess.run([*cli, "--check", str(env.folder)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cli, "--name", "Test", "--script", str(env.script), "--out-root",
                          str(env.out), "--logs", *env.logs([make_log(1, final_score=False)], "z")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "z.txt has no final_score" in bad.stderr


# ---- log parsing ----


def test_parse_log_reads_every_contract_line():
    run = package.parse_log(make_log(1337), name="x.txt")
    assert run.source == FAKE_SOURCE
    assert run.run_info == {"python": "3.12.3", "torch": TORCH, "device": "cuda", "world_size": "8",
                            "hardware": HARDWARE}
    assert run.seed == 1337 and run.hparams["PASS_LORA_TARGETS"] == "q,k,v,o"
    assert run.score == package.Score(1.0808, "ttt", 15_991_930)
    assert run.artifact == {"code_bytes": len(FAKE_SOURCE.encode()), "total_bytes": 15_991_930,
                            "model_bytes": 15_991_930 - len(FAKE_SOURCE.encode()), "limit_bytes": 16_000_000}
    assert run.wallclock == {"train_time": 588_000, "gptq_time": 11_000, "total": 599_000, "limit": 600_000}
    assert run.finals["sliding"] == {"val_loss": 2.8, "val_bpb": 1.0829, "eval_time": 121_000}
    assert run.stopped_early and run.over_limit_line is None and run.max_wallclock_seconds == 600


def test_source_ends_at_the_first_separator():
    text = make_log(1)
    run = package.parse_log(text + SEP + "\nhparam SEED=5\n")
    assert run.source == FAKE_SOURCE and run.seed == 5


# ---- self-extracting wrapper ----

PROBE_SOURCE = '''\
import hashlib

# The same lookup train_gpt.py uses to log its own source, wrapped or not.
code = globals().get("_WRAPPED_SOURCE")
if code is None:
    with open(__file__, encoding="utf-8") as f:
        code = f.read()


def main() -> None:
    print("main ran as", __name__, "×")
    print("source sha256", hashlib.sha256(code.encode("utf-8")).hexdigest())
    print("sum of squares", sum(i * i for i in range(1000)))


if __name__ == "__main__":
    main()
'''


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_wrapper_runs_the_source_like_the_plain_script(tmp_path, method):
    plain, wrapped = tmp_path / "plain.py", tmp_path / "wrapped.py"
    plain.write_text(PROBE_SOURCE, encoding="utf-8")
    wrapped.write_text(package.make_wrapper(PROBE_SOURCE, method), encoding="utf-8")
    outputs = [subprocess.run([sys.executable, str(p)], capture_output=True, text=True,
                              encoding="utf-8", cwd=tmp_path) for p in (plain, wrapped)]
    assert [o.returncode for o in outputs] == [0, 0], outputs[1].stderr
    assert outputs[0].stdout == outputs[1].stdout
    digest = hashlib.sha256(PROBE_SOURCE.encode("utf-8")).hexdigest()
    assert outputs[1].stdout.splitlines() == ["main ran as __main__ ×", f"source sha256 {digest}",
                                              "sum of squares 332833500"]


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_wrapper_is_small_valid_python310_and_unwraps_exactly(method):
    source = Path(package.__file__).read_text(encoding="utf-8") + "# ünïcode ×\n"
    wrapper = package.make_wrapper(source, method)
    ast.parse(wrapper, feature_version=(3, 10))
    assert len(wrapper.splitlines()) == 3
    assert len(wrapper.encode("utf-8")) < len(source.encode("utf-8")) / 2
    assert package.unwrap(wrapper) == source
    assert package.script_source(wrapper) == source and package.script_source(source) == source


def test_unwrap_parses_without_executing():
    wrapper = package.make_wrapper("print('hi')\n", "lzma") + "raise SystemExit('executed')\n"
    assert package.unwrap(wrapper) == "print('hi')\n"
    with pytest.raises(ValueError, match="not a self-extracting wrapper"):
        package.unwrap(PROBE_SOURCE)
    assert package.make_wrapper(PROBE_SOURCE, "none") == PROBE_SOURCE


def test_make_wrapper_writes_a_runnable_wrapper_of_the_script(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text('print("hello from", __file__.rsplit("/", 1)[-1])\n' + "# padding\n" * 200)
    out = tmp_path / "train_gpt_lzma.py"
    assert package.main(["--script", str(script), "--wrap", "lzma", "--make-wrapper", str(out)]) == 0
    assert package.unwrap(out.read_text()) == script.read_text()
    assert out.stat().st_size < script.stat().st_size
    run = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "hello from train_gpt_lzma.py"
