"""Scoring CaseOps data against the original bytes: with byte sidecars next to the validation
shards, every stage (plain, sliding, each TTT mode, the NLL dump) divides by the sidecar's bytes
at the scored positions; the sidecar's total is the original text's UTF-8 length; a sidecar that
does not fit its shard, or a CaseOps tokenizer without sidecars, stops the run at start."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import ROOT, TINY_RUN_ENV, log_lines, nonzero_model, run_script, same_runner
from test_caseops import corpus_docs
from test_data_metric import write_shard

sys.path.insert(0, str(ROOT / "data"))
import make_local_dataset as builder  # noqa: E402

CPU = torch.device("cpu")
RT = tg.Runtime(0, 1, 0, CPU)
VOCAB = 512


@pytest.fixture(scope="module")
def caseops_set(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sidecar")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in corpus_docs(320)), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--output-root", str(tmp / "out"),
                           "--input", str(corpus), "--caseops", "--vocab-size", str(VOCAB), "--max-bytes", "300000",
                           "--val-docs", "40"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    paths = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    docs, _ = builder.load_documents([corpus], 300_000)
    _, val_docs = builder.split_documents(docs, 40, seed=1337)
    return {"paths": paths, "val_docs": val_docs, "tmp": tmp}


def loaded(caseops_set) -> tuple[torch.Tensor, tg.ByteTables]:
    paths = caseops_set["paths"]
    sp = tg.load_tokenizer(paths["TOKENIZER_PATH"], VOCAB)
    assert tg.is_caseops_tokenizer(sp)
    tables = tg.build_byte_tables(sp, VOCAB)
    tables.sidecar = tg.load_validation_bytes(paths["DATA_PATH"], 0, "auto", 65535)
    return tg.load_validation_tokens(paths["DATA_PATH"]), tables


def tiny_model() -> tg.GPT:
    return nonzero_model(tg.Hyperparameters(environ={**TINY_RUN_ENV, "VOCAB_SIZE": str(VOCAB)}))


def test_the_sidecar_total_is_the_original_texts_utf8_length(caseops_set):
    val, tables = loaded(caseops_set)
    assert tables.denominator == "sidecar" and len(tables.sidecar) == len(val)
    # Targets are positions 1..N-1; position 0 is the first document's BOS, which has no bytes.
    assert int(tables.sidecar[1:].sum()) == sum(len(d.encode("utf-8")) for d in caseops_set["val_docs"])
    # The lookup tables would count the operators' own bytes (3 each): a different, wrong total.
    plain = tg.build_byte_tables(tg.load_tokenizer(caseops_set["paths"]["TOKENIZER_PATH"], VOCAB), VOCAB)
    assert int(plain.target_bytes(val[:-1], val[1:]).sum()) > int(tables.sidecar[1:].sum())
    with pytest.raises(ValueError, match="need the targets' positions"):
        tables.target_bytes(val[:-1], val[1:])


@pytest.mark.parametrize("stage", ["roundtrip", "sliding", "chunked", "docs", "phased"])
def test_every_stage_divides_by_the_sidecar_bytes_of_what_it_scored(caseops_set, stage):
    val, tables = loaded(caseops_set)
    val = val[:3000]
    tables.sidecar = tables.sidecar[:3000]
    h = tg.Hyperparameters(environ={**TINY_RUN_ENV, "VOCAB_SIZE": str(VOCAB), "TTT_MODE": stage, "TTT_CHUNK_TOKENS": "1024"})
    model = tiny_model()
    recorder = tg.NllRecorder(len(val))
    if stage in ("roundtrip", "sliding"):
        stride = h.eval_seq_len if stage == "roundtrip" else h.eval_stride
        loss, bpb = tg.evaluate_windows(model, val, h.eval_seq_len, stride, h, tables, RT, recorder)
    elif stage == "chunked":
        loss, bpb = tg.score_first_ttt(model, same_runner(model), val, h, tables, RT, recorder)
    else:
        loss, bpb = tg.score_documents_ttt(model, tg.Runners.eager(model), val, h, tables, RT, recorder)
    assert torch.equal(recorder.count[1:], torch.ones(len(val) - 1, dtype=torch.float64))
    assert torch.equal(recorder.bytes[1:], tables.sidecar[1:].double())
    independent = recorder.nll[1:].sum().item() / math.log(2) / tables.sidecar[1:].sum().item()
    assert bpb == pytest.approx(independent, rel=1e-9)


def test_a_whole_run_logs_its_denominator_and_dumps_sidecar_bytes(caseops_set, tmp_path):
    paths = caseops_set["paths"]
    dump = tmp_path / "nll.npz"
    env = {**TINY_RUN_ENV, **paths, "RUN_ID": "caseops", "ITERATIONS": "3", "ARTIFACT_PATH": str(tmp_path / "m.ptz"),
           "CHECKPOINT_PATH": "", "NLL_DUMP_PATH": str(dump), "VAL_TOKENS_LIMIT": "2500"}
    run_script(env, tmp_path)
    log = (tmp_path / "logs" / "caseops.txt").read_text().split("=" * 100 + "\n", 1)[1]
    assert "bytes:sidecar caseops:1" in next(line for line in log.splitlines() if line.startswith("data val_tokens:"))
    saved = np.load(dump)
    sidecar = tg.load_validation_bytes(paths["DATA_PATH"], 2500, "auto", 65535).numpy()
    assert np.array_equal(saved["bytes"], sidecar[saved["pos"]])
    ttt = next(line for line in log.splitlines() if line.startswith("final_ttt"))
    bpb = float(ttt.split("val_bpb:")[1].split()[0])
    assert bpb == pytest.approx(saved["nll"].sum() / math.log(2) / saved["bytes"].sum(), rel=1e-7)


def copy_set(caseops_set, tmp_path, edit) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    source = tg.Path(caseops_set["paths"]["DATA_PATH"])
    for f in source.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    edit(data)
    return {**caseops_set["paths"], "DATA_PATH": str(data)}


@pytest.mark.parametrize("edit, message, extra", [
    (lambda d: write_shard(d / "fineweb_val_bytes_000000.bin", np.ones(7)), "holds 7 byte counts but", {}),
    (lambda d: (d / "fineweb_val_bytes_000000.bin").write_bytes(b"\0" * 100), "truncated shard", {}),
    (lambda d: (d / "fineweb_val_bytes_000000.bin").unlink(), "is a CaseOps tokenizer, but DATA_PATH", {}),
    (lambda d: (d / "fineweb_val_bytes_000000.bin").unlink(), "is missing (BYTE_SIDECAR=1)", {"BYTE_SIDECAR": "1"}),
], ids=["wrong_length", "corrupt", "caseops_without_sidecar", "required_but_missing"])
def test_a_sidecar_that_does_not_fit_stops_the_run_at_start_in_one_line(caseops_set, tmp_path, edit, message, extra):
    paths = copy_set(caseops_set, tmp_path, edit)
    env = {**TINY_RUN_ENV, **paths, **extra, "RUN_ID": "bad", "ARTIFACT_PATH": str(tmp_path / "m.ptz"), "CHECKPOINT_PATH": ""}
    proc = run_script(env, tmp_path, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "m.ptz").exists() and not log_lines(tmp_path, "bad", "train_setup")


def test_sidecar_globs_never_take_a_sidecar_for_a_token_shard(caseops_set):
    names = [f.name for f in tg.shard_files(caseops_set["paths"]["DATA_PATH"], "val")]
    assert names == ["fineweb_val_000000.bin"]
    assert tg.sidecar_path(tg.Path("x/fineweb_val_000003.bin")) == tg.Path("x/fineweb_val_bytes_000003.bin")
