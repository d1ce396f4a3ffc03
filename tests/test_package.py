"""Tests of records/package.py: packaging run logs into a submission folder, refusals, --check,
--rescore and the self-extracting wrapper. Most logs are synthetic, written in the log-line
contract, with a fake artifact and validation shard beside them; the tests at the end package
one real tiny CPU run of train_gpt.py."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import lzma
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_RUN_ENV, run_script

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
    'print("fake train_gpt ×", NUM_LAYERS)\n'
)

HPARAMS = {
    "SEED": "1337", "VOCAB_SIZE": "8192", "NUM_LAYERS": "11", "MODEL_DIM": "512",
    "NUM_HEADS": "8", "NUM_KV_HEADS": "4", "MLP_MULT": "4", "TRAIN_SEQ_LEN": "2048",
    "TRAIN_BATCH_TOKENS": "786432", "LOOP_START": "3", "LOOP_END": "5", "NUM_LOOPS": "2",
    "ENABLE_LOOPING_AT": "0.35", "PASS_LORA_RANK": "1", "PASS_LORA_TARGETS": "q,k,v,o",
    "PASS_EMBED": "1", "MATRIX_BITS": "6", "EMBED_BITS": "8", "COMPRESSOR": "brotli",
    "EVAL_STRIDE": "64", "TTT_ENABLED": "1",
    "TTT_EPOCHS": "3", "TTT_LR": "0.005", "TTT_CHUNK_TOKENS": "32768", "VAL_TOKENS_LIMIT": "0",
    "MAX_WALLCLOCK_SECONDS": "600",
}
HARDWARE = "8xNVIDIA H100 80GB HBM3"
TORCH = "2.9.1+cu128"
SEP = "=" * 100
# The validation split the env fixture writes (relative to tmp_path, the current directory):
# the challenge's 50,000 documents of two tokens each.
VAL_DIR = "data/datasets/fineweb10B_sp8192"
VAL_DOCS = 50_000
VAL_TOKENS = 2 * VAL_DOCS
BPB_PER_NAT = 0.3874  # tokens / bytes / ln 2 of the synthetic split: the same on every stage line
TOKENIZER_SHA256 = hashlib.sha256(b"the tokenizer of the synthetic split").hexdigest()


def shard(tokens: list[int]) -> bytes:
    """A validation shard in the challenge's format: 256 int32 header words, uint16 tokens."""
    header = struct.pack("<3i", 20240520, 1, len(tokens)).ljust(1024, b"\0")
    return header + struct.pack(f"<{len(tokens)}H", *tokens)


@functools.lru_cache(maxsize=None)
def fake_artifact(path: str, size: int) -> tuple[bytes, str]:
    """The bytes of the synthetic artifact at `path` (its content depends on the path) and
    their SHA-256."""
    data = (f"artifact {path}\n".encode() * (size // 10 + 1))[:size]
    return data, hashlib.sha256(data).hexdigest()


def stage_line(stage: str, bpb: float, eval_ms: int) -> str:
    return (f"final_{stage} val_loss:{bpb / BPB_PER_NAT:.8f} val_bpb:{bpb:.8f} "
            f"eval_time:{eval_ms}ms")


def make_log(seed: int = 1337, bpb: float = 1.0808, total_bytes: int = 191_930, *,
             source: str = FAKE_SOURCE, stage: str = "ttt", limit_bytes: int = 16_000_000,
             train_ms: int = 588_000, gptq_ms: int = 11_000, wall_total_ms: int | None = None,
             wall_limit_ms: int = 600_000, hparams: dict[str, str] | None = None,
             final_score: bool = True, over_limit: bool = False, hardware: str = HARDWARE,
             torch_version: str = TORCH, extra: tuple[str, ...] = (),
             ran: str | None = None, val_tokens: int = VAL_TOKENS,
             tokenizer_sha256: str = TOKENIZER_SHA256) -> str:
    """A run log in the contract's format, for one seed. `ran` is the file the run ran
    (default: `source` itself; pass a wrapper for a run of a --make-wrapper wrapper, and its
    minified source as `source`, which is what a wrapper logs): its bytes are the code bytes,
    its SHA-256 the script line's sha256, and the wrapper's _SOURCE_SHA256 (else the same
    SHA-256) its source_sha256. The artifact is fake_artifact(f"model_{seed}.ptz", model bytes),
    relative to the current directory."""
    hp = {**HPARAMS, "SEED": str(seed), "RUN_ID": f"run_{seed}", "DATA_PATH": VAL_DIR,
          **(hparams or {})}
    ran_bytes = (source if ran is None else ran).encode("utf-8")
    ran_sha256 = hashlib.sha256(ran_bytes).hexdigest()
    named = re.match(r'import \w+ as L\n_SOURCE_SHA256="(\w+)"', ran or "")
    source_sha256 = named[1] if named else ran_sha256
    code_bytes = len(ran_bytes)
    model_bytes = total_bytes - code_bytes
    artifact = f"model_{seed}.ptz"
    total = wall_total_ms if wall_total_ms is not None else train_ms + gptq_ms
    lines = [SEP, f"run_info python:3.12.3 torch:{torch_version} device:cuda world_size:8 hardware:{hardware}",
             f"script path:train_gpt.py bytes:{code_bytes} sha256:{ran_sha256} source_sha256:{source_sha256}"]
    lines += [f"hparam {k}={v}" for k, v in hp.items()]
    lines += [
        f"data val_tokens:{val_tokens} tokenizer:data/tokenizers/fineweb_8192_bpe.model "
        f"tokenizer_sha256:{tokenizer_sha256} data_path:{VAL_DIR}",
        # Each seed trains its own curve.
        f"step:1/20000 train_loss:{9 + seed % 9973 / 10000:.4f} train_time:130ms step_avg:130.00ms tok_s:6049476",
        "step:500/20000 val_loss:2.9000 val_bpb:1.2000",
        f"step:4550/20000 train_loss:{2.8 + seed % 9973 / 10000:.4f} train_time:{train_ms}ms step_avg:129.23ms",
        f"stopping_early: wallclock_cap train_time:{train_ms}ms step:4550/20000",
        f"serialize compressor:brotli bytes:{model_bytes} time:900ms path:{artifact} "
        f"sha256:{fake_artifact(artifact, model_bytes)[1]}",
        f"wallclock train_time:{train_ms}ms gptq_time:{gptq_ms}ms total:{total}ms limit:{wall_limit_ms}ms",
        "peak_memory allocated:40000MiB reserved:42000MiB",
        stage_line("prequant", 1.0873, 9000),
        f"artifact code_bytes:{code_bytes} model_bytes:{model_bytes} "
        f"total_bytes:{total_bytes} limit_bytes:{limit_bytes}",
        *extra,
    ]
    if over_limit:
        lines.append(f"artifact_over_limit total_bytes:{total_bytes} limit_bytes:{limit_bytes}")
    else:
        lines += [stage_line("roundtrip", 1.0997, 9000), stage_line("sliding", 1.0829, 121_000),
                  stage_line("ttt", bpb, 367_000)]
        if final_score:
            lines.append(f"final_score val_bpb:{bpb:.8f} stage:{stage} total_bytes:{total_bytes}")
    # train_gpt.py ends the source with a newline before the separator (a minified one has none).
    return source + ("" if source.endswith("\n") else "\n") + "\n".join(lines) + "\n"


SEEDS = [(1337, 1.0808, 191_930), (42, 1.0812, 190_001), (2025, 1.0801, 193_456)]


def write_artifacts(texts: list[str], root: Path) -> None:
    """The artifact each log's serialize (or artifact_loaded) line names, of the size it records."""
    for text in texts:
        m = (re.search(r"^serialize .* bytes:(?P<size>\d+) .* path:(?P<path>\S+) sha256:", text, flags=re.M)
             or re.search(r"^artifact_loaded path:(?P<path>\S+) bytes:(?P<size>\d+) ", text, flags=re.M))
        if m and not (root / m["path"]).exists():
            (root / m["path"]).write_bytes(fake_artifact(m["path"], int(m["size"]))[0])


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    """Writes logs, their artifacts, a script and the validation split into tmp_path, makes it
    the current directory (logs name both relative to it) and runs the packager's main()
    in-process."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / VAL_DIR).mkdir(parents=True)
    (tmp_path / VAL_DIR / "fineweb_val_000000.bin").write_bytes(shard([1, 7] * VAL_DOCS))

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

        def package(self, texts: list[str], *extra: str, artifacts: bool = True) -> int:
            if not self.script.exists():
                self.script.write_text(FAKE_SOURCE, encoding="utf-8")
            if artifacts:
                write_artifacts(texts, tmp_path)
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
    assert files == ["README.md", "artifact_seed1337.ptz", "artifact_seed2025.ptz",
                     "artifact_seed42.ptz", "requirements.txt", "submission.json", "train_gpt.py",
                     "train_seed1337.log", "train_seed2025.log", "train_seed42.log"]
    assert (env.folder / "train_gpt.py").read_bytes() == env.script.read_bytes()
    assert (env.folder / "train_seed42.log").read_text(encoding="utf-8") == texts[1]
    assert (env.folder / "artifact_seed42.ptz").read_bytes() == (env.root / "model_42.ptz").read_bytes()
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
                 "eval round-trip → sliding (stride 64) → score-first TTT (3 epochs, lr 0.005, 32768-token chunks)"]:
        assert part in summary
    for unlogged in ["document-aware", "XSA", "SmearGate", "gate", "per-document"]:
        assert unlogged not in summary


NEW_MECHANISMS = {"DOC_ATTENTION": "1", "XSA_LAST_N": "4", "SMEAR_GATE": "1", "ATTN_GATE": "1",
                  "EMBED_BITS": "7"}


@pytest.mark.parametrize("mode, ttt_words", [
    (None, "score-first TTT (3 epochs"),
    ("chunked", "score-first TTT (3 epochs"),
    ("docs", "score-first per-document LoRA TTT (3 epochs"),
    ("phased", "score-first per-document LoRA TTT + global SGD phases (3 epochs"),
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
    assert "| 1337 | 1.08080000 | ttt | 191930 |" in readme
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
    # The data the run read (logged relative to where it ran), seen from the submission folder.
    assert " DATA_PATH=../../data/datasets/fineweb10B_sp8192 " in command and "TOKENIZER_PATH" not in command
    assert "- [x] three_seeds" in readme
    sha = fake_artifact("model_1337.ptz", MODEL_BYTES)[1]
    assert f"| 1337 | `artifact_seed1337.ptz` | {MODEL_BYTES} | `{sha}` |" in readme


def test_the_reproduction_command_names_the_logged_data_and_tokenizer(env):
    local = {"DATA_PATH": "/srv/local_sp1024", "TOKENIZER_PATH": "tok/local_1024_bpe.model"}
    assert env.package(three_logs(hparams=local), "--full-val-tokens", str(VAL_TOKENS)) == 0
    command = next(line for line in (env.folder / "README.md").read_text().splitlines() if "torchrun" in line)
    assert " DATA_PATH=/srv/local_sp1024 TOKENIZER_PATH=../../tok/local_1024_bpe.model " in command
    assert "fineweb10B" not in command


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
def test_wrapped_packaging_ships_a_small_script_that_runs_the_minified_logged_source(env, method):
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    env.script.write_text(big_source, encoding="utf-8")
    assert env.package(three_logs(source=big_source), "--wrap", method) == 0
    shipped = (env.folder / "train_gpt.py").read_text(encoding="utf-8")
    assert package.is_wrapper(shipped) and f"import {method} as L" in shipped
    assert len(shipped) < len(big_source) / 2
    assert package.unwrap(shipped) == package.minify(big_source)
    # The readable script it was made of ships beside it, byte for byte.
    assert (env.folder / "train_gpt_readable.py").read_bytes() == env.script.read_bytes()
    readme = (env.folder / "README.md").read_text(encoding="utf-8")
    assert (f"`train_gpt.py` is the packager's self-extracting wrapper of `train_gpt_readable.py` "
            f"(python-minifier 3.4.0, then {method})") in readme
    assert package.main(["--check", str(env.folder)]) == 0


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_a_wrapped_run_counts_its_wrapper_and_must_ship_it(env, capsys, method):
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    env.script.write_text(big_source, encoding="utf-8")
    wrapper = package.make_wrapper(big_source, method)
    wrapper_bytes = len(wrapper.encode("utf-8"))
    texts = three_logs(source=package.minify(big_source), ran=wrapper)  # a wrapper logs what it runs
    # Shipping the plain script would make the artifact bigger than the runs measured.
    assert env.package(texts) == 2
    err = last_error(capsys)
    assert f"{wrapper_bytes} code bytes, {method}) with --wrap {method}" in err, err
    assert not env.out.exists()
    assert env.package(texts, "--wrap", method) == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["seed_results"]["1337"]["artifact_bytes"] == 191_930
    assert (env.folder / "train_gpt.py").stat().st_size == wrapper_bytes
    assert package.main(["--check", str(env.folder)]) == 0


def other_compressor_wrapper(readable: str) -> str:
    """The template around another lzma stream of the same minified text (as another lzma
    version would compress it; here another preset)."""
    minified = package.minify(readable)
    blob = lzma.compress(minified.encode("utf-8"), preset=1)
    wrapper = package.WRAPPER_TEMPLATE.format(
        method="lzma", sha256=hashlib.sha256(readable.encode("utf-8")).hexdigest(),
        digits=package._encode(blob), size=len(blob))
    assert wrapper != package.make_wrapper(readable, "lzma")
    return wrapper


def test_the_wrapper_that_ran_can_be_shipped_as_is(env):
    # A wrapper whose compressed bytes differ from what make_wrapper makes here (another
    # compressor version): its size is checked against the file itself, its readable script
    # comes from --source.
    big_source = FAKE_SOURCE + Path(package.__file__).read_text(encoding="utf-8")
    readable = env.root / "readable.py"
    readable.write_text(big_source, encoding="utf-8")
    wrapper = other_compressor_wrapper(big_source)
    env.script.write_text(wrapper, encoding="utf-8")
    texts = three_logs(source=package.minify(big_source), ran=wrapper)
    assert env.package(texts, "--source", str(readable)) == 0
    assert (env.folder / "train_gpt.py").read_text(encoding="utf-8") == wrapper
    assert (env.folder / "train_gpt_readable.py").read_text(encoding="utf-8") == big_source
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
    "hardware_differs": (lambda: [make_log(1), make_log(2, hardware="8xNVIDIA H100 NVL")],
                         (), ["b.txt", "hardware"]),
    "torch_differs": (lambda: [make_log(1), make_log(2, torch_version="2.8.0")],
                      (), ["b.txt", "torch version"]),
    "hparams_differ": (lambda: [make_log(1), make_log(2, hparams={"TTT_LR": "0.01"})],
                       (), ["b.txt", "TTT_LR=0.01", "only in SEED"]),
    "no_separator": (lambda: [make_log(1).replace(SEP, "=" * 99)], (), ["a.txt", "100 '='"]),
    # Records: 8xH100, the 600 s clock and the whole validation split, all named at once.
    "one_h100": (lambda: [make_log(1), make_log(2, hardware="1xNVIDIA H100 80GB HBM3")],
                 (), ["b.txt is not a 10min_16mb record", "'1xNVIDIA H100 80GB HBM3', not 8xH100",
                      "--non-record"]),
    "eight_a100": (lambda: [make_log(1, hardware="8xNVIDIA A100-SXM4-80GB")],
                   (), ["a.txt is not a 10min_16mb record", "'8xNVIDIA A100-SXM4-80GB', not 8xH100"]),
    "val_tokens_short_of_the_split": (
        lambda: [make_log(1, val_tokens=VAL_TOKENS - 2)],
        (), ["a.txt is not a 10min_16mb record", f"scored {VAL_TOKENS - 2} validation tokens (line",
             "1 fineweb_val_*.bin shard(s) in", f"{VAL_DIR} hold {VAL_TOKENS};", "--non-record"]),
    "every_record_problem_at_once": (
        lambda: [make_log(1, val_tokens=3000, hardware="1xCPU-x86_64", wall_limit_ms=0,
                          hparams={"MAX_WALLCLOCK_SECONDS": "0.0"})],
        (), ["scored 3000 validation tokens", "'1xCPU-x86_64', not 8xH100",
             "MAX_WALLCLOCK_SECONDS=0.0, which is not a 600s-track run", "--non-record"]),
    # CaseOps data scored with the lookup tables' bytes (the operators counted as text).
    "caseops_without_sidecar": (
        lambda: [make_log(1).replace(f"data_path:{VAL_DIR}", f"data_path:{VAL_DIR} bytes:tables caseops:1")],
        (), ["a.txt used a CaseOps tokenizer but divided by its lookup-table bytes", "fineweb_val_bytes_*.bin"]),
    # Two seeds, one run.
    "log_copied_with_its_seed_changed": (
        lambda: [make_log(1), make_log(1).replace("hparam SEED=1\n", "hparam SEED=2\n")],
        (), ["b.txt (SEED=2) and", "a.txt (SEED=1) log the same training curve (2 step:",
             "its SEED edited"]),
    "two_seeds_one_artifact": (
        lambda: [make_log(1), re.sub(r"path:model_2.ptz sha256:\w+",
                                     re.search(r"path:model_1.ptz sha256:\w+", make_log(1))[0],
                                     make_log(2))],
        (), ["b.txt (SEED=2) and", "a.txt (SEED=1) name the same artifact (sha256:"]),
    # Logs without the lines that name the files.
    "no_script_line": (lambda: [re.sub(r"^script .*\n", "", make_log(1), flags=re.M)],
                       (), ["a.txt has no 'script path: bytes: sha256:' line"]),
    "serialize_line_without_hash": (
        lambda: [re.sub(r" path:\S+ sha256:\w+$", "", make_log(1), flags=re.M)],
        (), ["a.txt ('serialize compressor:brotli", "has no path: and sha256: fields",
             "an older train_gpt.py"]),
    "no_data_line": (lambda: [re.sub(r"^data .*\n", "", make_log(1), flags=re.M)],
                     (), ["a.txt has no 'data val_tokens:' line"]),
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


def _edits(*edits):
    """Several _edit tamperings, applied in turn."""
    def tamper(text: str) -> str:
        for pattern, replacement in edits:
            text = _edit(pattern, replacement)(text)
        return text
    return tamper


CODE_BYTES = len(FAKE_SOURCE.encode("utf-8"))
MODEL_BYTES = 191_930 - CODE_BYTES
# Applied to seed 1337's log (val_bpb 1.0858, 191930 bytes): tampering -> message fragments.
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
                                    ["total_bytes:100", "artifact line", "measured 191930"]),
    "artifact_total_bytes_edited": (_edit(r"^(artifact .* total_bytes:)\d+", r"\g<1>100"),
                                    ["'artifact code_bytes:", "has total_bytes:100",
                                     "code_bytes + model_bytes = 191930"]),
    # With the script and serialize lines edited to agree, only the logged source shows it.
    "artifact_code_bytes_edited": (
        _edits((rf"^script path:train_gpt.py bytes:{CODE_BYTES}", "script path:train_gpt.py bytes:100"),
               (rf"^(serialize compressor:brotli bytes:){MODEL_BYTES}", rf"\g<1>{191_930 - 100}"),
               (rf"^artifact code_bytes:{CODE_BYTES} model_bytes:\d+",
                f"artifact code_bytes:100 model_bytes:{191_930 - 100}")),
        ["counts code_bytes:100", f"logged source is {CODE_BYTES} bytes", "lzma and brotli"]),
    "script_bytes_edited": (_edit(rf"^script path:train_gpt.py bytes:{CODE_BYTES}",
                                  "script path:train_gpt.py bytes:100"),
                            ["'script path:train_gpt.py bytes:100", "has bytes:100",
                             f"counts code_bytes:{CODE_BYTES}"]),
    # The edits: each keeps final_score and the line it comes from consistent.
    "final_ttt_and_final_score_set_to_1": (
        _edits((r"^(final_ttt .* val_bpb:)\S+", r"\g<1>1.00000000"),
               (r"^final_score val_bpb:\S+", "final_score val_bpb:1.00000000")),
        ["'final_ttt val_loss:", "val_bpb/val_loss 0.356787622, but final_prequant (line",
         f"has {BPB_PER_NAT:.9f}", "the same on every line"]),
    "ttt_lines_deleted_and_score_set_to_sliding": (
        _edits((r"^final_ttt .*\n", ""),
               (r"^final_score val_bpb:\S+ stage:ttt", "final_score val_bpb:1.08290000 stage:sliding")),
        ["'hparam TTT_ENABLED=1'", "switches the ttt stage on", "no final_ttt line"]),
    "sizes_lowered_together": (
        _edits((rf"^artifact code_bytes:{CODE_BYTES} model_bytes:\d+ total_bytes:\d+",
                f"artifact code_bytes:{CODE_BYTES} model_bytes:{MODEL_BYTES - 1000} "
                f"total_bytes:{191_930 - 1000}"),
               (r"^(final_score .* total_bytes:)\d+", rf"\g<1>{191_930 - 1000}")),
        ["'serialize compressor:brotli", f"has bytes:{MODEL_BYTES},",
         f"counts model_bytes:{MODEL_BYTES - 1000}"]),
    "artifact_loaded_line_added": (
        _edit(r"^(final_prequant .*\n)", rf"\1artifact_loaded path:x.ptz bytes:{MODEL_BYTES} sha256:{'ab' * 32}\n"),
        ["'artifact_loaded path:x.ptz", "loads an artifact", "says the run wrote one"]),
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
    assert sub["seed_results"]["1337"] == {"val_bpb": 1.0808, "artifact_bytes": 191_930,
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
    "artifact_byte_flipped": (lambda f: flip_a_byte(f / "artifact_seed42.ptz"),
                              "artifact_seed42.ptz has sha256 "),
    "artifact_removed": (lambda f: (f / "artifact_seed2025.ptz").unlink(),
                         "holds no artifact_seed2025.ptz"),
    "artifact_swapped": (lambda f: (f / "artifact_seed42.ptz").write_bytes(
        (f / "artifact_seed1337.ptz").read_bytes()), "so it is not the artifact of"),
    # Log, submission.json and README agree; the log's hash does not match the artifact.
    "artifact_hash_edited_in_the_log": (
        lambda f: _edit_log(f / "train_seed42.log", r"(?<=path:model_42.ptz sha256:)\w+", "0" * 64),
        "artifact_seed42.ptz has sha256 "),
    "script_hash_edited_in_the_log": (
        lambda f: _edit_log(f / "train_seed42.log", r"(?<=^script path:train_gpt.py bytes:)(\d+) sha256:\w+",
                            r"\1 sha256:" + "0" * 64),
        f"train_gpt.py ({CODE_BYTES} bytes, sha256 "),
}


def flip_a_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def _edit_log(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(encoding="utf-8"), count=1, flags=re.M)
    assert count == 1, pattern
    path.write_text(text, encoding="utf-8")


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


# ---- the files: each artifact and the script must be the ones the logs measured ----


def test_a_missing_artifact_is_refused_naming_the_option(env, capsys):
    assert env.package(three_logs(), artifacts=False) == 2
    err = last_error(capsys)
    assert "names the artifact model_1337.ptz, but it is not at" in err and "--artifacts" in err
    assert not env.out.exists()


def test_artifacts_option_takes_the_files_in_the_order_of_the_logs(env, capsys):
    texts = three_logs()
    write_artifacts(texts, env.root)
    elsewhere = env.root / "elsewhere"
    elsewhere.mkdir()
    paths = []
    for seed, _, _ in SEEDS:
        paths.append(str(elsewhere / f"{seed}.bin"))
        (env.root / f"model_{seed}.ptz").rename(paths[-1])
    assert env.package(texts, "--artifacts", paths[1], paths[0], paths[2], artifacts=False) == 2
    assert f"{paths[1]} has {190_001 - CODE_BYTES} bytes, but line" in last_error(capsys)
    assert env.package(texts, "--artifacts", *paths[:2], artifacts=False) == 2
    assert "--artifacts lists 2 files for 3 --logs" in last_error(capsys)
    assert not env.out.exists()
    assert env.package(texts, "--artifacts", *paths, artifacts=False) == 0
    assert (env.folder / "artifact_seed2025.ptz").read_bytes() == Path(paths[2]).read_bytes()


def test_a_relative_artifact_is_found_from_the_runs_folder(env):
    # train_gpt.py writes logs/{RUN_ID}.txt and a relative ARTIFACT_PATH in the folder it ran in.
    text = make_log(1337)
    write_artifacts([text], env.root)
    run_dir = env.root / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "run_1337.txt").write_text(text, encoding="utf-8")
    (env.root / "model_1337.ptz").rename(run_dir / "model_1337.ptz")
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    assert package.main(["--name", "Test", "--date", "2026-04-09", "--script", str(env.script),
                         "--out-root", str(env.out), "--logs", str(run_dir / "logs" / "run_1337.txt")]) == 0
    assert (env.folder / "artifact_seed1337.ptz").read_bytes() == (run_dir / "model_1337.ptz").read_bytes()


def test_an_artifact_with_one_byte_flipped_is_refused_by_its_hash(env, capsys):
    texts = three_logs()
    write_artifacts(texts, env.root)
    flip_a_byte(env.root / "model_42.ptz")
    assert env.package(texts) == 2
    err = last_error(capsys)
    assert "model_42.ptz has sha256 " in err and "recorded sha256:" in err and "b.txt" in err
    assert not env.out.exists()


def test_the_script_must_be_the_file_the_runs_ran(env, capsys):
    texts = three_logs()
    texts[2] = re.sub(r"(?m)(^script .* sha256:)\w+", r"\g<1>" + "0" * 64, texts[2])
    assert env.package(texts) == 2
    err = last_error(capsys)
    assert f"train_gpt.py ({CODE_BYTES} bytes, sha256 " in err and "is not the script seed 2025 ran" in err
    assert not env.out.exists()


def test_an_eval_only_log_is_packaged_with_the_artifact_it_loaded(env, capsys):
    # EVAL_ONLY=1 logs artifact_loaded instead of serialize, and neither trains nor times training.
    text = re.sub(r"^serialize compressor:brotli bytes:(\d+) time:\d+ms (path:\S+) (sha256:\w+)$",
                  r"artifact_loaded \2 bytes:\1 \3", make_log(1337), flags=re.M)
    text = re.sub(r"^(step:|stopping_early:|wallclock |final_prequant ).*\n", "", text, flags=re.M)
    assert env.package([text]) == 2
    assert "has no complete 'wallclock ... total: limit:' line" in last_error(capsys)
    assert env.package([text], "--non-record") == 0
    assert (env.folder / "artifact_seed1337.ptz").read_bytes() == (env.root / "model_1337.ptz").read_bytes()
    assert package.main(["--check", str(env.folder)]) == 0


# ---- the validation split: its shards give its size ----


def test_non_record_says_when_only_part_of_the_split_was_scored(env):
    texts = three_logs(hparams={"VAL_TOKENS_LIMIT": "65536"}, val_tokens=65536,
                       extra=("val_tokens_limit tokens:65536",))
    assert env.package(texts, "--non-record") == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["track"] == "non_record_16mb" and sub["compliance"]["full_validation_split"] is False
    assert package.main(["--check", str(env.folder)]) == 0


def test_a_local_validation_set_is_not_the_challenges_split(env, capsys):
    # Every token of it scored, but it holds 20 documents, not the challenge's 50,000.
    (env.root / VAL_DIR / "fineweb_val_000000.bin").write_bytes(shard([1, 7] * 20))
    texts = three_logs(val_tokens=40)
    assert env.package(texts) == 2
    err = last_error(capsys)
    assert "hold 20 documents, not the challenge's 50000" in err and "--non-record" in err
    assert env.package(texts, "--non-record") == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["compliance"]["full_validation_split"] is False


def test_without_the_shards_the_full_split_needs_full_val_tokens(env, capsys):
    shutil.rmtree(env.root / VAL_DIR)
    texts = three_logs()
    assert env.package(texts, "--non-record") == 2
    err = last_error(capsys)
    assert "cannot tell whether" in err and f"no fineweb_val_*.bin shards are in {env.root / VAL_DIR}" in err
    assert "--full-val-tokens" in err
    assert env.package(texts, "--full-val-tokens", str(VAL_TOKENS + 1)) == 2
    assert f"not the full split's {VAL_TOKENS + 1} (--full-val-tokens)" in last_error(capsys)
    assert env.package(texts, "--full-val-tokens", str(VAL_TOKENS)) == 0
    sub = json.loads((env.folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["track"] == "10min_16mb" and sub["compliance"]["full_validation_split"] is True
    capsys.readouterr()
    assert package.main(["--check", str(env.folder)]) == 2
    assert "cannot tell whether" in last_error(capsys)
    assert package.main(["--check", str(env.folder), "--full-val-tokens", str(VAL_TOKENS)]) == 0


def test_full_val_tokens_must_agree_with_the_shards(env, capsys):
    assert env.package(three_logs(), "--full-val-tokens", "12345") == 2
    assert f"--full-val-tokens 12345 disagrees with the {VAL_TOKENS} tokens" in last_error(capsys)


def test_a_truncated_validation_shard_is_refused(env, capsys):
    path = env.root / VAL_DIR / "fineweb_val_000000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    assert env.package(three_logs()) == 2
    assert "fineweb_val_000000.bin is not a whole challenge shard" in last_error(capsys)


@pytest.mark.parametrize("argv", [["--check", "x", "--nproc", "2"],
                                  ["--check", "x", "--rescore-env", "TTT_LR=0.1"],
                                  ["--check", "x", "--rescore", "--rescore-env", "EVAL_ONLY=0"],
                                  ["--check", "x", "--rescore", "--rescore-env", "lowercase"],
                                  ["--check", "x", "--artifacts", "a.ptz"]])
def test_misused_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        package.main(argv)
    assert exit_info.value.code == 2


# ---- log parsing ----


def test_parse_log_reads_every_contract_line():
    run = package.parse_log(make_log(1337), name="x.txt")
    assert run.source == FAKE_SOURCE
    assert run.run_info == {"python": "3.12.3", "torch": TORCH, "device": "cuda", "world_size": "8",
                            "hardware": HARDWARE}
    assert run.seed == 1337 and run.hparams["PASS_LORA_TARGETS"] == "q,k,v,o"
    assert run.score == package.Score(1.0808, "ttt", 191_930)
    assert run.artifact == {"code_bytes": CODE_BYTES, "total_bytes": 191_930,
                            "model_bytes": MODEL_BYTES, "limit_bytes": 16_000_000}
    assert run.wallclock == {"train_time": 588_000, "gptq_time": 11_000, "total": 599_000, "limit": 600_000}
    assert run.finals["sliding"] == {"val_loss": 2.79530201, "val_bpb": 1.0829, "eval_time": 121_000}
    assert run.stopped_early and run.over_limit_line is None and run.max_wallclock_seconds == 600
    digest = hashlib.sha256(FAKE_SOURCE.encode()).hexdigest()
    assert run.script == {"tag": "script", "path": "train_gpt.py", "bytes": CODE_BYTES,
                          "sha256": digest, "source_sha256": digest}
    assert run.tokenizer_sha256 == TOKENIZER_SHA256
    assert run.artifact_file == {"tag": "serialize", "path": "model_1337.ptz", "bytes": MODEL_BYTES,
                                 "sha256": fake_artifact("model_1337.ptz", MODEL_BYTES)[1]}
    assert (run.val_tokens, run.data_path) == (VAL_TOKENS, VAL_DIR)
    assert run.curve == [("1/20000", "9.1337"), ("4550/20000", "2.9337")]


def test_source_ends_at_the_first_separator():
    text = make_log(1)
    run = package.parse_log(text + SEP + "\nhparam SEED=5\n")
    assert run.source == FAKE_SOURCE and run.seed == 5


# ---- self-extracting wrapper ----

PROBE_SOURCE = '''\
import hashlib

# The same lookups train_gpt.py makes to log its source and the readable source's SHA-256,
# wrapped or not.
code = globals().get("_WRAPPED_SOURCE")
if code is None:
    with open(__file__, encoding="utf-8") as f:
        code = f.read()
with open(__file__, "rb") as f:
    ran = hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    print("main ran as", __name__, "×")
    print("source sha256", globals().get("_SOURCE_SHA256", ran))
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
    source = Path(package.__file__).read_text(encoding="utf-8") + "x = 'ünïcode ×'\n"
    wrapper = package.make_wrapper(source, method)
    ast.parse(wrapper, feature_version=(3, 10))
    assert wrapper.isascii() and package.template_mismatch(wrapper) is None
    assert len(wrapper.encode("utf-8")) < len(source.encode("utf-8")) / 4
    minified = package.unwrap(minified_wrapper := wrapper)
    assert minified == package.minify(source) and minified.endswith("='ünïcode ×'")  # globals renamed
    ast.parse(minified, feature_version=(3, 10))
    assert package.parse_wrapper(minified_wrapper).source_sha256 == hashlib.sha256(source.encode()).hexdigest()
    assert package.script_source(wrapper) == minified and package.script_source(source) == source


def test_unwrap_parses_without_executing():
    wrapper = package.make_wrapper("raise SystemExit('executed')\n", "lzma")
    assert package.unwrap(wrapper) == "raise SystemExit('executed')"
    # Anything around the template, even one line more, is no wrapper.
    with pytest.raises(ValueError, match="its line 11 differs from the template"):
        package.unwrap(wrapper + "print('more')\n")
    with pytest.raises(ValueError, match="its line 1 differs from the template"):
        package.unwrap(PROBE_SOURCE)
    assert package.make_wrapper(PROBE_SOURCE, "none") == PROBE_SOURCE


def test_make_wrapper_writes_a_runnable_wrapper_of_the_script(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text('print("hello from", __file__.rsplit("/", 1)[-1])\n' + "# padding\n" * 200)
    out = tmp_path / "train_gpt_lzma.py"
    assert package.main(["--script", str(script), "--wrap", "lzma", "--make-wrapper", str(out)]) == 0
    assert package.unwrap(out.read_text()) == package.minify(script.read_text())
    assert out.stat().st_size < script.stat().st_size
    run = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "hello from train_gpt_lzma.py"


def test_make_wrapper_defaults_to_the_smaller_brotli_and_leaves_an_identical_file_alone(tmp_path, capsys):
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE_SOURCE, encoding="utf-8")
    out = tmp_path / "run" / "train_gpt.py"
    out.parent.mkdir()
    assert package.main(["--script", str(script), "--make-wrapper", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")
    assert out.read_bytes() == package.make_wrapper(FAKE_SOURCE, "brotli").encode("utf-8")
    # Again: the file already holds this wrapper, so nothing is written.
    mtime = out.stat().st_mtime_ns
    assert package.main(["--script", str(script), "--make-wrapper", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"unchanged {out}: ")
    assert out.stat().st_mtime_ns == mtime
    # Another wrapper there is replaced only with --force.
    assert package.main(["--script", str(script), "--wrap", "lzma", "--make-wrapper", str(out)]) == 2
    assert "exists and is not this wrapper; pass --force" in last_error(capsys)
    assert package.main(["--script", str(script), "--wrap", "lzma", "--make-wrapper", str(out), "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {out}: ")
    assert package.unwrap(out.read_text(encoding="utf-8")) == package.minify(FAKE_SOURCE)
    assert sorted(p.name for p in out.parent.iterdir()) == ["train_gpt.py"], "no temporary file left"


# ---- wrapper sizes: issue #33's code-byte target ----

# The counted code (the smallest wrapper) must stay at most PR #2135's package.REFERENCE_CODE_BYTES.
ASSERT_WRAPPER_WITHIN_REFERENCE = True


def test_sizes_prints_the_measured_wrapper_sizes_of_train_gpt(capsys):
    script = REPO / "train_gpt.py"
    assert package.main(["--sizes", "--script", str(script)]) == 0
    out = capsys.readouterr().out
    source = script.read_text(encoding="utf-8")
    minified = package.minify(source)
    lzma_bytes = len(package.make_wrapper(source, "lzma").encode("utf-8"))
    brotli_bytes = len(package.make_wrapper(source, "brotli").encode("utf-8"))
    smallest = min(lzma_bytes, brotli_bytes)
    assert out.splitlines() == [
        f"sizes script:train_gpt.py source_bytes:{script.stat().st_size} minified_bytes:"
        f"{len(minified.encode('utf-8'))} (python-minifier {package.MINIFIER_VERSION})",
        f"sizes wrapper:lzma code_bytes:{lzma_bytes}",
        f"sizes wrapper:brotli code_bytes:{brotli_bytes}",
        f"sizes smallest:{package.RECOMMENDED_WRAP} code_bytes:{smallest} reference_bytes:"
        f"{package.REFERENCE_CODE_BYTES} over_reference:{smallest - package.REFERENCE_CODE_BYTES} "
        "(reference: PR #2135, python-minifier + lzma + base85)"]
    assert brotli_bytes < lzma_bytes, "the recommended (default) wrapper is the smaller"
    with capsys.disabled():
        print("\n" + out, end="")  # the measured figures, in the test report
    if ASSERT_WRAPPER_WITHIN_REFERENCE:
        assert smallest <= package.REFERENCE_CODE_BYTES


def _module_from(source: str, name: str, monkeypatch):
    """`source` run as a module named `name` (dataclasses look their module up in sys.modules)."""
    import types
    module = types.ModuleType(name)
    module.__file__ = str(REPO / "train_gpt.py")
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def test_minified_train_gpt_keeps_every_dataclass_field_and_reads_no_docstring(monkeypatch):
    # Globals are renamed (nothing looks one up by name: the init probe imports the readable
    # script), but dataclass fields are class annotations and must stay, and docstrings go.
    import dataclasses
    source = (REPO / "train_gpt.py").read_text(encoding="utf-8")
    assert "__doc__" not in source
    plain = _module_from(source, "tg_plain", monkeypatch)
    minified = _module_from(package.minify(source), "tg_min", monkeypatch)

    def fields_of(module) -> list[tuple[str, ...]]:
        return sorted(tuple(f.name for f in dataclasses.fields(v)) for v in vars(module).values()
                      if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__)
    assert fields_of(plain) == fields_of(minified) and len(fields_of(plain)) >= 5


def test_minify_writes_f_strings_that_parse_before_python_3_12():
    # Under 3.12+ python-minifier would reuse the outer quote inside the braces (PEP 701): text
    # that 3.10 and 3.11 cannot parse and that differs from what they minify. The packager keeps
    # the older form, so every Python minifies train_gpt.py to the same text.
    assert package.minify("x = f\"{', '.join(a)}\"\n") == "A=f\"{', '.join(a)}\""  # the global renamed
    assert package.minify("y = f'{\"a\" if b else \"c\"}'\n") == "A=f\"{'a'if b else'c'}\""


# ---- the wrapper must be the packager's, byte for byte ----

HONEST_EXEC = 'exec(compile(_WRAPPED_SOURCE,__file__,"exec"))'
# Same length, same payload, but it runs the source with its layer count changed.
FAKE_EXEC = 'exec(_WRAPPED_SOURCE.replace("11","12"))'.ljust(len(HONEST_EXEC), "#")


def faked(wrapper: str) -> str:
    assert wrapper.count(HONEST_EXEC) == 1
    return wrapper.replace(HONEST_EXEC, FAKE_EXEC)


def wrapped_runs(env, method: str = "brotli", ran=None) -> tuple[str, list[str]]:
    """env.script is the readable FAKE_SOURCE; three logs of runs of its wrapper (or of `ran`,
    a function of the wrapper): what a wrapper logs is the minified source."""
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    wrapper = package.make_wrapper(FAKE_SOURCE, method)
    if ran is not None:
        wrapper = ran(wrapper)
    return wrapper, three_logs(source=package.minify(FAKE_SOURCE), ran=wrapper)


def test_the_faked_wrapper_is_refused_and_the_honest_one_accepted(env, capsys):
    honest, texts = wrapped_runs(env)
    fake = faked(honest)
    assert len(fake) == len(honest) and package.unwrap(honest) == package.minify(FAKE_SOURCE)
    with pytest.raises(ValueError, match="its line 10 differs from the template"):
        package.parse_wrapper(fake)
    # It does run something else: the payload's NUM_LAYERS default 11 becomes 12.
    for text, layers in ((honest, "11"), (fake, "12")):
        path = env.root / "probe.py"
        path.write_text(text, encoding="utf-8")
        out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=env.root)
        assert out.stdout.splitlines()[-1] == f"fake train_gpt × {layers}"
    assert env.package(texts, "--wrap", "brotli") == 0
    assert (env.folder / "train_gpt.py").read_text(encoding="utf-8") == honest
    capsys.readouterr()
    assert package.main(["--check", str(env.folder)]) == 0
    assert "ok: " in capsys.readouterr().out


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (links as their target, folders as such), by path."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"link to {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "folder"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_main(argv: list[str]) -> int:
    """package.main's exit status, also where argparse exits."""
    try:
        return package.main(argv)
    except SystemExit as exc:
        return exc.code


def _packaged(env, texts: list[str], *extra: str) -> Path:
    assert env.package(texts, *extra) == 0
    return env.folder


def _swap_in_fake(env) -> list[str]:
    """A folder as a hostile packager would leave it: the honest wrapper's folder with the fake
    wrapper shipped and each log's script line naming the fake's SHA-256 (it has the same bytes)."""
    honest, texts = wrapped_runs(env)
    folder = _packaged(env, texts, "--wrap", "brotli")
    fake = faked(honest)
    (folder / "train_gpt.py").write_text(fake, encoding="utf-8")
    for log in folder.glob("train_seed*.log"):
        _edit_log(log, r"(?<=^script path:train_gpt.py bytes:)(\d+) sha256:\w+",
                  r"\1 sha256:" + hashlib.sha256(fake.encode()).hexdigest())
    return ["--check", str(folder)]


def _fake_as_script(env) -> list[str]:
    _, texts = wrapped_runs(env, ran=faked)
    readable = env.root / "readable.py"
    readable.write_text(FAKE_SOURCE, encoding="utf-8")
    env.script.write_text(faked(package.make_wrapper(FAKE_SOURCE, "brotli")), encoding="utf-8")
    write_artifacts(texts, env.root)
    return _package_argv(env, texts, "--source", str(readable))


def _fake_run_with_honest_wrapper(env) -> list[str]:
    _, texts = wrapped_runs(env, ran=faked)
    write_artifacts(texts, env.root)
    return _package_argv(env, texts, "--wrap", "brotli")


def _package_argv(env, texts: list[str], *extra: str) -> list[str]:
    if not env.script.exists():
        env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    write_artifacts(texts, env.root)
    return ["--name", "Test", "--author", "Ada", "--date", "2026-04-09", "--script", str(env.script),
            "--out-root", str(env.out), "--logs", *env.logs(texts), *extra]


def _in_plain_folder(change):
    """--check of a packaged plain folder after `change(folder, env)`."""
    def setup(env):
        folder = _packaged(env, three_logs())
        change(folder, env)
        return ["--check", str(folder)]
    return setup


def _force_over(change):
    """Packaging again with --force over a folder after `change(folder, env)`."""
    def setup(env):
        folder = _packaged(env, three_logs())
        change(folder, env)
        return _package_argv(env, three_logs(), "--force")
    return setup


def _notes(env) -> Path:
    path = env.root / "notes.txt"
    path.write_text("my notes, not a wrapper\n", encoding="utf-8")
    return path


def _data_line(**fields):
    """Logs of seeds 1 and 2 whose data lines differ in `fields` (seed 2's)."""
    def setup(env):
        second = make_log(2)
        for key, value in fields.items():  # replaced where the line has the field, else added
            second, found = re.subn(rf"(?m)^(data .*\b{key}:)\S+", rf"\g<1>{value}", second)
            if not found:
                second = re.sub(r"(?m)^(data .*)$", rf"\1 {key}:{value}", second, count=1)
        return _package_argv(env, [make_log(1), second], "--non-record")
    return setup


def _without(pattern: str):
    def setup(env):
        return _package_argv(env, [re.sub(pattern, "", make_log(1), count=1, flags=re.M)])
    return setup


def _minifier_missing(env, monkeypatch):
    package.minify.cache_clear()
    monkeypatch.setitem(sys.modules, "python_minifier", None)  # import fails
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    return ["--script", str(env.script), "--make-wrapper", str(env.root / "w.py")]


def _minifier_other_version(env, monkeypatch):
    import importlib.metadata
    package.minify.cache_clear()
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "9.9.9" if name == "python-minifier" else real(name))
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    return ["--script", str(env.script), "--make-wrapper", str(env.root / "w.py")]


def _disk_full(env, monkeypatch):
    import errno

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(package.os, "replace", full)
    env.script.write_text(FAKE_SOURCE, encoding="utf-8")
    return ["--script", str(env.script), "--make-wrapper", str(env.root / "w.py")]


def _make_wrapper_to(target):
    def setup(env):
        env.script.write_text(FAKE_SOURCE, encoding="utf-8")
        return ["--script", str(env.script), "--make-wrapper", str(target(env))]
    return setup


def _wrapper_as_script(env) -> list[str]:
    env.script.write_text(package.make_wrapper(FAKE_SOURCE, "lzma"), encoding="utf-8")
    return ["--script", str(env.script), "--make-wrapper", str(env.root / "w.py")]


def _linked(env) -> Path:
    link = env.root / "link.py"
    link.symlink_to(_notes(env))
    return link


def _folder_with_a_file(env) -> Path:
    (env.root / "dir").mkdir()
    (env.root / "dir" / "kept.txt").write_text("kept\n", encoding="utf-8")
    return env.root / "dir"


# Issue #32's bad inputs, one row each: what the command is given (a setup writing files in the
# test folder and returning argv), fragments of its one error line, and its exit status. Every
# row also proves the command changed no file: the SHA-256 of every file before and after.
BAD_INPUTS = {
    # The canonical wrapper: a wrapper whose exec line edits the source is refused, payload intact.
    "faked_wrapper_shipped_in_a_checked_folder": (
        _swap_in_fake, ["train_gpt.py starts like a wrapper but it is not the packager's wrapper: "
                        "its line 10 differs from the template", "only that exact template"], 2),
    "faked_wrapper_given_as_script": (
        _fake_as_script, ["--script", "starts like a wrapper but it is not the packager's wrapper: "
                          "its line 10 differs from the template"], 2),
    "runs_of_the_faked_wrapper_packaged_with_the_honest_one": (
        _fake_run_with_honest_wrapper, ["the train_gpt.py to ship (brotli wrap)", "is not the script "
                                        "seed 1337 ran", "the readable script it wraps, is not either"], 2),
    # A folder holds only regular files the packager writes.
    "artifact_linked_out_of_the_folder": (
        _in_plain_folder(lambda f, env: ((f / "artifact_seed42.ptz").unlink(),
                                         (f / "artifact_seed42.ptz").symlink_to(env.root / "model_42.ptz"))),
        ["artifact_seed42.ptz is a symbolic link (to ", "model_42.ptz)", "only regular files"], 2),
    "log_linked_out_of_the_folder": (
        _in_plain_folder(lambda f, env: ((f / "train_seed42.log").unlink(),
                                         (f / "train_seed42.log").symlink_to(env.root / "b.txt"))),
        ["train_seed42.log is a symbolic link (to ", "b.txt)"], 2),
    "extra_file_in_the_folder": (
        _in_plain_folder(lambda f, env: (f / "notes.txt").write_text("x\n")),
        ["holds notes.txt, which the packager does not write; remove it"], 2),
    "extra_artifact_in_the_folder": (
        _in_plain_folder(lambda f, env: (f / "artifact_seed9.ptz").write_bytes(b"x")),
        ["holds artifact_seed9.ptz, but no log of that seed"], 2),
    "subfolder_in_the_folder": (
        _in_plain_folder(lambda f, env: (f / "extra").mkdir()),
        ["extra is not a regular file (a folder?)"], 2),
    "readable_script_beside_a_plain_script": (
        _in_plain_folder(lambda f, env: (f / "train_gpt_readable.py").write_text(FAKE_SOURCE)),
        ["train_gpt_readable.py is there, but", "train_gpt.py is no wrapper"], 2),
    "submission_json_not_an_object": (
        _in_plain_folder(lambda f, env: (f / "submission.json").write_text("[1, 2]\n")),
        ["submission.json holds a JSON list, not an object"], 2),
    "check_of_a_file": (lambda env: ["--check", str(_notes(env))],
                        ["notes.txt is not a folder; pass a submission folder"], 2),
    # Seeds share their data and tokenizer.
    "seeds_on_plain_and_caseops_data": (
        _data_line(bytes="sidecar", caseops="1", tokenizer_sha256="ab" * 32),
        ["b.txt ('data val_tokens:", "differs from the data line of", "a.txt (line",
         "bytes:sidecar against tables, caseops:1 against 0, tokenizer_sha256:abab",
         "package seeds run on the same data and tokenizer"], 2),
    "seeds_with_other_tokenizers": (
        _data_line(tokenizer_sha256="cd" * 32), [f"in tokenizer_sha256:{'cd' * 32} against {TOKENIZER_SHA256}"], 2),
    "seeds_with_other_validation_tokens": (
        _data_line(val_tokens=str(VAL_TOKENS - 2)), [f"in val_tokens:{VAL_TOKENS - 2} against {VAL_TOKENS}"], 2),
    "log_without_tokenizer_sha256": (
        _without(r" tokenizer_sha256:\w+"), ["a.txt ('data val_tokens:", "has no tokenizer_sha256: field, so "
                                             "an older train_gpt.py wrote it"], 2),
    "log_without_source_sha256": (
        _without(r" source_sha256:\w+$"), ["a.txt ('script path:", "has no source_sha256: field, so an older "
                                           "train_gpt.py wrote it"], 2),
    # Nothing the packager did not write is overwritten.
    "make_wrapper_over_an_unrelated_file": (
        _make_wrapper_to(_notes), ["notes.txt exists and is not this wrapper; pass --force"], 2),
    "make_wrapper_into_a_folder": (
        _make_wrapper_to(_folder_with_a_file), ["--make-wrapper", "dir is a folder; pass a file path"], 2),
    "make_wrapper_through_a_link": (_make_wrapper_to(_linked), ["link.py is a symbolic link"], 2),
    "make_wrapper_onto_its_own_script": (
        lambda env: _make_wrapper_to(lambda e: e.script)(env) + ["--force"], ["is --script itself"], 2),
    "make_wrapper_in_a_missing_folder": (
        _make_wrapper_to(lambda env: env.root / "nowhere" / "w.py"), ["nowhere does not exist"], 2),
    "make_wrapper_of_a_wrapper": (
        _wrapper_as_script, ["is already a wrapper; pass the readable train_gpt.py"], 2),
    # (a later --out-root wins)
    "out_root_is_a_file": (
        lambda env: _package_argv(env, three_logs()) + ["--out-root", str(_notes(env))],
        ["--out-root", "notes.txt is a file or a link, not a folder"], 2),
    "out_root_under_a_file": (
        lambda env: _package_argv(env, three_logs()) + ["--out-root", str(_notes(env) / "records")],
        ["notes.txt is a file or a link, not a folder"], 2),
    "force_over_a_folder_holding_another_file": (
        _force_over(lambda f, env: (f / "notes.txt").write_text("x\n")),
        ["holds notes.txt, which the packager does not write; --force deletes the folder, so "
         "move it away"], 2),
    "force_over_a_folder_holding_a_link": (
        _force_over(lambda f, env: (f / "README.md").unlink() or (f / "README.md").symlink_to(_notes(env))),
        ["README.md is a symbolic link", "--force deletes the folder"], 2),
    # Flags.
    "full_val_tokens_negative": (
        lambda env: _package_argv(env, three_logs(), "--full-val-tokens", "-5"),
        ["error: argument --full-val-tokens: '-5' is not a positive integer; see --help."], 2),
    "full_val_tokens_zero": (
        lambda env: _package_argv(env, three_logs(), "--full-val-tokens", "0"), ["'0' is not a positive integer"], 2),
    "full_val_tokens_not_a_number": (
        lambda env: _package_argv(env, three_logs(), "--full-val-tokens", "many"),
        ["'many' is not a positive integer"], 2),
    "make_wrapper_with_wrap_none": (
        lambda env: ["--wrap", "none", "--make-wrapper", str(env.root / "w.py")],
        ["--make-wrapper needs --wrap lzma or --wrap brotli"], 2),
    # The environment: a missing or other tool (3), an output that cannot be written (4).
    "minifier_not_installed": (_minifier_missing, ["python-minifier is not installed",
                                                   "pip install python-minifier==3.4.0"], 3),
    "minifier_of_another_version": (_minifier_other_version, ["python-minifier 9.9.9 is installed, but "
                                                              "wrappers are made with 3.4.0"], 3),
    "disk_full": (_disk_full, ["cannot write --make-wrapper", "w.py (No space left on device)"], 4),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_ends_with_one_error_line_its_exit_status_and_no_file_changed(env, capsys, monkeypatch, case):
    setup, fragments, status = BAD_INPUTS[case]
    argv = setup(env, monkeypatch) if case in ("minifier_not_installed", "minifier_of_another_version",
                                               "disk_full") else setup(env)
    before = digests(env.root)
    capsys.readouterr()
    assert run_main(argv) == status
    err = last_error(capsys)
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert digests(env.root) == before
    package.minify.cache_clear()  # drop anything minified under a patched tool


# ---- a real tiny CPU run: the edits, the record track and --rescore ----


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> SimpleNamespace:
    """One real run of a copy of train_gpt.py (seed 1, 4 steps, chunked TTT, a 3,000-token
    validation prefix, on CPU) whose log and artifact the tests below only read."""
    root = tmp_path_factory.mktemp("tiny_run")
    script = root / "train_gpt.py"  # a copy, so the file the run ran stays the same
    shutil.copyfile(REPO / "train_gpt.py", script)
    run_script(tiny_run_env(tiny_data, root), root, script=script)
    return SimpleNamespace(script=script, text=(root / "logs" / "tiny.txt").read_text(encoding="utf-8"),
                           artifact=root / "model.ptz", data_path=Path(tiny_data["DATA_PATH"]), root=root)


def tiny_run_env(tiny_data: dict[str, str], root: Path) -> dict[str, str]:
    return {**TINY_RUN_ENV, **tiny_data, "RUN_ID": "tiny", "ITERATIONS": "4", "TTT_MODE": "chunked",
            "ARTIFACT_PATH": str(root / "model.ptz"), "CHECKPOINT_PATH": ""}


@pytest.fixture(scope="module")
def tiny_wrapped_run(tiny_run, tiny_data, tmp_path_factory) -> SimpleNamespace:
    """The same run as tiny_run, of the brotli wrapper of its train_gpt.py (read-only too)."""
    root = tmp_path_factory.mktemp("tiny_wrapped_run")
    wrapper = root / "train_gpt.py"
    wrapper.write_bytes(package.make_wrapper(tiny_run.script.read_text(encoding="utf-8"), "brotli").encode("utf-8"))
    run_script(tiny_run_env(tiny_data, root), root, script=wrapper)
    return SimpleNamespace(script=wrapper, text=(root / "logs" / "tiny.txt").read_text(encoding="utf-8"),
                           artifact=root / "model.ptz", root=root)


def contract_lines(text: str, root: Path) -> list[str]:
    """The lines after the source, less the script line, with the run's folder, times, memory
    and code-dependent byte counts masked: what must not depend on the file run."""
    lines = []
    for line in text.split(SEP + "\n", 1)[1].splitlines():
        if line.startswith("script "):
            continue
        line = line.replace(str(root), "<run>")
        line = re.sub(r"\b(time|train_time|step_avg|eval_time|gptq_time|total|tok_s):[0-9.]+(ms)?", r"\1:T", line)
        line = re.sub(r"\b(code_bytes|total_bytes|predicted_total_bytes):\d+", r"\1:N", line)
        lines.append(re.sub(r"\d+MiB", "M", line))
    return lines


def test_a_wrapper_runs_the_logged_source_exactly_as_the_readable_script_does(tiny_run, tiny_wrapped_run):
    readable = tiny_run.script.read_bytes()
    wrapper = tiny_wrapped_run.script.read_bytes()
    plain = package.parse_log(tiny_run.text, name="plain")
    wrapped = package.parse_log(tiny_wrapped_run.text, name="wrapped")
    # The wrapped run logs the minified text it ran, its own bytes, and the readable file's hash.
    assert wrapped.source.rstrip("\n") == package.minify(readable.decode("utf-8"))
    assert plain.source == readable.decode("utf-8")
    digest = hashlib.sha256(readable).hexdigest()
    assert plain.script == {"tag": "script", "path": "train_gpt.py", "bytes": len(readable),
                            "sha256": digest, "source_sha256": digest}
    assert wrapped.script == {"tag": "script", "path": "train_gpt.py", "bytes": len(wrapper),
                              "sha256": hashlib.sha256(wrapper).hexdigest(), "source_sha256": digest}
    assert wrapped.artifact["code_bytes"] == len(wrapper) < len(readable) / 4
    # Every other line is the same: settings, data, init_probe, the training curve, the artifact's
    # bytes and SHA-256, and every stage's score.
    lines = contract_lines(tiny_run.text, tiny_run.root)
    assert contract_lines(tiny_wrapped_run.text, tiny_wrapped_run.root) == lines
    assert sum(line.startswith(("step:", "init_probe ", "serialize ", "final_")) for line in lines) == 11
    assert wrapped.artifact_file["sha256"] == plain.artifact_file["sha256"]
    assert wrapped.val_bpb == plain.val_bpb


def test_a_tiny_wrapped_run_packages_with_its_readable_script_and_rescores(tiny_run, tiny_wrapped_run, tmp_path, capsys):
    readable = SimpleNamespace(script=tiny_run.script)
    # Shipping the readable script would count more code bytes than the run did.
    assert package_tiny(readable, tmp_path, [tiny_wrapped_run.text], "--non-record") == 2
    assert "code bytes, brotli) with --wrap brotli" in last_error(capsys)
    assert package_tiny(readable, tmp_path, [tiny_wrapped_run.text], "--non-record", "--wrap", "brotli",
                        "--rescore") == 0
    bpb = package.parse_log(tiny_wrapped_run.text).val_bpb
    assert f"rescored seed 1: val_bpb {bpb:.8f} (ttt), log {bpb:.8f}" in capsys.readouterr().out
    folder = tiny_folder(tmp_path)
    assert (folder / "train_gpt.py").read_bytes() == tiny_wrapped_run.script.read_bytes()
    assert (folder / "train_gpt_readable.py").read_bytes() == tiny_run.script.read_bytes()
    assert package.main(["--check", str(folder)]) == 0
    # Its reproduction command is the plain run's: the defaults come from the readable script.
    assert package_tiny(tiny_run, tmp_path / "plain", [tiny_run.text], "--non-record") == 0
    commands = [[line for line in (tiny_folder(root) / "README.md").read_text(encoding="utf-8").splitlines()
                 if line.startswith("SEED=")] for root in (tmp_path, tmp_path / "plain")]
    assert commands[0] == commands[1] and len(commands[0]) == 1


def package_tiny(tiny: SimpleNamespace, root: Path, texts: list[str], *extra: str) -> int:
    """Package `texts` (the tiny log, as is or edited) from root/tiny{i}.txt into root/out."""
    root.mkdir(parents=True, exist_ok=True)
    logs = []
    for i, text in enumerate(texts):
        logs.append(root / f"tiny{i}.txt")
        logs[-1].write_text(text, encoding="utf-8")
    return package.main(["--name", "Tiny", "--author", "Test", "--date", "2026-12-01", "--script",
                         str(tiny.script), "--out-root", str(root / "out"), "--logs", *map(str, logs), *extra])


def tiny_folder(root: Path) -> Path:
    return root / "out" / "2026-12-01_Tiny"


def _score_moved_to_sliding(text: str) -> str:
    sliding = re.search(r"^final_sliding .* val_bpb:(\S+)", text, flags=re.M)[1]
    return _edits((r"^final_ttt .*\n(val_tokens_limit .*\n)?", ""),
                  (r"^final_score val_bpb:\S+ stage:ttt", f"final_score val_bpb:{sliding} stage:sliding"))(text)


# The edits of a log, each consistent with final_score: tampering -> message fragments.
TINY_TAMPERING = {
    "final_ttt_and_final_score_set_to_1": (
        _edits((r"^(final_ttt .* val_bpb:)\S+", r"\g<1>1.00000000"),
               (r"^(final_score val_bpb:)\S+", r"\g<1>1.00000000")),
        ["('final_ttt val_loss:", "has val_bpb/val_loss", "the same on every line"]),
    "ttt_lines_deleted_and_score_set_to_sliding": (
        _score_moved_to_sliding,
        ["('hparam TTT_ENABLED=True')", "switches the ttt stage on, but there is no final_ttt"]),
    "model_and_total_bytes_lowered_together": (
        _edits((r"^(artifact code_bytes:\d+ model_bytes:)(\d+) total_bytes:(\d+)",
                lambda m: f"{m[1]}{int(m[2]) - 1000} total_bytes:{int(m[3]) - 1000}"),
               (r"^(final_score .* total_bytes:)(\d+)", lambda m: f"{m[1]}{int(m[2]) - 1000}")),
        ["('serialize compressor:brotli", "counts model_bytes:"]),
}


@pytest.mark.parametrize("case", sorted(TINY_TAMPERING))
def test_an_edited_tiny_log_is_refused(tiny_run, tmp_path, capsys, case):
    tamper, needles = TINY_TAMPERING[case]
    assert package_tiny(tiny_run, tmp_path, [tamper(tiny_run.text)], "--non-record") == 2
    err = last_error(capsys)
    assert re.search(r"^error: line \d+ of \S*tiny0.txt", err), err
    for needle in needles + ["so the log was edited"]:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not (tmp_path / "out").exists()


def test_a_tiny_log_copied_with_its_seed_changed_is_refused(tiny_run, tmp_path, capsys):
    copy = _edit(r"^hparam SEED=1$", "hparam SEED=2")(tiny_run.text)
    assert package_tiny(tiny_run, tmp_path, [tiny_run.text, copy], "--non-record") == 2
    err = last_error(capsys)
    assert re.search(r"tiny1.txt \(SEED=2\) and \S*tiny0.txt \(SEED=1\) log the same training curve "
                     r"\(4 step: train_loss: values\)", err), err
    assert not (tmp_path / "out").exists()


def test_a_single_tiny_log_relabelled_with_another_seed_is_refused(tiny_run, tmp_path, capsys):
    # Only SEED edited: its init_probe line still names the seed that initialised the model.
    relabelled = _edit(r"^hparam SEED=1$", "hparam SEED=2")(tiny_run.text)
    assert package_tiny(tiny_run, tmp_path / "seed", [relabelled], "--non-record") == 2
    err = last_error(capsys)
    assert "('init_probe seed:1 values:" in err and "but the log's SEED is 2: the SEED line was edited" in err, err
    # SEED and the probe's seed edited together: --rescore rebuilds seed 2's initial model.
    both = _edit(r"^init_probe seed:1 ", "init_probe seed:2 ")(relabelled)
    assert package_tiny(tiny_run, tmp_path / "both", [both], "--non-record") == 0
    capsys.readouterr()
    assert package.main(["--check", str(tiny_folder(tmp_path / "both")), "--rescore"]) == 2
    err = last_error(capsys)
    assert "is not the initial model that SEED=2 and the log's settings give (value 0: logged " in err, err
    # ... also when the values are written as nan, which compares unequal to everything.
    nan = re.sub(r"^(init_probe seed:2 values:).*$", lambda m: m[1] + ",".join(["nan"] * 16), both, flags=re.M)
    assert package_tiny(tiny_run, tmp_path / "nan", [nan], "--non-record", "--rescore") == 2
    assert "(value 0: logged nan, rebuilt " in last_error(capsys)
    # The line removed.
    removed = re.sub(r"^init_probe .*\n", "", tiny_run.text, flags=re.M)
    assert package_tiny(tiny_run, tmp_path / "removed", [removed], "--non-record") == 2
    assert "has no init_probe line, but its script writes one" in last_error(capsys)


def test_a_tiny_cpu_run_is_no_record_but_packages_as_non_record(tiny_run, tmp_path, capsys):
    assert package_tiny(tiny_run, tmp_path, [tiny_run.text]) == 2
    err = last_error(capsys)
    for needle in ["tiny0.txt is not a 10min_16mb record", "VAL_TOKENS_LIMIT=3000", "'1xCPU-",
                   "not 8xH100", "MAX_WALLCLOCK_SECONDS=0.0", "--non-record"]:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert package_tiny(tiny_run, tmp_path, [tiny_run.text], "--non-record") == 0
    folder = tiny_folder(tmp_path)
    sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    assert sub["track"] == "non_record_16mb" and sub["compliance"]["full_validation_split"] is False
    assert sub["hardware"].startswith("1xCPU-")
    assert (folder / "artifact_seed1.ptz").read_bytes() == tiny_run.artifact.read_bytes()
    assert (folder / "train_gpt.py").read_bytes() == tiny_run.script.read_bytes()
    assert package.main(["--check", str(folder)]) == 0


def test_a_tiny_val_tokens_limit_run_with_those_lines_removed_is_no_record(tiny_run, tmp_path, capsys):
    # The data line still says how many tokens were scored; the shards say how many there are.
    text = re.sub(r"^val_tokens_limit .*\n", "", tiny_run.text, flags=re.M)
    text = _edit(r"^hparam VAL_TOKENS_LIMIT=3000$", "hparam VAL_TOKENS_LIMIT=0")(text)
    split = sum(struct.unpack_from("<3i", p.read_bytes())[2] for p in tiny_run.data_path.glob("fineweb_val_*.bin"))
    assert split > 3000
    assert package_tiny(tiny_run, tmp_path, [text]) == 2
    err = last_error(capsys)
    assert "it scored 3000 validation tokens (line" in err and f"{tiny_run.data_path} hold {split};" in err, err
    assert package_tiny(tiny_run, tmp_path, [text], "--non-record") == 0
    sub = json.loads((tiny_folder(tmp_path) / "submission.json").read_text(encoding="utf-8"))
    assert sub["compliance"]["full_validation_split"] is False


def test_a_tiny_artifact_with_one_byte_flipped_is_refused(tiny_run, tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    flipped = tmp_path / "model.ptz"
    shutil.copyfile(tiny_run.artifact, flipped)
    flip_a_byte(flipped)
    assert package_tiny(tiny_run, tmp_path, [tiny_run.text], "--non-record", "--artifacts", str(flipped)) == 2
    err = last_error(capsys)
    assert f"{flipped} has sha256 " in err and "('serialize compressor:brotli" in err, err
    assert not (tmp_path / "out").exists()


def test_check_refuses_a_tiny_folder_whose_artifact_hash_does_not_match(tiny_run, tmp_path, capsys):
    # The log, submission.json and README agree with each other; the artifact is not the logged one.
    assert package_tiny(tiny_run, tmp_path, [tiny_run.text], "--non-record") == 0
    folder = tiny_folder(tmp_path)
    flip_a_byte(folder / "artifact_seed1.ptz")
    capsys.readouterr()
    assert package.main(["--check", str(folder)]) == 2
    assert f"{folder / 'artifact_seed1.ptz'} has sha256 " in last_error(capsys)


def test_rescore_refuses_a_consistently_edited_tiny_log_and_accepts_the_genuine_one(tiny_run, tmp_path, capsys):
    # final_ttt's val_bpb lowered by 0.01 with its val_loss and final_score to match: no line shows it.
    m = re.search(r"^final_ttt val_loss:(\S+) val_bpb:(\S+)", tiny_run.text, flags=re.M)
    loss, bpb = float(m[1]), float(m[2])
    better = bpb - 0.01
    edited = _edits((r"^final_ttt val_loss:\S+ val_bpb:\S+",
                     f"final_ttt val_loss:{better * loss / bpb:.8f} val_bpb:{better:.8f}"),
                    (r"^final_score val_bpb:\S+", f"final_score val_bpb:{better:.8f}"))(tiny_run.text)
    assert package_tiny(tiny_run, tmp_path / "edited", [edited], "--non-record") == 0
    capsys.readouterr()
    assert package.main(["--check", str(tiny_folder(tmp_path / "edited")), "--rescore"]) == 2
    err = last_error(capsys)
    for needle in [f"re-evaluating seed 1's artifact gives final_ttt val_bpb:{bpb:.8f}, but line",
                   f"train_seed1.log ('final_ttt val_loss:", f"says {better:.8f} (off by 0.01, more than "
                   "the tolerance 1e-06)", "the log is not this artifact's"]:
        assert needle in err, f"{needle!r} not in {err!r}"
    # The genuine log: packaging with --rescore re-evaluates the new folder and accepts it.
    assert package_tiny(tiny_run, tmp_path / "genuine", [tiny_run.text], "--non-record", "--rescore") == 0
    assert f"rescored seed 1: val_bpb {bpb:.8f} (ttt), log {bpb:.8f}" in capsys.readouterr().out
