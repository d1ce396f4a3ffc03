"""Bad settings and bad files, as a hostile reviewer would try them: each is refused before any
work it would waste, with one line that names the variable or file and what to do, a distinct
exit status, and no artifact or score. The README's troubleshooting table is this file's table.

Settings are checked in-process (Hyperparameters.validate), checks that need the data or the
file system run `run()` in-process, and a few rows go through the script itself to show the
one-line message and the exit status."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import ROOT, TINY_RUN_ENV, run_script
from test_data_metric import write_shard
from test_eval import randomize

CPU = torch.device("cpu")
RT = tg.Runtime(0, 1, 0, CPU)

# (settings, fragment of the one-line message). Every row fails at start, naming the variable.
BAD_SETTINGS = [
    ({"NUM_HEADS": "0"}, "NUM_HEADS=0 must be at least 1"),
    ({"TRAIN_SEQ_LEN": "0"}, "TRAIN_SEQ_LEN=0 must be at least 1"),
    ({"MLP_MULT": "0"}, "MLP_MULT=0.0 must be greater than 0"),
    ({"MLP_MULT": "nan"}, "MLP_MULT=nan must be a finite number"),
    ({"MLP_MULT": "-1"}, "MLP_MULT=-1.0 must be greater than 0"),
    ({"MLP_CLIP_SIGMAS": "0"}, "MLP_CLIP_SIGMAS=0.0 must be greater than 0"),
    ({"ATTN_CLIP_SIGMAS": "inf"}, "ATTN_CLIP_SIGMAS=inf must be a finite number"),
    ({"MATRIX_CLIP_SIGMAS": "12"}, "MATRIX_CLIP_SIGMAS is not a setting of train_gpt.py"),
    ({"SEED": "-1"}, "SEED=-1 must be between 0 and"),
    ({"MODEL_DIM": "0"}, "MODEL_DIM=0 must be between 2 and 16384"),
    ({"TRAIN_BATCH_TOKENS": "0"}, "TRAIN_BATCH_TOKENS=0 must be at least 1"),
    ({"TRAIN_LOG_EVERY": "0"}, "TRAIN_LOG_EVERY=0 must be at least 1"),
    ({"GPTQ_BLOCK": "0"}, "GPTQ_BLOCK=0 must be at least 1"),
    ({"EVAL_BATCH_SEQS": "0"}, "EVAL_BATCH_SEQS=0 must be at least 1"),
    ({"TTT_BATCH_SEQS": "0"}, "TTT_BATCH_SEQS=0 must be at least 1"),
    ({"ITERATIONS": "-5"}, "ITERATIONS=-5 must be at least 1"),
    ({"MATRIX_LR": "nan"}, "MATRIX_LR=nan must be a finite number"),
    ({"EMBED_LR": "-0.1"}, "EMBED_LR=-0.1 must be at least 0"),
    ({"BETA2": "1"}, "BETA2=1.0 must be between 0 and 0.9999"),
    ({"TTT_LRR": "0.1"}, "TTT_LRR is not a setting of train_gpt.py; did you mean TTT_LR?"),
    ({"EVAL_SEQ_LENGTH": "512"}, "EVAL_SEQ_LENGTH is not a setting of train_gpt.py; did you mean EVAL_SEQ_LEN?"),
    ({"ITERATONS": "5"}, "ITERATONS is not a setting of train_gpt.py; did you mean ITERATIONS?"),
    ({"NUM_LAYERS": "abc"}, "NUM_LAYERS='abc' is not a valid int"),
    ({"TTT_MODE": "perdoc"}, "TTT_MODE=perdoc must be one of chunked, docs, phased"),
    ({"TTT_LORA_RANK": "0"}, "TTT_LORA_RANK=0 must be at least 1"),
    ({"TTT_DOC_CHUNK_TOKENS": "4096"}, "TTT_DOC_CHUNK_TOKENS=4096 must be at most EVAL_SEQ_LEN=2560"),
    ({"PHASED_TTT_PHASES": "9", "PHASED_TTT_PREFIX_DOCS": "4"}, "PHASED_TTT_PHASES=9 must be at most PHASED_TTT_PREFIX_DOCS=4"),
    ({"DIST_TIMEOUT_SECONDS": "0"}, "DIST_TIMEOUT_SECONDS=0.0 must be greater than 0"),
    ({"QUANT_METHOD": "awq"}, "QUANT_METHOD=awq must be one of gptq, rtn"),
    ({"GATE_WINDOW": "600"}, "GATE_WINDOW=600 must be at most MODEL_DIM=512"),
    ({"RUN_ID": "a/b"}, "RUN_ID='a/b' must be a non-empty file name"),
]


@pytest.mark.parametrize("env, message", BAD_SETTINGS, ids=[next(iter(env)) for env, _ in BAD_SETTINGS])
def test_bad_setting_fails_at_start_naming_it(env, message):
    with pytest.raises(tg.ConfigError) as info:
        tg.Hyperparameters(environ=env).validate(8)
    assert message in str(info.value)


def test_our_settings_and_the_launchers_are_never_reported_as_unknown():
    env = {"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1", "PATH": "/bin",
           "HOME": "/root", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0", "MAX_JOBS": "4", "TTT_LR": "0.1"}
    assert tg.Hyperparameters(environ=env).unknown == []


def test_micro_batch_that_does_not_divide_adapts_instead_of_failing():
    h = tg.Hyperparameters(environ={"TRAIN_BATCH_TOKENS": "16384", "TRAIN_SEQ_LEN": "256", "PROGRESSIVE_CONTEXT": "",
                                    "MICRO_BATCH_SEQS": "48"})
    h.validate(1)  # 64 sequences per process; 48 does not divide them
    assert h.micro_batch(1) == 32 and h.grad_accum_steps(1) == 2
    h = tg.Hyperparameters(environ={"TRAIN_BATCH_TOKENS": str(7 * 2048), "MICRO_BATCH_SEQS": "5"})
    assert h.micro_batch(1) == 1 and h.grad_accum_steps(1) == 7  # 7 is prime
    # The default: 48 rows of 2048 a micro-batch, one per step on 8 GPUs (PR #2135's grad_accum 1).
    h = tg.Hyperparameters(environ={})
    assert (h.window_len, h.micro_batch(1), h.grad_accum_steps(1), h.calibration_rows(1)) == (2048, 48, 8, 48)
    assert (h.micro_batch(8), h.grad_accum_steps(8), h.calibration_rows(8)) == (48, 1, 48)
    # Progressive context (PR #2014): windows of lcm(1024, 2048, 3072) = 6144 tokens, 16 of them per
    # micro-batch of at most 32 x 3072 tokens; calibration reads the same tokens as 32 rows of 3072.
    h = tg.Hyperparameters(environ={"TRAIN_SEQ_LEN": "3072", "PROGRESSIVE_CONTEXT": "1024:0.1,2048:0.7", "MICRO_BATCH_SEQS": "32"})
    assert (h.window_len, h.micro_batch(1), h.grad_accum_steps(1), h.calibration_rows(1)) == (6144, 16, 8, 32)
    assert (h.micro_batch(8), h.grad_accum_steps(8), h.calibration_rows(8)) == (16, 1, 32)


# ---- checks that need the data or the file system (run() in-process) ----

@pytest.fixture
def run_in(tiny_data, tmp_path, monkeypatch):
    """run() in a fresh folder with the tiny settings; returns (the error raised, the folder)."""
    monkeypatch.chdir(tmp_path)

    def go(**overrides: str):
        env = {**TINY_RUN_ENV, **tiny_data, "RUN_ID": "bad", "ARTIFACT_PATH": str(tmp_path / "m.ptz"),
               "CHECKPOINT_PATH": "", **overrides}
        try:
            # A Runtime of its own: run() points its log at logs/bad.txt relative to tmp_path, which
            # must not follow the module's RT into later tests run from the repository root.
            tg.run(tg.Hyperparameters(environ=env), tg.Runtime(0, 1, 0, CPU))
        except (tg.ConfigError, tg.InputError, tg.TrainingDiverged) as exc:
            return exc
        return None
    return go


def nothing_scored(folder: Path) -> bool:
    log = folder / "logs" / "bad.txt"
    text = log.read_text().split("=" * 100 + "\n", 1)[1] if log.exists() else ""  # the lines after the source
    return not (folder / "m.ptz").exists() and "final_" not in text


@pytest.mark.parametrize("overrides, kind, message", [
    ({"ARTIFACT_PATH": "missing/dir/m.ptz"}, tg.ConfigError, "ARTIFACT_PATH=missing/dir/m.ptz: the folder missing/dir does not exist"),
    ({"CHECKPOINT_PATH": "nowhere/m.pt"}, tg.ConfigError, "CHECKPOINT_PATH=nowhere/m.pt: the folder nowhere does not exist"),
    ({"NLL_DUMP_PATH": "gone/n.npz"}, tg.ConfigError, "NLL_DUMP_PATH=gone/n.npz: the folder gone does not exist"),
    ({"EXPORT_ONLY": "no.pt"}, tg.ConfigError, "EXPORT_ONLY=no.pt does not exist"),
    ({"EVAL_ONLY": "1", "ARTIFACT_PATH": "no.ptz"}, tg.ConfigError, "EVAL_ONLY=1 but ARTIFACT_PATH=no.ptz does not exist"),
    ({"TTT_MODE": "chunked", "TTT_CHUNK_TOKENS": "5000"}, tg.ConfigError, "TTT_CHUNK_TOKENS=5000 covers all 2999 validation targets"),
    ({"TTT_DOC_CHUNK_TOKENS": "64", "EVAL_SEQ_LEN": "64", "VAL_TOKENS_LIMIT": "40", "TTT_SHORT_DOC_CHUNKS": "0"}, tg.ConfigError,
     "TTT_DOC_CHUNK_TOKENS=64 holds every validation document in one chunk"),
    ({"PHASED_TTT_PHASES": "50", "PHASED_TTT_PREFIX_DOCS": "50"}, tg.ConfigError, "PHASED_TTT_PHASES=50 is more than the"),
    ({"VOCAB_SIZE": "1024"}, tg.ConfigError, "set VOCAB_SIZE=512"),
    ({"DATA_PATH": "nowhere"}, tg.InputError, "No val shards (fineweb_val_*.bin) in DATA_PATH=nowhere"),
    ({"TOKENIZER_PATH": "none.model"}, tg.InputError, "TOKENIZER_PATH=none.model does not exist"),
], ids=["artifact-dir", "checkpoint-dir", "nll-dump-dir", "export-only-missing", "eval-only-missing", "ttt-chunk-too-long",
        "doc-chunk-too-long", "more-phases-than-documents", "vocab-mismatch", "no-data", "no-tokenizer"])
def test_bad_path_or_data_setting_fails_before_training(run_in, tmp_path, overrides, kind, message):
    error = run_in(**overrides)
    assert isinstance(error, kind) and message in str(error), error
    assert nothing_scored(tmp_path)


def test_a_reused_run_id_is_refused_and_the_old_log_kept(run_in, tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "bad.txt").write_text("an earlier run")
    error = run_in()
    assert isinstance(error, tg.ConfigError) and "logs/bad.txt already exists; choose another RUN_ID" in str(error)
    assert (tmp_path / "logs" / "bad.txt").read_text() == "an earlier run"


def test_training_token_ids_outside_the_vocabulary_fail_before_training(tiny_data, run_in, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = np.random.default_rng(0).integers(2, 500, size=20_000)
    good[::300] = 1
    write_shard(data / "fineweb_train_000000.bin", good)
    bad = good.copy()
    bad[12_345] = 600  # the tokenizer has 512 pieces
    write_shard(data / "fineweb_train_000001.bin", bad)
    for name in Path(tiny_data["DATA_PATH"]).glob("fineweb_val_*.bin"):
        (data / name.name).write_bytes(name.read_bytes())
    error = run_in(DATA_PATH=str(data))
    assert isinstance(error, tg.InputError)
    assert "fineweb_train_000001.bin: token id 600 at position 12345 is outside VOCAB_SIZE=512" in str(error)
    assert nothing_scored(tmp_path) and "train_setup" not in (tmp_path / "logs" / "bad.txt").read_text().split("=" * 100)[1]


def test_diverged_training_stops_naming_the_step_and_writes_nothing(run_in, tmp_path):
    error = run_in(EMBED_LR="1e30", SCALAR_LR="1e30", LOGIT_SOFTCAP="0", GRAD_CLIP_NORM="0", TRAIN_LOG_EVERY="1")
    assert isinstance(error, tg.TrainingDiverged), error
    assert "training diverged" in str(error) or "not finite" in str(error)
    assert "at step" in str(error) or "after" in str(error)
    assert nothing_scored(tmp_path)


def test_a_checkpoint_that_cannot_be_written_is_reported_and_the_run_goes_on(run_in, tmp_path):
    assert run_in(CHECKPOINT_PATH="/dev/full", TTT_ENABLED="0", SLIDING_ENABLED="0", ITERATIONS="2") is None
    log = (tmp_path / "logs" / "bad.txt").read_text()
    assert "checkpoint_failed path:/dev/full" in log and "final_score" in log and (tmp_path / "m.ptz").exists()


# ---- the script itself: one line, a distinct exit status, no traceback ----

@pytest.mark.parametrize("env, status, message", [
    ({"NUM_HEADS": "0"}, 2, "error: NUM_HEADS=0 must be at least 1."),
    ({"TTT_LRR": "1"}, 2, "error: TTT_LRR is not a setting of train_gpt.py; did you mean TTT_LR?"),
    ({"DATA_PATH": "nowhere"}, 3, "error: No val shards (fineweb_val_*.bin) in DATA_PATH=nowhere."),
], ids=["setting", "typo", "missing-data"])
def test_script_prints_one_line_and_exits_with_its_status(tiny_env, tmp_path, env, status, message):
    proc = run_script({**tiny_env, **env}, tmp_path, check=False)
    assert proc.returncode == status
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not Path(tiny_env["ARTIFACT_PATH"]).exists()


def test_a_model_no_device_holds_stops_every_rank_with_rank_0s_line(tiny_env, tmp_path):
    # The ranks agree before raising: none is stopped by torchrun's SIGTERM and blames a lost peer.
    env = {**tiny_env, "MODEL_DIM": "8192", "NUM_HEADS": "64", "NUM_KV_HEADS": "8", "NUM_LAYERS": "64"}
    proc = run_script(env, tmp_path, nproc=2, check=False, timeout=300)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:") and "need at least" in line]
    assert proc.returncode != 0 and len(ours) == 1 and "lost a peer" not in proc.stderr and "SIGTERM" not in proc.stderr
    assert re.search(r"exitcode\s*: 2", proc.stderr) and not re.search(r"exitcode\s*: [15]\b", proc.stderr), proc.stderr[-3000:]


# The child imports what the script imports, measures the address space it then holds (VmPeak:
# CUDA builds of torch map 3 to 4.5 GB at import, the CPU build about 0.6 GB) and only then
# caps it at that plus OOM_HEADROOM, so the cap means the same under every torch build.
OOM_LAUNCHER = """
import re, resource, runpy, sys
sys.path.insert(0, {root!r})
import torch, train_gpt
torch.cuda.is_available()  # the script asks this first; a driver it loads counts as held
held = int(re.search(r"^VmPeak:\\s+(\\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (held + {headroom}, held + {headroom}))
sys.argv = [{script!r}]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OOM_HEADROOM = 2**30
# The tiny model with one 262,144-token micro-batch: the run reaches training within half of
# OOM_HEADROOM (seen under torch 2.9.1+cu128, 2.11.0+cu130 and 2.14.1+cu130; a quarter under
# 2.13.0+cpu), and its first step still fails with four times it (2.13.0+cpu, 2.14.1+cu130).
# No GPU visible: the cap governs the CPU allocator only.
HUGE_MICRO_BATCH = {"TRAIN_BATCH_TOKENS": "262144", "MICRO_BATCH_SEQS": "4096", "CUDA_VISIBLE_DEVICES": ""}


def test_an_allocation_that_fails_mid_run_is_one_line_with_exit_7(tiny_env, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **tiny_env, **HUGE_MICRO_BATCH}
    _, need = tg.training_memory_bytes(tg.Hyperparameters(environ={**tiny_env, **HUGE_MICRO_BATCH}), 1)
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # what the child's start check counts
    # The start check passes, the address-space cap does not.
    assert 2 * OOM_HEADROOM < need <= machine, (need, machine)
    launcher = OOM_LAUNCHER.format(root=str(ROOT), script=str(ROOT / "train_gpt.py"), headroom=OOM_HEADROOM)
    proc = subprocess.run([sys.executable, "-c", launcher], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(r"error: out of memory while (warming up the \w+ graph|training step \d+) \(tried to allocate \d+ bytes\): "
                    r"no score from this run; lower MICRO_BATCH_SEQS", line), line
    assert not Path(tiny_env["ARTIFACT_PATH"]).exists() and not Path(tiny_env["CHECKPOINT_PATH"]).exists()


# ---- artifacts: verified before anything is built, with bounded memory ----

@pytest.fixture(scope="module")
def artifact() -> bytes:
    h = tg.Hyperparameters(environ={**TINY_RUN_ENV, "QUANT_METHOD": "rtn"})
    torch.manual_seed(0)
    model = randomize(tg.GPT(h.model_config()), 0)
    return tg.serialize_artifact(tg.quantize_model(model, None, h, RT), model.cfg, "brotli")


def test_every_single_bit_flip_is_refused(artifact):
    rng = np.random.default_rng(0)
    positions = rng.integers(0, len(artifact), size=200)
    positions[0] = 100_000 % len(artifact)
    for pos in positions:
        flipped = bytearray(artifact)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(tg.InputError, match="bad magic|checksum does not match"):
            tg.deserialize_artifact(bytes(flipped), 512)
    assert tg.deserialize_artifact(artifact, 512)[0].vocab_size == 512


def test_an_artifact_for_another_vocabulary_is_refused(artifact):
    with pytest.raises(tg.InputError, match="512-token vocabulary but the data and tokenizer have 1024"):
        tg.deserialize_artifact(artifact, 1024)


LOADER = """
import resource, sys
sys.path.insert(0, {root!r})
import train_gpt as tg
path, what = sys.argv[1:]
blob = open(path, 'rb').read() if what == 'blob' else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    tg.deserialize_artifact(blob, 512) if what == 'blob' else tg.read_artifact_file(path)
    print('loaded', 0)
except tg.InputError as exc:
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(str(exc).replace(chr(10), ' ')[:300])
    print('refused', grew // 1024)
"""


def load_in_subprocess(tmp_path: Path, blob_path: Path, what: str = "blob") -> tuple[str, str, int]:
    """(outcome, message, peak memory growth in MiB) of loading a file in a fresh process: its
    bytes (what="blob", read before the peak is noted) or the file itself (what="file"). Growth
    past the imports, not a total, so it means the same under every torch build."""
    proc = subprocess.run([sys.executable, "-c", LOADER.format(root=str(ROOT)), str(blob_path), what],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    *message, last = proc.stdout.strip().splitlines()
    outcome, grew = last.split()
    return outcome, " ".join(message), int(grew)


def payload_of(artifact: bytes) -> bytes:
    import brotli
    return brotli.decompress(artifact[tg.ARTIFACT_PREFIX_BYTES:])


def test_a_decompression_bomb_is_refused_with_bounded_memory(artifact, tmp_path):
    import brotli

    # A valid payload followed by 1 GiB of zeros, compressed by streaming (a few MB of memory
    # here); unbounded decompression would need over 1 GiB.
    compressor = brotli.Compressor(quality=1)
    parts = [compressor.process(payload_of(artifact))]
    zeros = bytes(1 << 24)
    parts += [compressor.process(zeros) for _ in range(64)]
    parts.append(compressor.finish())
    bomb = tmp_path / "bomb.ptz"
    bomb.write_bytes(tg.seal_artifact("brotli", b"".join(parts)))
    assert bomb.stat().st_size < 2_000_000
    outcome, message, grew = load_in_subprocess(tmp_path, bomb)
    print(f"\nbomb: {bomb.stat().st_size:,} bytes on disk, loader peak memory +{grew} MiB")
    assert outcome == "refused" and "more data follows" in message
    assert grew < 200, f"the loader's peak memory grew by {grew} MiB"


def test_a_huge_config_is_refused_before_anything_is_built(artifact, tmp_path):
    import brotli

    payload = payload_of(artifact)
    header_len = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + header_len])
    header["config"]["model_dim"] = 1_000_000
    raw = json.dumps(header).encode()
    huge = tmp_path / "huge.ptz"
    huge.write_bytes(tg.seal_artifact("brotli", brotli.compress(len(raw).to_bytes(4, "little") + raw)))
    outcome, message, grew = load_in_subprocess(tmp_path, huge)
    print(f"\nhuge config: loader peak memory +{grew} MiB")
    assert outcome == "refused" and "MODEL_DIM=1000000 must be between 2 and 16384" in message
    assert grew < 200, f"the loader's peak memory grew by {grew} MiB"


def test_a_huge_file_is_refused_unread_and_magic_comes_first(tmp_path):
    big = tmp_path / "big.ptz"
    with open(big, "wb") as f:
        f.write(tg.ARTIFACT_MAGIC)
        f.truncate(3 * 10**9)  # sparse: 3 GB on paper, nothing on disk
    outcome, message, grew = load_in_subprocess(tmp_path, big, what="file")
    assert outcome == "refused" and "over 4x the challenge's 16,000,000-byte limit; refusing to read it" in message
    assert grew < 200, f"reading the refused file grew peak memory by {grew} MiB"  # the 3 GB were never read
    text = tmp_path / "notes.txt"
    text.write_text("hello" * 1000)
    with pytest.raises(tg.InputError, match="bad magic"):
        tg.read_artifact_file(str(text))


# ---- a rank that stops answering ----

def worker_ranks(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the workers a torchrun process started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != launcher:  # field 4: the parent's pid
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def signal_rank_one(tiny_env, tmp_path, sig, report_marker: str, within: float):
    """Start a 2-rank torchrun run, send `sig` to rank 1 at step 30, and wait (at most `within`
    seconds) for a stderr line containing `report_marker`. Returns (stderr lines, torchrun's
    exit status or None, the step rank 0 logged last)."""
    import os
    import threading
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", **tiny_env, "ITERATIONS": "1000000", "TRAIN_LOG_EVERY": "1",
           "DIST_TIMEOUT_SECONDS": "8", "WARMUP_STEPS": "0"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train_gpt.py")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda s, sink: sink.extend(s), args=(stream, sink), daemon=True)
               for stream, sink in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    status = None
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("step:30/") for line in list(out)):  # heartbeats are a second apart
            assert time.monotonic() < deadline and proc.poll() is None, "".join(err)[-3000:]
            time.sleep(0.2)
        workers = worker_ranks(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], sig)
        signalled = time.monotonic()
        while not any(report_marker in line for line in list(err)):
            assert time.monotonic() - signalled < within, "no report in time:\n" + "".join(err)[-3000:]
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            status = proc.wait(timeout=20)  # torchrun prints its summary after the workers exit
    finally:
        for pid in worker_ranks(proc.pid).values():  # workers run in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)
    steps = [int(line.split("/")[0][5:]) for line in out if line.startswith("step:")]
    return err, status, steps[-1]


def test_a_stopped_rank_ends_the_run_with_a_message_naming_it(tiny_env, tmp_path):
    err, _, last_step = signal_rank_one(tiny_env, tmp_path, signal.SIGSTOP, "waited", within=8 + 60)
    report = next(line for line in err if "waited" in line)
    assert report.startswith("error: rank 0 waited") and "DIST_TIMEOUT_SECONDS=8" in report
    # The stopped rank's activity is current: the step rank 0 waits in, or the one before or after it.
    stopped_at = int(re.search(r"rank 1 has not answered for \d+ s \(last: training step (\d+)\)", report)[1])
    assert abs(stopped_at - (last_step + 1)) <= 1, (stopped_at, last_step)
    assert not Path(tiny_env["ARTIFACT_PATH"]).exists()


def test_a_killed_rank_is_named_by_the_survivor_with_exit_5(tiny_env, tmp_path):
    err, status, last_step = signal_rank_one(tiny_env, tmp_path, signal.SIGKILL, "lost a peer", within=30)
    report = next(line for line in err if "lost a peer" in line)
    assert report.startswith("error: rank 0 lost a peer while training step"), report
    assert re.search(r"rank 1 \(pid \d+\) has exited \(last: training step \d+\)", report), report
    assert sum("Traceback" in line for line in err) <= 1  # torchrun's own, not rank 0's
    # torchrun's summary repeats our line beside rank 0's exit status.
    summary = "".join(err)["".join(err).rindex("Failures:"):]
    assert "exitcode  : 5" in summary and "lost a peer" in summary, summary
    assert status not in (0, None) and not Path(tiny_env["ARTIFACT_PATH"]).exists()


# ---- second pass: no NaN is a score, every config field checked, one line for every failure ----

def crafted(artifact: bytes, edit_config=None, payload_edit=None, edit_tensors=None, edit_header=None) -> bytes:
    """The artifact with its config, tensor entries or raw payload edited and a valid checksum."""
    import brotli
    payload = payload_of(artifact)
    header_len = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + header_len])
    if edit_config is not None:
        edit_config(header["config"])
    if edit_tensors is not None:
        edit_tensors(header["tensors"])
    if edit_header is not None:
        edit_header(header)
    raw = json.dumps(header).encode()
    body = len(raw).to_bytes(4, "little") + raw + payload[4 + header_len:]
    if payload_edit is not None:
        body = payload_edit(body, len(body) - len(payload) + 4 + header_len)
    return tg.seal_artifact("brotli", brotli.compress(body))


CONFIG_EDITS = [
    ("rope_base", 0, "ROPE_BASE=0.0 must be greater than 1"),
    ("rope_base", float("nan"), "ROPE_BASE=nan must be a finite number"),
    ("attn_gate_scale", -1.0, "ATTN_GATE_SCALE=-1.0 must be greater than 0"),
    ("logit_softcap", float("inf"), "LOGIT_SOFTCAP=inf must be a finite number"),
    ("qk_gain_init", 0.0, "QK_GAIN_INIT=0.0 must be greater than 0"),
    ("parallel_residual_start", -2, "PARALLEL_RESIDUAL_START=-2 must be at least 0"),
    ("xsa_last_n", "all", "xsa_last_n='all', which is not an integer (the XSA_LAST_N setting"),
    ("num_layers", 4.5, "num_layers=4.5, which is not an integer"),
    ("num_layers", 4.0, "num_layers=4.0, which is not an integer"),  # the JSON type, not just the value
    ("model_dim", "128", "model_dim='128', which is not an integer"),
    ("num_heads", True, "num_heads=True, which is not an integer"),
    ("rope_base", "10000", "rope_base='10000', which is not a number"),
    ("mlp_mult", 1e308, "MLP_MULT=1e+308 must be at most 64"),
    ("smear_gate", "yes", "smear_gate='yes', which is not true or false"),
    ("smear_gate", 1, "smear_gate=1, which is not true or false"),
    ("doc_attention", None, "doc_attention=None, which is not true or false"),
    ("pass_lora_targets", [1, 2], "pass_lora_targets=[1, 2], which is not a list of strings"),
    ("pass_lora_targets", ["q", "w"], "PASS_LORA_TARGETS has unknown targets ['w']"),
    ("bos_id", 0, "bos_id=0; the challenge's tokenizers put BOS at 1"),
    ("bos_id", True, "bos_id=True"),
    ("bos_id", 1.0, "bos_id=1.0"),
]


@pytest.mark.parametrize("field, value, message", CONFIG_EDITS, ids=[f"{f}={v!r}" for f, v, _ in CONFIG_EDITS])
def test_every_config_field_is_checked_for_type_and_range(artifact, field, value, message):
    blob = crafted(artifact, lambda cfg: cfg.__setitem__(field, value))
    with pytest.raises(tg.InputError, match=re.escape(message)):
        tg.deserialize_artifact(blob, 512)


def test_a_missing_or_extra_config_field_is_refused(artifact):
    for edit in (lambda cfg: cfg.pop("ln_scale"), lambda cfg: cfg.__setitem__("mystery", 1)):
        with pytest.raises(tg.InputError, match="not this script's"):
            tg.deserialize_artifact(crafted(artifact, edit), 512)


def test_a_maximal_config_bomb_is_refused_before_allocation(artifact, tmp_path):
    # The largest model the settings' ranges allow, from a few hundred bytes of compressed zeros.
    def maximal(cfg):
        cfg.update(num_layers=64, model_dim=2048, num_heads=16, num_kv_heads=16, mlp_mult=4.0, num_loops=0)
    bomb = tmp_path / "max.ptz"
    bomb.write_bytes(crafted(artifact, maximal))
    outcome, message, grew = load_in_subprocess(tmp_path, bomb)
    assert outcome == "refused" and "parameters from" in message and "at most 64 a byte" in message
    assert grew < 200, f"the loader's peak memory grew by {grew} MiB"


def first_lqer(tensors: dict) -> dict:
    return next(fix for entry in tensors.values() if entry["kind"] == "int" for fix in entry["lqer"])


ENTRY_EDITS = [
    (lambda t: t["up_bank"].__setitem__("wide", [[0, 0, 999]]), "int8 columns 0-999 outside the matrix"),
    (lambda t: t["up_bank"].__setitem__("wide", [[99, 0, 8]]), "up_bank has no matrix 99"),
    (lambda t: t["tok_emb.weight"].__setitem__("wide", [[0, 0, 8]]), "tok_emb.weight has no matrix 0"),
    (lambda t: t["up_bank"].__setitem__("bits", 99), "up_bank has 99 bits"),
    (lambda t: first_lqer(t)["b"].__setitem__("shape", [4, 1]), "LQER B is |i1[4, 1], expected |i1"),
    (lambda t: first_lqer(t).__setitem__("group", 0), "LQER correction of rank 4, group 0"),
    (lambda t: first_lqer(t)["a"].__setitem__("shape", [64, 999]), "LQER correction of rank 999"),
]


@pytest.mark.parametrize("edit, message", ENTRY_EDITS, ids=["wide-columns", "wide-slot", "wide-slot-of-matrix", "bits",
                                                             "lqer-shape", "lqer-group", "lqer-rank"])
def test_awq_and_lqer_entries_are_checked_before_use(artifact, edit, message):
    assert first_lqer(json.loads(payload_of(artifact)[4:4 + int.from_bytes(payload_of(artifact)[:4], "little")])["tensors"])
    with pytest.raises(tg.InputError, match=re.escape(message)):
        tg.deserialize_artifact(crafted(artifact, edit_tensors=edit), 512)


def test_an_artifact_of_another_format_is_refused_naming_it(artifact):
    # Format 3 had one-lane parallel residuals and no tokenizer fingerprint: its weights mean another model.
    with pytest.raises(tg.InputError, match="the artifact is format 3, written by another version of train_gpt.py"):
        tg.deserialize_artifact(crafted(artifact, edit_header=lambda header: header.update(format=3)), 512)


def test_an_artifact_is_scored_only_with_the_tokenizer_it_was_trained_with(artifact):
    sealed = crafted(artifact, edit_header=lambda header: header.update(tokenizer_sha256="ab" * 32))
    assert tg.deserialize_artifact(sealed, 512, "ab" * 32)[0].vocab_size == 512
    with pytest.raises(tg.InputError, match="trained with the tokenizer of SHA-256 abababababababab, but TOKENIZER_PATH "
                                            "has cdcdcdcdcdcdcdcd; evaluate it with its own tokenizer"):
        tg.deserialize_artifact(sealed, 512, "cd" * 32)


def test_lqer_levels_outside_their_range_are_refused(artifact):
    payload = payload_of(artifact)
    header_len = int.from_bytes(payload[:4], "little")
    ref = first_lqer(json.loads(payload[4:4 + header_len])["tensors"])["a"]

    def out_of_range(body: bytes, start: int) -> bytes:  # int2 levels stop at 1
        lo = start + ref["offset"]
        return body[:lo] + b"\x05" * ref["nbytes"] + body[lo + ref["nbytes"]:]
    with pytest.raises(tg.InputError, match=re.escape("LQER A has levels outside [-2, 1]")):
        tg.deserialize_artifact(crafted(artifact, payload_edit=out_of_range), 512)


def test_non_finite_weights_in_an_artifact_are_refused(artifact):
    payload = payload_of(artifact)
    header_len = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + header_len])
    name, entry = next((n, e) for n, e in header["tensors"].items() if e["kind"] == "fp16")
    ref = entry["data"]

    def nan_tensor(body: bytes, start: int) -> bytes:  # 0xFFFF is an fp16 NaN in either byte order
        lo = start + ref["offset"]
        return body[:lo] + b"\xff" * ref["nbytes"] + body[lo + ref["nbytes"]:]
    with pytest.raises(tg.InputError, match=f"weights are not finite \\({re.escape(name)}\\)"):
        tg.deserialize_artifact(crafted(artifact, payload_edit=nan_tensor), 512)

    def all_ff(body: bytes, start: int) -> bytes:  # the whole payload: a few hundred compressed bytes
        return body[:start] + b"\xff" * (len(body) - start)
    with pytest.raises(tg.InputError, match="weights are not finite|at most 64 a byte"):
        tg.deserialize_artifact(crafted(artifact, payload_edit=all_ff), 512)


def test_bytes_after_an_lzma_stream_are_refused(artifact):
    import lzma
    body = payload_of(artifact)
    good = tg.seal_artifact("lzma", lzma.compress(body))
    assert tg.deserialize_artifact(good, 512)[0].vocab_size == 512
    with pytest.raises(tg.InputError, match="more data follows"):
        tg.deserialize_artifact(tg.seal_artifact("lzma", lzma.compress(body) + b"junk"), 512)


def test_weights_that_overflow_at_export_end_the_run_naming_the_stage(run_in, tmp_path):
    error = run_in(EMBED_LR="1e6", EMBED_WD="0", TTT_ENABLED="0", ITERATIONS="6")
    assert isinstance(error, tg.TrainingDiverged), error
    assert str(error).startswith("export: the quantized weights of") and "not finite" in str(error)
    assert nothing_scored(tmp_path)


def test_a_stage_that_scores_nan_gives_no_final_score(run_in, tmp_path, monkeypatch):
    monkeypatch.setattr(tg, "evaluate_windows", lambda *args, **kwargs: (float("nan"), float("nan")))
    error = run_in(TTT_ENABLED="0", ITERATIONS="2")
    assert isinstance(error, tg.TrainingDiverged) and "the prequant stage scored val_loss nan" in str(error)
    log = (tmp_path / "logs" / "bad.txt").read_text().split("=" * 100 + "\n", 1)[1]
    assert "final_score" not in log and "final_prequant" not in log


@pytest.mark.parametrize("overrides, kind, message", [
    ({"COMPILE": "2"}, tg.ConfigError, "COMPILE='2' must be 0 or 1"),
    ({"EMA_ENABLED": "true"}, tg.ConfigError, "EMA_ENABLED='true' must be 0 or 1"),
    ({"ARTIFACT_PATH": "."}, tg.ConfigError, "ARTIFACT_PATH=. is a folder"),
    ({"NLL_DUMP_PATH": "logs"}, tg.ConfigError, "NLL_DUMP_PATH=logs is a folder"),
    ({"CHECKPOINT_PATH": "/"}, tg.ConfigError, "CHECKPOINT_PATH=/ is a folder"),
    ({"ARTIFACT_PATH": "/proc/m.ptz"}, tg.ConfigError, "the folder /proc does not exist or is not writable"),
    ({"EVAL_ONLY": "1", "ARTIFACT_PATH": "logs"}, tg.ConfigError, "ARTIFACT_PATH=logs is a folder, not a file"),
    ({"EXPORT_ONLY": "logs"}, tg.ConfigError, "EXPORT_ONLY=logs is a folder, not a file"),
    # Inside every setting's range, but no device holds them: refused before anything is allocated.
    ({"MODEL_DIM": "16384", "NUM_HEADS": "128", "NUM_KV_HEADS": "64", "NUM_LAYERS": "32"}, tg.ConfigError,
     "parameters: NUM_LAYERS=32 MODEL_DIM=16384 MLP_MULT=2.0; micro-batches of 1,024 tokens) need at least"),
    ({"MLP_MULT": "60", "MODEL_DIM": "4096", "NUM_HEADS": "32", "NUM_KV_HEADS": "8", "NUM_LAYERS": "64"}, tg.ConfigError,
     "lower MICRO_BATCH_SEQS, TRAIN_SEQ_LEN, NUM_LAYERS, MODEL_DIM or MLP_MULT"),
    # A tiny model whose micro-batch's activations and logits are what cannot fit.
    ({"TRAIN_SEQ_LEN": "1048576", "TRAIN_BATCH_TOKENS": "67108864", "MICRO_BATCH_SEQS": "64"}, tg.ConfigError,
     "micro-batches of 67,108,864 tokens) need at least"),
    ({"EXPORT_ONLY": "/dev/null"}, tg.ConfigError, "EXPORT_ONLY=/dev/null is not a regular file"),
    ({"MLP_MULT": "1e308"}, tg.ConfigError, "MLP_MULT=1e+308 must be at most 64"),
], ids=["compile-2", "bool-word", "artifact-dir", "dump-dir", "checkpoint-dir", "unwritable-as-root", "eval-only-folder",
        "export-only-folder", "model-beyond-memory", "mlp-beyond-memory", "activations-beyond-memory", "export-only-device",
        "mlp-mult-overflow"])
def test_second_pass_settings_fail_before_training(run_in, tmp_path, overrides, kind, message):
    (tmp_path / "logs").mkdir(exist_ok=True)
    error = run_in(**overrides)
    assert isinstance(error, kind) and message in str(error), error
    assert nothing_scored(tmp_path)


def test_the_training_memory_bound_is_below_what_the_gpu_measured():
    # The first GPU run (README) allocated 44.0 GiB for the default model's 98,304-token micro-batch:
    # a lower bound above it would refuse the default run.
    h = tg.Hyperparameters(environ={})
    h.validate(1)
    params, need = tg.training_memory_bytes(h, 1)
    assert h.micro_batch(1) * h.window_len == 98_304 and 20 * params < need < 44.0 * 2**30


def test_an_empty_numeric_variable_means_unset_the_presets_value_else_the_default():
    assert tg.Hyperparameters(environ={"NUM_LAYERS": "", "ITERATIONS": ""}).num_layers == 11
    under_preset = tg.Hyperparameters(environ={"PRESET": "cpu", "NUM_LAYERS": "", "ITERATIONS": "", "COMPILE": ""})
    assert (under_preset.num_layers, under_preset.iterations, under_preset.compile) == (4, 360, False)
    assert tg.Hyperparameters(environ={"PRESET": "cpu", "CHECKPOINT_PATH": ""}).checkpoint_path == ""  # a string: a value


@pytest.mark.parametrize("content, message", [
    (b"", "is not a SentencePiece model"),
    (b"not a model at all" * 10, "is not a SentencePiece model"),
], ids=["empty", "junk"])
def test_a_tokenizer_that_is_not_sentencepiece_is_one_line(run_in, tmp_path, content, message):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    error = run_in(TOKENIZER_PATH=str(bad))
    assert isinstance(error, tg.InputError) and message in str(error)
    assert nothing_scored(tmp_path)


class RunsCode:
    """Unpickling this would run a shell command: the loader must refuse it unread."""
    def __reduce__(self):
        return (subprocess.call, (["touch", "pwned"],))


def truncated_checkpoint(path: Path) -> None:
    torch.save({"config": {}, "state_dict": {"w": torch.zeros(4096)}}, path)
    path.write_bytes(path.read_bytes()[:6000])


def edited_checkpoint(edit):
    """A checkpoint of the tiny model, as a training run saves it, with one weight edited."""
    def make(path: Path) -> None:
        torch.manual_seed(0)
        model = tg.GPT(tg.Hyperparameters(environ=TINY_RUN_ENV).model_config())
        state = model.state_dict()
        state["tok_emb.weight"] = edit(state["tok_emb.weight"])
        torch.save({"config": model.cfg.__dict__, "state_dict": state}, path)
    return make


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b"\x80\x02junk"), "(not a torch.save file"),
    (truncated_checkpoint, "(truncated or corrupt)"),
    (lambda p: p.write_text("a text file\n"), "(not a torch.save file: "),
    (lambda p: p.write_bytes(pickle.dumps(RunsCode(), protocol=2, fix_imports=False)), "(it holds Python objects other than tensors: "
                                                                       "subprocess.call; refused without unpickling them)"),
    (lambda p: p.write_bytes(pickle.dumps(RunsCode(), protocol=4)), "(it holds Python objects other than tensors: "
                                                                       "pickle opcode 149; refused without unpickling them)"),
    (lambda p: torch.save([1, 2], p), "(it does not hold a config and a state_dict)"),
    (lambda p: torch.save({"config": {"bogus": 1}, "state_dict": {}}, p), "model config has the fields ['bogus']"),
    (edited_checkpoint(lambda w: torch.full_like(w, float("nan"))), "(tok_emb.weight holds non-finite values, which no "
                                                                   "trained model has and fp16 cannot store)"),
    (edited_checkpoint(lambda w: w * 1e30), "(tok_emb.weight holds |w| up to "),
    (edited_checkpoint(lambda w: w.to(torch.complex64)), "(tok_emb.weight is a torch.complex64 tensor (torch.strided, on cpu), "
                                                         "not dense floating-point weights)"),
    (edited_checkpoint(lambda w: w.long()), "(tok_emb.weight is a torch.int64 tensor"),
    (edited_checkpoint(lambda w: w.to_sparse()), "(tok_emb.weight is a torch.float32 tensor (torch.sparse_coo"),
    (edited_checkpoint(lambda w: w[:, :-1].clone()), "(its weights do not fit its config: "),
], ids=["junk", "truncated", "text", "code", "code-protocol-4", "list", "crafted-config", "nan-weights", "huge-weights",
        "complex-weights", "integer-weights", "sparse-weights", "wrong-shape"])
def test_a_damaged_checkpoint_is_one_line_read_first_and_never_unpickled(run_in, tmp_path, monkeypatch, make, reason, capfd):
    ckpt = tmp_path / "c.pt"
    make(ckpt)
    monkeypatch.setattr(tg, "load_validation_tokens", lambda *a: pytest.fail("the data was read before the checkpoint"))
    error = run_in(EXPORT_ONLY=str(ckpt))
    assert isinstance(error, tg.InputError) and f"EXPORT_ONLY={ckpt}" in str(error) and reason in str(error), error
    assert "weights_only" not in str(error) and "\n" not in str(error) and not (tmp_path / "pwned").exists()
    assert "Warning" not in capfd.readouterr().err


def test_an_existing_artifact_is_kept_aside_so_a_failed_run_leaves_none(run_in, tmp_path):
    old = tmp_path / "m.ptz"
    old.write_bytes(b"an earlier run's artifact")
    error = run_in(EMBED_LR="1e6", EMBED_WD="0", TTT_ENABLED="0", ITERATIONS="6")  # dies at export
    assert isinstance(error, tg.TrainingDiverged)
    assert not old.exists() and (tmp_path / "m.ptz.1").read_bytes() == b"an earlier run's artifact"
    assert not list(tmp_path.glob("*.partial"))


def test_the_nll_dump_is_written_at_exactly_the_path_logged(tiny_env, tmp_path):
    dump = tmp_path / "dump"  # no .npz: numpy would add one to a bare name
    run_script({**tiny_env, "NLL_DUMP_PATH": str(dump), "TTT_ENABLED": "0", "ITERATIONS": "2"}, tmp_path)
    assert dump.is_file() and not (tmp_path / "dump.npz").exists()
    assert set(np.load(dump)) >= {"nll", "bytes", "pos"}


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGINT, 130, "error: interrupted while training step"),
    (signal.SIGTERM, 143, "error: stopped by SIGTERM while training step"),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_training_logs_one_line_and_its_own_exit_status(tiny_env, tmp_path, sig, status, message):
    import os
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1", **tiny_env, "ITERATIONS": "100000", "TRAIN_LOG_EVERY": "1"}
    # A shell's background job (`cmd &`, nohup) starts with Ctrl-C ignored, and Python then never
    # raises KeyboardInterrupt: the child gets a terminal's default, wherever pytest runs.
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "logs" / "tiny.txt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and not (log.exists() and "step:3/" in log.read_text()):
            time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # no 100,000-step run left behind when the test fails
    assert proc.returncode == status, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in err and not Path(tiny_env["ARTIFACT_PATH"]).exists()
    assert log.read_text().rstrip().endswith(lines[0])


# ---- no run destroys a file it did not create for itself; no forged byte count scores ----

def file_hashes(*folders: Path) -> dict[str, str]:
    import hashlib
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def own_data(tiny_data, tmp_path) -> dict[str, str]:
    """A copy of the tiny data set in tmp_path/data (the tests below point outputs at its files)."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_data["DATA_PATH"], data)
    shutil.copy(tiny_data["TOKENIZER_PATH"], data / "tok.model")
    return {"DATA_PATH": str(data), "TOKENIZER_PATH": str(data / "tok.model"), "VOCAB_SIZE": tiny_data["VOCAB_SIZE"]}


def with_sidecar(counts_of):
    """Setup: a byte sidecar beside the validation shard, counts_of(honest counts) -> the counts written."""
    def setup(data: Path) -> None:
        sp = tg.load_tokenizer(str(data / "tok.model"), 512)
        tables = tg.build_byte_tables(sp, 512)
        tokens = torch.from_numpy(np.asarray(tg.load_data_shard(data / "fineweb_val_000000.bin")).astype(np.int64))
        honest = np.zeros(len(tokens), dtype=np.int64)
        honest[1:] = tables.target_bytes(tokens[:-1], tokens[1:]).numpy()
        write_shard(data / "fineweb_val_bytes_000000.bin", counts_of(honest))
    return setup


def forged_max(counts):
    counts = counts.copy()
    counts[100] = 65535  # the uint16 limit: one token claiming 64 KB
    return counts


# (name, outputs relative to tmp_path or data files, setup of the data folder, exit status, message fragment)
DESTRUCTIVE = [
    ("checkpoint-is-artifact", {"CHECKPOINT_PATH": "{tmp}/m.ptz"}, None, 2,
     "CHECKPOINT_PATH={tmp}/m.ptz is the same file as ARTIFACT_PATH={tmp}/m.ptz"),
    ("nll-dump-is-artifact", {"NLL_DUMP_PATH": "{tmp}/m.ptz"}, None, 2, "NLL_DUMP_PATH={tmp}/m.ptz is the same file as ARTIFACT_PATH"),
    ("nll-dump-is-the-log", {"NLL_DUMP_PATH": "logs/bad.txt"}, None, 2,
     "NLL_DUMP_PATH=logs/bad.txt is the same file as RUN_ID=bad: logs/bad.txt"),
    ("artifact-is-the-log", {"ARTIFACT_PATH": "logs/bad.txt"}, None, 2, "ARTIFACT_PATH=logs/bad.txt is the same file as RUN_ID=bad"),
    ("artifact-is-a-val-shard", {"ARTIFACT_PATH": "{data}/fineweb_val_000000.bin"}, None, 2,
     "is the same file as the data file {data}/fineweb_val_000000.bin"),
    ("checkpoint-is-the-tokenizer", {"CHECKPOINT_PATH": "{data}/tok.model"}, None, 2,
     "CHECKPOINT_PATH={data}/tok.model is the same file as TOKENIZER_PATH={data}/tok.model"),
    ("sidecar-of-zeros", {}, with_sidecar(lambda c: 0 * c), 3, "stand for no bytes at all (their byte sidecar is all zeros)"),
    ("sidecar-claiming-64-kb", {}, with_sidecar(forged_max), 3,
     "says the token at position 100 stands for 65535 bytes, more than any token of this tokenizer can"),
    ("sidecar-doubled", {}, with_sidecar(lambda c: 2 * c), 3, "(2.00x, honest ones stay under 1.5x); they are corrupt or forged"),
    ("progressive-context-zero", {"PROGRESSIVE_CONTEXT": "0:0.5"}, None, 2, "'0:0.5' is not length:until with a positive length"),
    ("progressive-context-negative", {"PROGRESSIVE_CONTEXT": "-32:0.5"}, None, 2, "'-32:0.5' is not length:until"),
    ("flex-compiled-on-the-cpu", {"ATTENTION_KERNEL": "flex", "COMPILE": "1"}, None, 2,
     "ATTENTION_KERNEL=flex: flex is not available on this cpu machine"),
]


@pytest.mark.parametrize("name, outputs, setup, status, message", DESTRUCTIVE, ids=[row[0] for row in DESTRUCTIVE])
def test_a_run_that_would_destroy_a_file_or_forge_a_score_stops_at_start(own_data, tmp_path, name, outputs, setup, status,
                                                                         message):
    data = Path(own_data["DATA_PATH"])
    if setup:
        setup(data)
    (tmp_path / "m.ptz").write_bytes(b"an earlier run's artifact")
    fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{data}", str(data))
    env = {**TINY_RUN_ENV, **own_data, "RUN_ID": "bad", "ARTIFACT_PATH": str(tmp_path / "m.ptz"),
           "CHECKPOINT_PATH": str(tmp_path / "m.pt"), **{k: fill(v) for k, v in outputs.items()}}
    before = file_hashes(tmp_path)
    proc = run_script(env, tmp_path, check=False)
    assert proc.returncode == status, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and fill(message) in line, line
    after = file_hashes(tmp_path)
    assert {k: v for k, v in after.items() if "/logs/" not in k} == before  # the log, when it was started, is the only new file


def test_three_runs_on_one_artifact_path_keep_every_runs_artifact_and_checkpoint(tiny_data, tmp_path):
    env = {**TINY_RUN_ENV, **tiny_data, "ARTIFACT_PATH": "final_model.ptz", "CHECKPOINT_PATH": "final_model.pt",
           "ITERATIONS": "3", "SLIDING_ENABLED": "0", "TTT_ENABLED": "0"}
    digests = []
    for seed in (1, 2, 3):
        run_script({**env, "SEED": str(seed), "RUN_ID": f"seed{seed}"}, tmp_path)
        digests.append({name: (tmp_path / name).read_bytes() for name in ("final_model.ptz", "final_model.pt")})
    for name in ("final_model.ptz", "final_model.pt"):
        kept = [(tmp_path / f"{name}.1").read_bytes(), (tmp_path / f"{name}.2").read_bytes(), (tmp_path / name).read_bytes()]
        assert kept == [d[name] for d in digests] and len(set(kept)) == 3
    assert "earlier_file_kept setting:ARTIFACT_PATH path:final_model.ptz as:final_model.ptz.2" in (
        tmp_path / "logs" / "seed3.txt").read_text()


def test_eval_only_refuses_an_artifact_trained_with_another_tokenizer(tiny_data, tmp_path):
    # A CaseOps artifact on plain data of the same vocabulary size: same shapes, other token meanings.
    h = tg.Hyperparameters(environ={**TINY_RUN_ENV, "QUANT_METHOD": "rtn"})
    torch.manual_seed(0)
    model = randomize(tg.GPT(h.model_config()), 0)
    artifact = tmp_path / "caseops.ptz"
    artifact.write_bytes(tg.serialize_artifact(tg.quantize_model(model, None, h, RT), model.cfg, "brotli", "ab" * 32))
    proc = run_script({**TINY_RUN_ENV, **tiny_data, "RUN_ID": "other", "EVAL_ONLY": "1", "ARTIFACT_PATH": str(artifact)},
                      tmp_path, check=False)
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert "trained with the tokenizer of SHA-256 abababababababab, but TOKENIZER_PATH has" in line
    assert "\nfinal_" not in (tmp_path / "logs" / "other.txt").read_text().split("=" * 100, 1)[1]  # no stage scored
