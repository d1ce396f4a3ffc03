"""Whole-pipeline runs of the real train_gpt.py: the self-extracting wrapper behaves exactly
like the plain script, and records/package.py turns real logs into a valid folder."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, log_lines, run_script

sys.path.insert(0, str(ROOT / "records"))
import package  # noqa: E402


def final_lines(cwd, run_id: str) -> list[str]:
    # eval_time differs from run to run; everything else must match exactly.
    return [line.rsplit(" eval_time:", 1)[0] for line in log_lines(cwd, run_id, "final_")]


@pytest.mark.parametrize("method", ["lzma", "brotli"])
def test_wrapped_script_gives_the_same_results_and_counts_fewer_code_bytes(tiny_env, tmp_path, method):
    plain_dir, wrapped_dir = tmp_path / "plain", tmp_path / "wrapped"
    plain_dir.mkdir(), wrapped_dir.mkdir()
    source = (ROOT / "train_gpt.py").read_text(encoding="utf-8")
    wrapper = wrapped_dir / "train_gpt.py"
    wrapper.write_text(package.make_wrapper(source, method), encoding="utf-8")
    env = {**tiny_env, "ITERATIONS": "6"}
    run_script({**env, "ARTIFACT_PATH": str(plain_dir / "m.ptz"), "CHECKPOINT_PATH": ""}, plain_dir)
    run_script({**env, "ARTIFACT_PATH": str(wrapped_dir / "m.ptz"), "CHECKPOINT_PATH": ""}, wrapped_dir, script=wrapper)

    plain, wrapped = final_lines(plain_dir, "tiny"), final_lines(wrapped_dir, "tiny")
    assert [l for l in plain if not l.startswith("final_score")] == [l for l in wrapped if not l.startswith("final_score")]
    assert (plain_dir / "m.ptz").read_bytes() == (wrapped_dir / "m.ptz").read_bytes()
    artifact = {d: dict(kv.split(":") for kv in log_lines(d, "tiny", "artifact ")[0].split()[1:]) for d in (plain_dir, wrapped_dir)}
    assert int(artifact[plain_dir]["code_bytes"]) == len(source.encode("utf-8"))
    assert int(artifact[wrapped_dir]["code_bytes"]) == wrapper.stat().st_size < len(source.encode("utf-8")) // 2
    saved = int(artifact[plain_dir]["total_bytes"]) - int(artifact[wrapped_dir]["total_bytes"])
    assert saved == len(source.encode("utf-8")) - wrapper.stat().st_size
    # The score line differs only by the bytes the wrapper saved.
    assert plain[-1].split(" total_bytes:")[0] == wrapped[-1].split(" total_bytes:")[0]
    # The wrapped run logs the minified text it ran and the readable file's SHA-256, so its logs
    # package with the plain script (records/package.py --wrap).
    run = package.parse_log((wrapped_dir / "logs" / "tiny.txt").read_text(encoding="utf-8"))
    assert package.same_source(run.source, package.minify(source))
    assert run.script["source_sha256"] == hashlib.sha256(source.encode("utf-8")).hexdigest()


def test_packager_builds_a_valid_folder_from_real_logs(tiny_env, tmp_path):
    logs = []
    for seed in (1, 2):
        run_id = f"seed{seed}"
        run_script({**tiny_env, "SEED": str(seed), "RUN_ID": run_id, "ARTIFACT_PATH": str(tmp_path / f"{run_id}.ptz"),
                    "ITERATIONS": "4", "VAL_TOKENS_LIMIT": "0",
                    "EVAL_STRIDE": "64", "TTT_EPOCHS": "1", "TTT_CHUNK_TOKENS": "16384"}, tmp_path)
        logs.append(str(tmp_path / "logs" / f"{run_id}.txt"))
    out = tmp_path / "records"
    options = ["--name", "TinyTest", "--author", "Test", "--date", "2026-11-23", "--out-root", str(out), "--non-record"]
    cmd = [sys.executable, str(ROOT / "records" / "package.py"), *options, "--wrap", "lzma", "--logs", *logs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = next(out.rglob("2026-11-23_TinyTest"))
    check = subprocess.run([sys.executable, str(ROOT / "records" / "package.py"), "--check", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    submission = json.loads((folder / "submission.json").read_text())
    for seed, log in zip((1, 2), logs):
        score = log_lines(tmp_path, f"seed{seed}", "final_score")[0]
        assert f"val_bpb:{submission['seed_results'][str(seed)]['val_bpb']:.8f}" in score
        assert f"total_bytes:{submission['seed_results'][str(seed)]['artifact_bytes']}" in score
    assert package.is_wrapper((folder / "train_gpt.py").read_text())

    # A log whose run was cut short (no final_score) is refused with a sentence.
    cut = tmp_path / "cut.txt"
    cut.write_text("".join(line for line in open(logs[1]) if not line.startswith("final_score")))
    refused = [sys.executable, str(ROOT / "records" / "package.py"), *options, "--force", "--logs", logs[0], str(cut)]
    proc = subprocess.run(refused, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no final_score" in proc.stderr
