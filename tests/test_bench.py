"""tests/bench_pipeline.py at a tiny scale, so the GPU benchmark harness cannot rot."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


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
