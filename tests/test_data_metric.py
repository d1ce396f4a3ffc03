"""The DATA section of train_gpt.py: shard reading, the training loader, validation tokens,
the bits-per-byte byte tables and accumulator, and the tokenizer checks."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import ROOT, log_lines, run_script

HEADER_WORDS = 256


def write_shard(path: Path, tokens, magic: int = 20240520, version: int = 1, count: int | None = None) -> Path:
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())
    return path


# ---- shards ----

def test_builder_shards_read_back_identically(tiny_data):
    for path in sorted(Path(tiny_data["DATA_PATH"]).glob("fineweb_*.bin")):
        raw = path.read_bytes()
        expected = np.frombuffer(raw[4 * HEADER_WORDS:], dtype="<u2")
        loaded = tg.load_data_shard(path)
        assert loaded.dtype == np.uint16 and np.array_equal(loaded, expected)
        assert len(loaded) == int(np.frombuffer(raw[:12], dtype="<i4")[2])


@pytest.mark.parametrize("damage, problem", [
    ("truncated", "truncated shard"),
    ("magic", "wrong magic"),
    ("version", "unsupported shard version"),
    ("size", "size mismatch"),
])
def test_bad_shard_fails_naming_file_and_problem(tmp_path, damage, problem):
    path = tmp_path / "fineweb_train_000000.bin"
    tokens = np.arange(100) % 50
    if damage == "truncated":
        path.write_bytes(b"\x00" * 100)
    elif damage == "magic":
        write_shard(path, tokens, magic=1234)
    elif damage == "version":
        write_shard(path, tokens, version=7)
    else:
        write_shard(path, tokens, count=150)
    with pytest.raises(ValueError) as info:
        tg.load_data_shard(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_shards_say_how_to_get_them(tmp_path):
    with pytest.raises(tg.InputError, match="make_local_dataset.py"):
        tg.shard_files(str(tmp_path), "train")


# ---- the training loader ----

def make_train_shards(folder: Path, lengths: list[int]) -> np.ndarray:
    """Shards whose tokens are their global position mod 65536, so a window names its source."""
    folder.mkdir(parents=True, exist_ok=True)
    offset, all_tokens = 0, []
    for i, n in enumerate(lengths):
        tokens = (np.arange(offset, offset + n) % 65536).astype(np.uint16)
        write_shard(folder / f"fineweb_train_{i:06d}.bin", tokens)
        all_tokens.append(tokens)
        offset += n
    return np.concatenate(all_tokens)


def window_ids(batch: torch.Tensor) -> set[int]:
    return {int(row[0]) for row in batch}


def test_loader_ranks_get_disjoint_sequences_covering_all_shards(tmp_path):
    seq_len, global_seqs = 16, 8
    make_train_shards(tmp_path, [16 * 10 + 1, 16 * 7 + 5, 16 * 3 + 1])  # 10 + 7 + 3 = 20 windows
    loaders = [tg.TrainLoader(str(tmp_path), seq_len, global_seqs, r, 2, seed=5) for r in range(2)]
    assert loaders[0].num_windows == 20
    seen: list[int] = []
    for _ in range(2):  # two steps = 16 of the 20 windows in epoch 0
        batches = [loader.next_batch(torch.device("cpu")) for loader in loaders]
        assert all(b.shape == (global_seqs // 2, seq_len + 1) for b in batches)
        assert not window_ids(batches[0]) & window_ids(batches[1])
        for b in batches:
            # Each row is a contiguous run of one shard: consecutive positions.
            assert torch.all(b[:, 1:] - b[:, :-1] == 1)
            seen += sorted(window_ids(b))
    assert len(set(seen)) == 16
    shard_of = {start: np.searchsorted([0, 161, 278], start, side="right") - 1 for start in seen}
    assert set(shard_of.values()) == {0, 1, 2}


def test_loader_epoch_covers_every_window_once_and_is_seeded(tmp_path):
    make_train_shards(tmp_path, [8 * 12 + 1, 8 * 12 + 1])
    loader = tg.TrainLoader(str(tmp_path), 8, 4, 0, 1, seed=3)
    epoch = [i for _ in range(6) for i in loader.next_global_indices()]
    assert sorted(epoch) == list(range(24))
    again = tg.TrainLoader(str(tmp_path), 8, 4, 0, 1, seed=3)
    other = tg.TrainLoader(str(tmp_path), 8, 4, 0, 1, seed=4)
    first = [again.next_global_indices().tolist() for _ in range(6)]
    assert [i for step in first for i in step] == epoch
    assert [other.next_global_indices().tolist() for _ in range(6)] != first


def test_global_batch_is_the_same_for_any_world_size(tmp_path):
    make_train_shards(tmp_path, [32 * 40 + 1])
    one = tg.TrainLoader(str(tmp_path), 32, 8, 0, 1, seed=9).next_batch(torch.device("cpu"))
    for world in (2, 4, 8):
        parts = [tg.TrainLoader(str(tmp_path), 32, 8, r, world, seed=9).next_batch(torch.device("cpu")) for r in range(world)]
        assert torch.equal(torch.cat(parts), one)


def test_loader_with_too_little_data_says_so(tmp_path):
    make_train_shards(tmp_path, [50])
    with pytest.raises(ValueError, match="TRAIN_BATCH_TOKENS"):
        tg.TrainLoader(str(tmp_path), 16, 8, 0, 1, seed=0)


def test_validation_tokens_limit_takes_a_prefix(tmp_path):
    tokens = np.arange(500) % 300
    write_shard(tmp_path / "fineweb_val_000000.bin", tokens[:200])
    write_shard(tmp_path / "fineweb_val_000001.bin", tokens[200:])
    assert torch.equal(tg.load_validation_tokens(str(tmp_path)), torch.from_numpy(tokens.astype(np.int64)))
    assert torch.equal(tg.load_validation_tokens(str(tmp_path), limit=250), torch.from_numpy(tokens[:250].astype(np.int64)))


# ---- bits per byte ----

def docs_of(tokens: np.ndarray) -> list[np.ndarray]:
    starts = list(np.flatnonzero(tokens == 1)) + [len(tokens)]
    return [tokens[a:b] for a, b in zip(starts, starts[1:])]


def assert_bytes_equal_decoded_text(data_path: str, tokenizer_path: str, vocab: int) -> int:
    """Per document and in total, the byte tables count exactly the decoded UTF-8 bytes."""
    sp = tg.load_tokenizer(tokenizer_path, vocab)
    tables = tg.build_byte_tables(sp, vocab)
    val = tg.load_validation_tokens(data_path)
    counted = tables.target_bytes(val[:-1], val[1:])
    assert int(val[0]) == 1, "the stream starts with BOS"
    decoded_total, position = 0, 1
    for doc in docs_of(val.numpy()):
        n = len(doc)
        # Targets inside this document: its tokens after BOS, plus the next document's BOS (0 bytes).
        doc_bytes = int(counted[position - 1: position - 1 + n].sum())
        text = sp.decode(doc[1:].tolist())
        assert doc_bytes == len(text.encode("utf-8")), text[:80]
        decoded_total += len(text.encode("utf-8"))
        position += n
    assert int(counted.sum()) == decoded_total
    return decoded_total


def test_byte_count_equals_decoded_utf8_on_real_text(tiny_data):
    total = assert_bytes_equal_decoded_text(tiny_data["DATA_PATH"], tiny_data["TOKENIZER_PATH"], int(tiny_data["VOCAB_SIZE"]))
    assert total > 10_000


def test_byte_count_equals_decoded_utf8_with_non_ascii_digits_and_byte_fallback(tmp_path):
    rng = np.random.default_rng(0)
    words = "the of and river stone light quick 2024 3.14159 café naïve Zürich 東京 Ωmega ½ über".split()
    rare = ["🚀", "𝔘𝔫𝔦", "ᚠᚢᚦ", "🦀🦀", "ǅ", "\u00a0nbsp", "tab\there", "ﬁne"]
    docs = []
    for d in range(60):
        body = " ".join(rng.choice(words, size=80).tolist())
        docs.append(f"doc {d}: {body} {rare[d % len(rare)]} {rng.integers(0, 10**9)}\n")
    (tmp_path / "text.jsonl").write_text("".join('{"text": %s}\n' % __import__("json").dumps(t) for t in docs), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"), "--input", str(tmp_path / "text.jsonl"),
                           "--output-root", str(tmp_path), "--vocab-size", "320", "--val-docs", "20", "--name", "mixed"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    sp = tg.load_tokenizer(paths["TOKENIZER_PATH"], 320)
    val = tg.load_validation_tokens(paths["DATA_PATH"])
    assert any(sp.is_byte(int(t)) for t in val), "the test text must exercise byte-fallback pieces"
    assert any(sp.id_to_piece(int(t)).strip("\u2581").isdigit() for t in val)
    assert_bytes_equal_decoded_text(paths["DATA_PATH"], paths["TOKENIZER_PATH"], 320)


def test_uniform_predictor_scores_log2_vocab_times_tokens_over_bytes(tiny_data):
    vocab = int(tiny_data["VOCAB_SIZE"])
    sp = tg.load_tokenizer(tiny_data["TOKENIZER_PATH"], vocab)
    tables = tg.build_byte_tables(sp, vocab)
    val = tg.load_validation_tokens(tiny_data["DATA_PATH"], limit=5000)
    h = tg.Hyperparameters(environ={"EVAL_BATCH_SEQS": "4"})
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"))

    def uniform(inputs, targets, reduction="none"):
        return torch.full(targets.shape, math.log(vocab))

    for stride in (128, 32):
        loss, bpb = tg.evaluate_windows(uniform, val, 128, stride, h, tables, rt)
        tokens = len(val) - 1
        nbytes = int(tables.target_bytes(val[:-1], val[1:]).sum())
        # Per-token NLLs are float32 (log V rounded once); the sums are float64.
        per_token = float(torch.tensor(math.log(vocab), dtype=torch.float32))
        assert loss == pytest.approx(per_token, rel=1e-12)
        assert bpb == pytest.approx(per_token / math.log(2) * tokens / nbytes, rel=1e-12)
        assert bpb == pytest.approx(math.log2(vocab) * tokens / nbytes, rel=1e-7)


def test_bpb_meter_sums_loss_tokens_and_bytes():
    meter = tg.BpbMeter(torch.device("cpu"))
    meter.add(torch.tensor([1.0, 2.0]), torch.tensor([3, 1]))
    meter.add(torch.tensor([3.0]), torch.tensor([4]))
    loss, bpb = meter.result()
    assert loss == pytest.approx(2.0) and bpb == pytest.approx(6.0 / math.log(2) / 8)


# ---- tokenizer and run-level checks ----

def test_vocab_mismatch_is_a_clear_error(tiny_data):
    with pytest.raises(tg.ConfigError, match=r"VOCAB_SIZE=1024.*set VOCAB_SIZE=512"):
        tg.load_tokenizer(tiny_data["TOKENIZER_PATH"], 1024)


def test_script_refuses_vocab_mismatch_and_missing_data(tiny_env, tmp_path):
    proc = run_script({**tiny_env, "VOCAB_SIZE": "1024"}, tmp_path, check=False)
    assert proc.returncode != 0 and "set VOCAB_SIZE=512" in proc.stderr
    proc = run_script({**tiny_env, "RUN_ID": "nodata", "DATA_PATH": str(tmp_path / "nowhere")}, tmp_path, check=False)
    assert proc.returncode != 0 and "No val shards" in proc.stderr


def test_val_tokens_limit_is_labelled_beside_every_final_line(tiny_env, tmp_path):
    run_script({**tiny_env, "ITERATIONS": "3", "TTT_ENABLED": "0"}, tmp_path)
    text = (tmp_path / "logs" / "tiny.txt").read_text().split("=" * 100 + "\n", 1)[1].splitlines()
    finals = [i for i, line in enumerate(text) if line.startswith("final_") and not line.startswith("final_score")]
    assert len(finals) == 3  # prequant, roundtrip, sliding
    for i in finals:
        assert text[i + 1].startswith("val_tokens_limit tokens:3000")
    assert log_lines(tmp_path, "tiny", "data val_tokens:3000")
