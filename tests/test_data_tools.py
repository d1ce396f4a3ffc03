"""Tests for data/make_local_dataset.py, data/cached_challenge_fineweb.py and the bad-input contract
shared with data/prep_docs_selected.py (CPU, no network)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "data" / "make_local_dataset.py"
PREP = ROOT / "data" / "prep_docs_selected.py"
DOWNLOADER = ROOT / "data" / "cached_challenge_fineweb.py"
sys.path.insert(0, str(ROOT / "data"))
import cached_challenge_fineweb as downloader  # noqa: E402
import make_local_dataset as builder  # noqa: E402

SYLLABLES = "ka lo mi ne su ta ri po ve da ze gu ha bo ni fe lu sa mo te ra ki".split()
NON_ASCII = ["naïve café 東京 🚀 on route 66", "ﬁne ½ cup at 10:45 in Zürich", "Ωmega 2024 façade"]


# ---- helpers ----

def read_shard(path: Path) -> np.ndarray:
    """Token ids of one shard, after checking the challenge's header and exact file size."""
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240520 and header[1] == 1 and not header[3:].any()
    assert len(raw) == 1024 + 2 * int(header[2])
    return np.frombuffer(raw[1024:], dtype="<u2")


def split_tokens(directory: Path, split: str) -> np.ndarray:
    shards = sorted(directory.glob(f"fineweb_{split}_*.bin"))
    return np.concatenate([read_shard(p) for p in shards])


def decode_docs(tokens: np.ndarray, sp: spm.SentencePieceProcessor) -> list[str]:
    starts = list(np.flatnonzero(tokens == 1)) + [len(tokens)]
    assert starts[0] == 0, "every split must begin with BOS"
    return [sp.decode(tokens[a + 1:b].tolist()) for a, b in zip(starts, starts[1:])]


def run_builder(out: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BUILDER), "--output-root", str(out), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def paths_from_summary(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("DATA_PATH=")
    return dict(item.split("=", 1) for item in last.split())


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    """Distinct single-line documents of made-up words, enough for a 512-piece tokenizer."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(400)]
    return [f"doc {i}: " + " ".join(rng.choices(words, k=40)) for i in range(n)]


def write_mixed_corpus(root: Path) -> tuple[list[str], list[str]]:
    """Every input kind on disk; returns (documents that must be read, --input arguments)."""
    docs = synthetic_docs(60) + NON_ASCII
    root.mkdir(parents=True, exist_ok=True)
    jsonl_docs = docs[:30] + NON_ASCII
    (root / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(jsonl_docs)) + "\n\n",
        encoding="utf-8")
    tree = root / "tree" / "nested"
    tree.mkdir(parents=True)
    for i, d in enumerate(docs[30:45]):
        (tree / f"part{i:02d}.{'md' if i % 2 else 'txt'}").write_text(d, encoding="utf-8")
    (tree / ".hidden.txt").write_text("hidden file must be skipped", encoding="utf-8")
    (tree / "blob.bin").write_bytes(b"not a text suffix")
    (root / "globbed").mkdir()
    for i, d in enumerate(docs[45:59]):
        (root / "globbed" / f"g{i:02d}.txt").write_text(d, encoding="utf-8")
    (root / "globbed" / "ignored.log").write_text("does not match the pattern", encoding="utf-8")
    (root / "single.txt").write_text(docs[59], encoding="utf-8")
    inputs = [str(root / "docs.jsonl"), str(root / "tree"), str(root / "globbed" / "*.txt"),
              str(root / "single.txt")]
    return docs, inputs


@pytest.fixture(scope="module")
def mixed_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("mixed")
    docs, inputs = write_mixed_corpus(tmp / "corpus")
    proc = run_builder(tmp / "out", "--input", *inputs, "--vocab-size", "512", "--val-docs", "12")
    paths = paths_from_summary(proc.stdout)
    sp = spm.SentencePieceProcessor(model_file=paths["TOKENIZER_PATH"])
    data = Path(paths["DATA_PATH"])
    return {"docs": docs, "inputs": inputs, "paths": paths, "out": tmp / "out",
            "train": decode_docs(split_tokens(data, "train"), sp),
            "val": decode_docs(split_tokens(data, "val"), sp)}


# ---- builder: format ----

def test_stdlib_shards_have_exact_header_and_one_bos_per_document(tmp_path: Path) -> None:
    proc = run_builder(tmp_path, "--max-bytes", "2000000", "--vocab-size", "512",
                       "--shard-tokens", "150000")
    paths = paths_from_summary(proc.stdout)
    assert paths["VOCAB_SIZE"] == "512"
    assert paths["DATA_PATH"] == str(tmp_path / "datasets" / "local_sp512")
    assert paths["TOKENIZER_PATH"] == str(tmp_path / "tokenizers" / "local_512_bpe.model")
    data = Path(paths["DATA_PATH"])
    for split in ("train", "val"):
        line = next(l for l in proc.stdout.splitlines() if l.split()[:1] == [split])
        stats = dict(item.split("=") for item in line.split()[1:])
        shards = sorted(data.glob(f"fineweb_{split}_*.bin"))
        assert [p.name for p in shards] == [f"fineweb_{split}_{i:06d}.bin" for i in range(len(shards))]
        assert len(shards) == int(stats["shards"])
        counts = [len(read_shard(p)) for p in shards]
        assert all(c == 150000 for c in counts[:-1]) and 0 < counts[-1] <= 150000
        tokens = split_tokens(data, split)
        assert tokens[0] == 1 and len(tokens) == int(stats["tokens"])
        assert int((tokens == 1).sum()) == int(stats["docs"])
        assert int(tokens.max()) < 512 and not (tokens == 2).any()  # no EOS
    assert len(list(data.glob("fineweb_train_*.bin"))) >= 2
    assert not list(tmp_path.rglob("*.tmp"))
    assert spm.SentencePieceProcessor(model_file=paths["TOKENIZER_PATH"]).vocab_size() == 512


def test_tokenizer_uses_challenge_special_ids(mixed_build: dict) -> None:
    sp = spm.SentencePieceProcessor(model_file=mixed_build["paths"]["TOKENIZER_PATH"])
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.encode("2024") == [sp.piece_to_id(d) for d in "2024"]  # split_digits
    assert sp.id_to_piece(sp.encode("🚀")[0]).startswith("<0x")  # byte_fallback


# ---- builder: inputs, split, round trip ----

def test_every_input_kind_is_read_and_non_ascii_round_trips(mixed_build: dict) -> None:
    # Exactly the documents of every input, each once: nothing from hidden, non-text or
    # unmatched files, and every decoded document equals its NFKC-normalised source.
    expected = sorted(unicodedata.normalize("NFKC", d) for d in mixed_build["docs"])
    assert sorted(mixed_build["train"] + mixed_build["val"]) == expected
    assert "fine ½" not in " ".join(mixed_build["train"] + mixed_build["val"])  # NFKC applied


def test_validation_documents_never_appear_in_train(mixed_build: dict) -> None:
    assert len(mixed_build["val"]) == 12
    assert not set(mixed_build["val"]) & set(mixed_build["train"])


def test_same_inputs_and_options_give_byte_identical_files(mixed_build: dict, tmp_path: Path) -> None:
    run_builder(tmp_path, "--input", *mixed_build["inputs"], "--vocab-size", "512", "--val-docs", "12")
    first = {p.relative_to(mixed_build["out"]): p.read_bytes()
             for p in sorted(mixed_build["out"].rglob("*")) if p.is_file()}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert first.keys() == second.keys() and len(first) == 4
    assert all(first[k] == second[k] for k in first)


def test_rerun_with_fewer_shards_removes_stale_ones(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in synthetic_docs(80)), encoding="utf-8")
    out = tmp_path / "out"
    run_builder(out, "--input", str(corpus), "--vocab-size", "300", "--shard-tokens", "500")
    data = out / "datasets" / "local_sp300"
    assert len(list(data.glob("fineweb_train_*.bin"))) > 3
    run_builder(out, "--input", str(corpus), "--vocab-size", "300")
    assert sorted(p.name for p in data.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


def test_max_bytes_stops_reading_in_input_order(tmp_path: Path) -> None:
    files = []
    for i, doc in enumerate(synthetic_docs(5)):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(doc, encoding="utf-8")
    size = len(synthetic_docs(5)[0].encode())
    docs, total = builder.load_documents(files, max_bytes=size + 1)
    assert docs == synthetic_docs(5)[:2] and total == sum(len(d.encode()) for d in docs)


def test_split_is_seeded_and_default_val_is_a_capped_tenth() -> None:
    docs = [f"d{i}" for i in range(5000)]
    train, val = builder.split_documents(docs, None, seed=1)
    assert len(val) == 200 and sorted(train + val) == sorted(docs)
    assert builder.split_documents(docs, None, seed=1) == (train, val)
    assert builder.split_documents(docs, None, seed=2) != (train, val)
    assert len(builder.split_documents(docs[:50], None, seed=1)[1]) == 5


# ---- builder: errors ----

@pytest.mark.parametrize("setup, args, message", [
    ("empty_dir", ["--input", "{tmp}/empty"], "no input files found"),
    ("blank_docs", ["--input", "{tmp}/blank.txt", "{tmp}/blank.jsonl"], "every input document is empty"),
    ("docs", ["--input", "{tmp}/docs.jsonl", "--vocab-size", "256"], "too small"),
    ("docs", ["--input", "{tmp}/docs.jsonl", "--vocab-size", "70000"], "too large"),
    ("docs", ["--input", "{tmp}/docs.jsonl", "--val-docs", "5"], "leaves no training documents"),
    ("docs", ["--input", "{tmp}/docs.jsonl", "--vocab-size", "4096"], "lower --vocab-size"),
    ("docs", ["--input", "{tmp}/missing.txt"], "does not exist"),
    ("bad_jsonl", ["--input", "{tmp}/bad.jsonl"], "bad.jsonl:2 is not a JSON object"),
])
def test_bad_input_or_options_exit_with_a_sentence(tmp_path: Path, setup: str, args: list[str],
                                                   message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n\n", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": " "}\n', encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": d}) for d in synthetic_docs(5)), encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--output-root", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=message):
        builder.main(argv)
    assert not (tmp_path / "out" / "datasets").exists() or not list((tmp_path / "out").rglob("*.bin"))


def test_cli_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BUILDER), "--input", str(tmp_path / "nothing*.txt"),
                           "--output-root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: no input files found") and proc.stderr.count("\n") == 1


# ---- downloader (no network) ----

FAKE_MANIFEST = {
    "version": "10B",
    "datasets": [
        {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
         "stats": {"files_train": 3, "files_val": 2, "tokens_train": 300_000_000}},
        {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260",
         "stats": {"files_train": 5, "files_val": 1}},
    ],
    "tokenizers": [
        {"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
         "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
        {"name": "pure_byte_260", "path": "tokenizers/fineweb_pure_byte_260.json"},
    ],
}


@pytest.fixture
def manifest(tmp_path: Path) -> dict:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(FAKE_MANIFEST), encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


def test_plan_lists_val_then_first_train_shards_then_tokenizer(manifest: dict, tmp_path: Path) -> None:
    out = tmp_path / "data"
    plan = downloader.plan_downloads(manifest, "sp1024", 2, out, "datasets", "someone/repo")
    ds = "datasets/fineweb10B_sp1024"
    assert plan == [
        (f"datasets/{ds}/fineweb_val_000000.bin", out / ds / "fineweb_val_000000.bin"),
        (f"datasets/{ds}/fineweb_val_000001.bin", out / ds / "fineweb_val_000001.bin"),
        (f"datasets/{ds}/fineweb_train_000000.bin", out / ds / "fineweb_train_000000.bin"),
        (f"datasets/{ds}/fineweb_train_000001.bin", out / ds / "fineweb_train_000001.bin"),
        ("datasets/tokenizers/fineweb_1024_bpe.model", out / "tokenizers" / "fineweb_1024_bpe.model"),
        ("datasets/tokenizers/fineweb_1024_bpe.vocab", out / "tokenizers" / "fineweb_1024_bpe.vocab"),
    ]
    no_root = downloader.plan_downloads(manifest, "sp1024", 0, out, "", "someone/repo")
    assert [r for r, _ in no_root][0] == f"{ds}/fineweb_val_000000.bin" and len(no_root) == 4


def test_variant_missing_from_manifest_points_to_other_repo(manifest: dict, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="fineweb10B_sp8192 is not in the manifest.*kevclark/parameter-golf"):
        downloader.plan_downloads(manifest, "sp8192", 1, tmp_path)


def test_too_many_train_shards_names_the_available_count(manifest: dict, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="has 3 train shards; ask for at most 3"):
        downloader.plan_downloads(manifest, "sp1024", 4, tmp_path)


def test_manifest_path_escaping_output_root_is_refused(manifest: dict, tmp_path: Path) -> None:
    manifest["tokenizers"][0]["model_path"] = "../../etc/fineweb_1024_bpe.model"
    with pytest.raises(SystemExit, match="not a plain relative path"):
        downloader.plan_downloads(manifest, "sp1024", 1, tmp_path)


def test_present_files_with_the_right_size_are_skipped(tmp_path: Path) -> None:
    shard = tmp_path / "fineweb_val_000000.bin"
    shard.write_bytes(builder.shard_bytes(np.arange(10, dtype=np.uint16)))
    assert downloader.is_complete(shard, 1044) and downloader.is_complete(shard, None)
    assert not downloader.is_complete(shard, 2048)  # remote says otherwise: fetch again
    truncated = tmp_path / "fineweb_train_000000.bin"
    truncated.write_bytes(shard.read_bytes()[:-2])
    assert not downloader.is_complete(truncated, None)
    assert not downloader.is_complete(tmp_path / "absent.model", None)
    (tmp_path / "tok.model").write_bytes(b"x" * 7)
    assert downloader.is_complete(tmp_path / "tok.model", 7) and not downloader.is_complete(tmp_path / "tok.model", 8)


def test_missing_huggingface_hub_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(SystemExit, match="pip install huggingface-hub"):
        downloader.download("sp1024", 1, tmp_path)


def test_download_fetches_the_plan_once_then_skips_present_files(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shard = builder.shard_bytes(np.ones(4, dtype=np.uint16))
    remote = {"datasets/manifest.json": json.dumps(FAKE_MANIFEST).encode(),
              "datasets/tokenizers/fineweb_1024_bpe.model": b"model",
              "datasets/tokenizers/fineweb_1024_bpe.vocab": b"vocab"}
    for split, count in (("val", 2), ("train", 3)):
        for i in range(count):
            remote[f"datasets/datasets/fineweb10B_sp1024/fineweb_{split}_{i:06d}.bin"] = shard
    fetched = install_fake_hub(monkeypatch, remote, "someone/mirror")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/mirror")
    out = tmp_path / "data"
    downloader.download("sp1024", 2, out)
    assert len(fetched) == 1 + 2 + 2 + 2 and not (out / ".download_staging").exists()
    assert (out / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin").read_bytes() == shard
    assert not (out / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin").exists()
    assert (out / "tokenizers/fineweb_1024_bpe.vocab").read_bytes() == b"vocab"
    fetched.clear()
    downloader.download("sp1024", 3, out)
    assert fetched == ["datasets/manifest.json", "datasets/datasets/fineweb10B_sp1024/fineweb_train_000002.bin"]


# ---- downloader: CaseOps variant (no network) ----

CASEOPS_REMOTE = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_TOKENIZER = "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved"
FAKE_CASEOPS_MANIFEST = {
    "datasets": [{"name": CASEOPS_REMOTE, "tokenizer_name": "sp8192_caseops",
                  "val_bytes_glob": f"datasets/{CASEOPS_REMOTE}/fineweb_val_bytes_*.bin",
                  "stats": {"files_train": 3, "files_val": 1}}],
    "tokenizers": [{"name": "sp8192_caseops", "model_path": f"{CASEOPS_TOKENIZER}.model",
                    "vocab_path": f"{CASEOPS_TOKENIZER}.vocab"}],
}


def caseops_hub(sidecar_tokens: int = 6) -> dict[str, bytes]:
    """The CaseOps export's files as the Hub holds them, with a sidecar of `sidecar_tokens` counts."""
    val = np.array([1, 9, 8, 1, 7, 6], dtype=np.uint16)
    remote = {"datasets/manifest.json": json.dumps(FAKE_CASEOPS_MANIFEST).encode(),
              f"datasets/{CASEOPS_TOKENIZER}.model": b"model", f"datasets/{CASEOPS_TOKENIZER}.vocab": b"vocab",
              f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_val_000000.bin": builder.shard_bytes(val),
              f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_val_bytes_000000.bin":
                  builder.shard_bytes(np.array([0, 3, 1, 0, 2, 2][:sidecar_tokens], dtype=np.uint16))}
    for i in range(3):
        remote[f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_train_{i:06d}.bin"] = builder.shard_bytes(val)
    return remote


def install_fake_hub(monkeypatch: pytest.MonkeyPatch, remote: dict[str, bytes], repo: str) -> list[str]:
    """A huggingface_hub stand-in serving `remote` for dataset `repo`; returns the fetched names."""
    fetched: list[str] = []

    def hf_hub_download(repo_id: str, filename: str, repo_type: str, local_dir: Path) -> str:
        assert (repo_id, repo_type) == (repo, "dataset")
        fetched.append(filename)
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(remote[filename])
        return str(path)

    class HfApi:
        def get_paths_info(self, repo_id: str, paths: list[str], repo_type: str) -> list:
            return [SimpleNamespace(path=p, size=len(remote[p])) for p in paths]

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        SimpleNamespace(hf_hub_download=hf_hub_download, HfApi=HfApi))
    return fetched


def test_caseops_plan_adds_a_sidecar_per_val_shard_under_short_local_names(tmp_path: Path) -> None:
    plan = downloader.plan_downloads(FAKE_CASEOPS_MANIFEST, "sp8192_caseops", 1, tmp_path)
    local = tmp_path / "datasets" / "fineweb10B_sp8192_caseops"
    assert plan == [
        (f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_val_000000.bin", local / "fineweb_val_000000.bin"),
        (f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_val_bytes_000000.bin", local / "fineweb_val_bytes_000000.bin"),
        (f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_train_000000.bin", local / "fineweb_train_000000.bin"),
        (f"datasets/{CASEOPS_TOKENIZER}.model", tmp_path / "tokenizers" / "fineweb_8192_caseops.model"),
        (f"datasets/{CASEOPS_TOKENIZER}.vocab", tmp_path / "tokenizers" / "fineweb_8192_caseops.vocab"),
    ]


def test_caseops_download_uses_the_records_repo_and_prints_the_local_paths(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    remote = caseops_hub()
    fetched = install_fake_hub(monkeypatch, remote, "romeerp/parameter-golf-caseops-v1")
    downloader.download("sp8192_caseops", 3, tmp_path)
    local = tmp_path / "datasets" / "fineweb10B_sp8192_caseops"
    assert sorted(p.name for p in local.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin",
        "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    assert (local / "fineweb_val_bytes_000000.bin").read_bytes() == \
        remote[f"datasets/datasets/{CASEOPS_REMOTE}/fineweb_val_bytes_000000.bin"]
    assert (tmp_path / "tokenizers" / "fineweb_8192_caseops.model").read_bytes() == b"model"
    assert len(fetched) == 1 + 2 + 3 + 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"DATA_PATH={local} TOKENIZER_PATH={tmp_path / 'tokenizers' / 'fineweb_8192_caseops.model'} "
                    "VOCAB_SIZE=8192")


def test_caseops_download_refuses_a_sidecar_that_does_not_fit_its_shard(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/caseops-mirror")
    install_fake_hub(monkeypatch, caseops_hub(sidecar_tokens=5), "someone/caseops-mirror")
    with pytest.raises(SystemExit, match="holds 5 byte counts but .*fineweb_val_000000.bin holds 6 tokens"):
        downloader.download("sp8192_caseops", 1, tmp_path)


def test_caseops_variant_missing_from_manifest_points_to_the_records_repo(manifest: dict, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"{CASEOPS_REMOTE} is not in the manifest.*romeerp/parameter-golf-caseops-v1"):
        downloader.plan_downloads(manifest, "sp8192_caseops", 1, tmp_path)


# ---- every data tool: a bad input is one `error:` line, its cause's exit status, files untouched ----

USAGE, INPUT, OUTPUT, DOWNLOAD, INTERRUPTED = 2, 3, 4, 5, 130


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (so added and removed files show too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def previous_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output root holding an earlier good run, plain and CaseOps, that a failed run must not touch."""
    tmp = tmp_path_factory.mktemp("previous")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in synthetic_docs(80)), encoding="utf-8")
    for extra in ([], ["--caseops"]):
        run_builder(tmp / "out", "--input", str(corpus), "--vocab-size", "300", *extra)
    assert sorted(p.name for p in (tmp / "out" / "datasets").iterdir()) == ["local_sp300", "local_sp300_caseops"]
    return tmp / "out"


def write_bad_inputs(folder: Path) -> None:
    """One file per kind of bad input, beside a good corpus."""
    folder.mkdir()
    lines = [json.dumps({"text": d}) for d in synthetic_docs(80)]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "five.jsonl").write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    (folder / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (folder / "latin1.txt").write_bytes(b"caf\xc3\xa9 au lait\nna\xefve\n")
    (folder / "broken.jsonl").write_text('{"text": "a"}\n\n{"text": "b"\n', encoding="utf-8")
    (folder / "list.jsonl").write_text('{"text": "a"}\n["text"]\n', encoding="utf-8")
    (folder / "number.jsonl").write_text('{"text": 5}\n', encoding="utf-8")
    (folder / "surrogate.jsonl").write_text('{"text": "ok"}\n{"text": "half \\udc80 pair"}\n', encoding="utf-8")
    (folder / "deep.jsonl").write_text("[" * 100_000 + "\n", encoding="utf-8")
    (folder / "bigint.jsonl").write_text('{"text": ' + "9" * 5000 + "}\n", encoding="utf-8")
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (folder / "no_text_here").mkdir()
    (folder / "no_text_here" / "image.bin").write_bytes(b"\x89PNG")
    (folder / "garbage.model").write_bytes(b"not a sentencepiece model")
    (folder / "afile").write_text("a file, not a folder\n", encoding="utf-8")
    # A CaseOps validation document that normalises to no token fails after the training
    # shards are written: the run must still leave nothing of its own behind.
    zero_width = [json.dumps({"text": "\u200b"}) for _ in range(40)]
    (folder / "zero_width.jsonl").write_text("\n".join(lines + zero_width) + "\n", encoding="utf-8")


def write_blocked_roots(tmp: Path) -> None:
    """Output roots whose dataset folder or tokenizer file name is taken by the wrong kind of entry."""
    (tmp / "file_at_dataset" / "datasets").mkdir(parents=True)
    (tmp / "file_at_dataset" / "datasets" / "local_sp300").write_text("in the way\n", encoding="utf-8")
    (tmp / "folder_at_tokenizer" / "tokenizers" / "local_300_bpe.model").mkdir(parents=True)
    (tmp / "file_at_datasets").mkdir()
    (tmp / "file_at_datasets" / "datasets").write_text("in the way\n", encoding="utf-8")


GOOD = ["--input", "{in}/docs.jsonl", "--vocab-size", "300"]


def with_good(*inputs: str) -> list[str]:
    """The good corpus plus `inputs`: one bad file among good ones is still refused."""
    return ["--input", "{in}/docs.jsonl", *inputs, "--vocab-size", "300"]

DOCS = ["--docs", "{in}/docs.jsonl", "--vocab-size", "300", "--val-docs", "10"]

# (tool, argv; --output-root {out} is added unless given), a fragment of the one stderr line, exit status.
BAD_INPUTS = [
    # make_local_dataset.py: options
    ("builder", [*GOOD[:2], "--vocab-size", "0"], "--vocab-size 0 is too small", USAGE),
    ("builder", [*GOOD[:2], "--vocab-size", "-5"], "--vocab-size -5 is too small", USAGE),
    ("builder", [*GOOD[:2], "--vocab-size", "70000"], "--vocab-size 70000 is too large", USAGE),
    ("builder", [*GOOD[:2], "--vocab-size", "abc"], "argument --vocab-size: invalid int value: 'abc'", USAGE),
    ("builder", [*GOOD, "--val-docs", "0"], "--val-docs 0 must be at least 1", USAGE),
    ("builder", [*GOOD, "--val-docs", "-3"], "--val-docs -3 must be at least 1", USAGE),
    ("builder", [*GOOD, "--max-bytes", "0"], "--max-bytes 0 must be positive", USAGE),
    ("builder", [*GOOD, "--max-bytes", "-1"], "--max-bytes -1 must be positive", USAGE),
    ("builder", [*GOOD, "--shard-tokens", "0"], "--shard-tokens 0 is out of range", USAGE),
    ("builder", [*GOOD, "--shard-tokens", "-1"], "--shard-tokens -1 is out of range", USAGE),
    ("builder", [*GOOD, "--shard-tokens", str(2**31)], "--shard-tokens 2147483648 is out of range", USAGE),
    ("builder", [*GOOD, "--colour"], "unrecognized arguments: --colour", USAGE),
    ("builder", [*GOOD, "--name", "../../escaped"], "--name '../../escaped' is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", "sub/dir"], "--name 'sub/dir' is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", ".."], "--name '..' is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", "a..b"], "--name 'a..b' is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", "{out}/abs"], "is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", ""], "--name '' is not a plain name", USAGE),
    ("builder", [*GOOD, "--name", "n" * 201], "at most 200 bytes", USAGE),
    ("builder", [*GOOD, "--output-root", ""], "--output-root is empty", USAGE),
    ("builder", ["--input", "", "--vocab-size", "300"], "--input got an empty value", USAGE),
    # make_local_dataset.py: input files and their content
    ("builder", ["--input", "{in}/missing.txt"], "--input {in}/missing.txt does not exist", INPUT),
    ("builder", ["--input", "/dev/null"], "--input /dev/null is neither a regular file nor a folder", INPUT),
    ("builder", with_good("{in}/nothing*.jsonl"), "--input {in}/nothing*.jsonl: it matches no file", INPUT),
    ("builder", ["--input", "{in}/no_text_here"], "--input {in}/no_text_here: it holds no text-like file", INPUT),
    ("builder", with_good("{in}/latin1.jsonl"), "latin1.jsonl:2 is not UTF-8 (byte 0xe9 at column 14)", INPUT),
    ("builder", with_good("{in}/latin1.txt"), "latin1.txt is not UTF-8 text (byte 0xef on line 2)", INPUT),
    ("builder", with_good("{in}/broken.jsonl"), "broken.jsonl:3 is not a JSON object with a 'text' field "
                                              "(invalid JSON: Expecting ',' delimiter", INPUT),
    ("builder", with_good("{in}/list.jsonl"), "list.jsonl:2 is not a JSON object with a 'text' field", INPUT),
    ("builder", with_good("{in}/number.jsonl"), "number.jsonl:1 has a 'text' field that is not a string", INPUT),
    ("builder", with_good("{in}/surrogate.jsonl"), "surrogate.jsonl:2 has a 'text' with an unpaired surrogate "
                                                 "\\udc80", INPUT),
    ("builder", with_good("{in}/deep.jsonl"), "deep.jsonl:1 is not a JSON object", INPUT),
    ("builder", with_good("{in}/bigint.jsonl"), "bigint.jsonl:1 is not a JSON object", INPUT),
    ("builder", ["--input", "{in}/empty.jsonl", "{in}/blank.txt"], "every input document is empty", INPUT),
    ("builder", ["--input", "{in}/five.jsonl", "--vocab-size", "300", "--val-docs", "5"],
     "--val-docs 5 leaves no training documents out of 5", INPUT),
    ("builder", ["--input", "{in}/five.jsonl", "--vocab-size", "8000"], "lower --vocab-size or add input", INPUT),
    ("builder", ["--input", "{in}/zero_width.jsonl", "--caseops", "--vocab-size", "300", "--val-docs", "40"],
     "has no tokens after normalisation", INPUT),
    # make_local_dataset.py: the output location
    ("builder", [*GOOD, "--output-root", "{in}/afile"], "--output-root {in}/afile is a file, not a folder", OUTPUT),
    ("builder", [*GOOD, "--output-root", "{in}/afile/below"], "{in}/afile is a file, not a folder", OUTPUT),
    ("builder", [*GOOD, "--output-root", "/proc/parameter_golf"], "--output-root /proc/parameter_golf is not "
                                                                  "writable", OUTPUT),
    ("builder", [*GOOD, "--output-root", "{tmp}/file_at_datasets"], "datasets is a file, not a folder", OUTPUT),
    ("builder", [*GOOD, "--output-root", "{tmp}/file_at_dataset"], "local_sp300 is a file where the dataset "
                                                                   "folder goes", OUTPUT),
    ("builder", [*GOOD, "--output-root", "{tmp}/folder_at_tokenizer"], "local_300_bpe.model is a folder where "
                                                                       "the tokenizer file goes", OUTPUT),
    # prep_docs_selected.py
    ("prep", ["--vocab-size", "300"], "the following arguments are required: --docs", USAGE),
    ("prep", [*DOCS, "--val-docs", "-1"], "--val-docs must be between 1 and 50,000", USAGE),
    ("prep", [*DOCS, "--vocab-size", "0"], "--vocab-size must be between 261 and 65536", USAGE),
    ("prep", [*DOCS, "--shard-tokens", "0"], "--shard-tokens 0 is out of range", USAGE),
    ("prep", [*DOCS, "--train-shards", "-2"], "--train-shards must be at least 1, not -2", USAGE),
    ("prep", [*DOCS, "--val-docs", "ten"], "argument --val-docs: invalid int value: 'ten'", USAGE),
    ("prep", [*DOCS, "--name", "../../escaped"], "--name '../../escaped' is not a plain name", USAGE),
    ("prep", [*DOCS, "--output-root", ""], "--output-root is empty", USAGE),
    ("prep", ["--docs", "{in}/missing.jsonl"], "--docs {in}/missing.jsonl does not exist", INPUT),
    ("prep", ["--docs", "{in}/no_text_here"], "--docs {in}/no_text_here is not a regular file", INPUT),
    ("prep", ["--docs", "{in}/latin1.jsonl"], "latin1.jsonl:2 is not UTF-8 (byte 0xe9 at column 14)", INPUT),
    ("prep", ["--docs", "{in}/broken.jsonl"], "broken.jsonl:3 is not a JSON object with a 'text' field", INPUT),
    ("prep", ["--docs", "{in}/surrogate.jsonl"], "surrogate.jsonl:2 has a 'text' with an unpaired surrogate", INPUT),
    ("prep", ["--docs", "{in}/empty.jsonl"], "the file has only 0 documents", INPUT),
    ("prep", DOCS, "the file has only 80 documents, but the first 50,000 are validation", INPUT),
    ("prep", [*DOCS, "--tokenizer", "{in}/garbage.model"], "--tokenizer {in}/garbage.model is not a readable "
                                                           "SentencePiece model", INPUT),
    ("prep", [*DOCS, "--tokenizer", "{in}/missing.model"], "--tokenizer {in}/missing.model is not a readable", INPUT),
    ("prep", [*DOCS, "--output-root", "{in}/afile"], "--output-root {in}/afile is a file, not a folder", OUTPUT),
    ("prep", [*DOCS, "--output-root", "/proc/parameter_golf"], "is not writable", OUTPUT),
    # cached_challenge_fineweb.py: refused before any network access
    ("downloader", ["--variant", "sp2048"], "argument --variant: invalid choice: 'sp2048'", USAGE),
    ("downloader", ["--train-shards", "-1"], "--train-shards -1 is negative", USAGE),
    ("downloader", ["--train-shards", "many"], "argument --train-shards: invalid int value: 'many'", USAGE),
    ("downloader", ["--output-root", ""], "--output-root is empty", USAGE),
    ("downloader", ["--output-root", "{in}/afile"], "--output-root {in}/afile is a file, not a folder", OUTPUT),
    ("downloader", ["--output-root", "/proc/parameter_golf"], "is not writable", OUTPUT),
]
TOOLS = {"builder": BUILDER, "prep": PREP, "downloader": DOWNLOADER}


def row_id(row: tuple) -> str:
    """The tool, the status and what the row adds to the good command line, e.g. builder-3-latin1.jsonl."""
    tool, argv, _, status = row
    added = list(argv)
    for prefix in (DOCS, GOOD, GOOD[:2]):
        if added[:len(prefix)] == prefix and len(added) > len(prefix):
            added = added[len(prefix):]
            break
    if added[-2:] == GOOD[2:] and len(added) > 2:  # with_good(...)
        added = added[:-2]
    return f"{tool}-{status}-" + "_".join((a or "EMPTY").replace("{in}/", "").replace("/", "|")[:24] for a in added)


@pytest.mark.parametrize("tool, argv, fragment, status", BAD_INPUTS, ids=[row_id(r) for r in BAD_INPUTS])
def test_bad_input_ends_in_one_error_line_with_its_status_and_changes_no_file(
        previous_build: Path, tmp_path: Path, tool: str, argv: list[str], fragment: str, status: int) -> None:
    if "/proc/" in " ".join(argv) and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc as a folder that refuses new files, even to root")
    write_bad_inputs(tmp_path / "in")
    write_blocked_roots(tmp_path)
    shutil.copytree(previous_build, tmp_path / "out")
    fill = {"in": tmp_path / "in", "out": tmp_path / "out", "tmp": tmp_path}
    command = [a.format(**fill) for a in argv]
    if "--output-root" not in command:
        command += ["--output-root", str(tmp_path / "out")]
    before = tree_hashes(tmp_path)
    proc = subprocess.run([sys.executable, str(TOOLS[tool]), *command], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (proc.returncode, proc.stderr.count("\n")) == (status, 1), proc.stderr
    assert proc.stderr.startswith("error: ") and fragment.format(**fill) in proc.stderr
    assert tree_hashes(tmp_path) == before  # the earlier run's outputs, the inputs: nothing changed or added
    assert not list((tmp_path / "out").rglob("*.partial")) and not list((tmp_path / "out").rglob("*.old"))


@pytest.mark.parametrize("tool, input_status", [
    ("builder", "3 an input missing, unreadable, not UTF-8, malformed, or too small for the options"),
    ("prep", "3 the --docs or --tokenizer file missing, unreadable, not UTF-8, malformed or too short"),
    ("downloader", "3 the manifest or a downloaded file is malformed"),
])
def test_every_tool_documents_its_exit_statuses_in_help(tool: str, input_status: str) -> None:
    proc = subprocess.run([sys.executable, str(TOOLS[tool]), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    epilog = " ".join(proc.stdout.split("exit status:", 1)[1].split())
    for status in ("0 done", "2 a bad option or option value", input_status,
                   "4 the --output-root is a file or not writable, or a write failed", "130 interrupted",
                   'Every refusal is one line on stderr starting "error:"'):
        assert status in epilog
    assert ("5 the download failed" in epilog) == (tool == "downloader")


def test_jsonl_lines_end_at_newline_only_so_raw_line_separators_stay_in_the_text(tmp_path: Path) -> None:
    path = tmp_path / "separators.jsonl"
    texts = ["one\u2028two", "three\x85four", "five\u2029six"]
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\r\n" for t in texts), encoding="utf-8")
    assert builder.read_documents(path) == texts


def test_a_non_utf8_text_file_is_skipped_in_a_folder_but_refused_when_named(tmp_path: Path) -> None:
    good, legacy = tmp_path / "good.txt", tmp_path / "legacy.txt"
    good.write_text("plain text\n", encoding="utf-8")
    legacy.write_bytes(b"first line\nna\xefve\n")
    files, named = builder.collect_input_files([str(tmp_path)])
    assert files == [good.resolve(), legacy.resolve()] and named == set()
    assert builder.load_documents(files, None, named) == (["plain text\n"], 11)
    files, named = builder.collect_input_files([str(good), str(legacy)])
    assert named == {good.resolve(), legacy.resolve()}
    with pytest.raises(SystemExit, match=r"legacy.txt is not UTF-8 text \(byte 0xef on line 2\)") as exc:
        builder.load_documents(files, None, named)
    assert exc.value.code == INPUT


@pytest.mark.parametrize("failure, status, fragment", [
    (OSError(errno.ENOSPC, "No space left on device"), OUTPUT, "(No space left on device); free some space"),
    (KeyboardInterrupt(), INTERRUPTED, "interrupted; this run's partial files were removed"),
])
def test_a_run_that_dies_mid_write_keeps_the_previous_outputs_and_leaves_no_partial_file(
        previous_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        failure: BaseException, status: int, fragment: str) -> None:
    write_bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    shutil.copytree(previous_build, out)
    before = tree_hashes(out)
    writes = []
    real_write = builder.write_atomic

    def write_then_fail(path: Path, data: bytes) -> None:  # the second shard write fails
        writes.append(path.name)
        if len(writes) == 2:
            raise failure
        real_write(path, data)

    monkeypatch.setattr(builder, "write_atomic", write_then_fail)
    with pytest.raises(SystemExit) as exc:
        builder.main(["--input", str(tmp_path / "in" / "docs.jsonl"), "--vocab-size", "300",
                      "--shard-tokens", "300", "--output-root", str(out)])
    assert exc.value.code == status and len(writes) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err
    assert tree_hashes(out) == before
    assert sorted(p.name for p in (out / "datasets").iterdir()) == ["local_sp300", "local_sp300_caseops"]


def test_a_failed_rerun_over_a_symlinked_dataset_folder_keeps_the_link_and_its_files(
        previous_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(previous_build, out)
    elsewhere = tmp_path / "big_disk" / "local_sp300"
    elsewhere.parent.mkdir()
    shutil.move(out / "datasets" / "local_sp300", elsewhere)
    (out / "datasets" / "local_sp300").symlink_to(elsewhere, target_is_directory=True)
    write_bad_inputs(tmp_path / "in")
    corpus = str(tmp_path / "in" / "docs.jsonl")
    proc = run_builder(out, "--input", corpus, "--vocab-size", "300", "--shard-tokens", "700")
    assert (out / "datasets" / "local_sp300").is_symlink()  # a good run publishes through the link
    assert len(list(elsewhere.glob("fineweb_train_*.bin"))) > 1
    assert paths_from_summary(proc.stdout)["DATA_PATH"] == str(out / "datasets" / "local_sp300")
    assert not list(elsewhere.parent.glob("*.partial")) and not list(elsewhere.parent.glob("*.old"))


# ---- downloader: failures after the command line (fake hub, no network) ----

def downloader_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        downloader.main(argv)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return exc.value.code, err


@pytest.mark.parametrize("remote_change, argv, fragment, status", [
    ({"datasets/manifest.json": b"<html>rate limited</html>"}, [], "is not JSON", INPUT),
    ({"datasets/manifest.json": b"[1, 2]"}, [], "is not in the export's format", INPUT),
    ({"datasets/manifest.json": b"\xff\xfe"}, [], "is not JSON", INPUT),
    ({}, ["--train-shards", "9"], "has 3 train shards; ask for at most 3", USAGE),
    ({}, ["--variant", "sp8192"], "fineweb10B_sp8192 is not in the manifest", USAGE),
    ({"datasets/datasets/fineweb10B_sp1024/fineweb_val_000001.bin": None}, [],
     "could not fetch datasets/datasets/fineweb10B_sp1024/fineweb_val_000001.bin", DOWNLOAD),
])
def test_downloader_failures_after_the_command_line_have_their_own_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path,
        remote_change: dict, argv: list[str], fragment: str, status: int) -> None:
    remote = {"datasets/manifest.json": json.dumps(FAKE_MANIFEST).encode(),
              "datasets/tokenizers/fineweb_1024_bpe.model": b"model",
              "datasets/tokenizers/fineweb_1024_bpe.vocab": b"vocab"}
    for split, count in (("val", 2), ("train", 3)):
        for i in range(count):
            remote[f"datasets/datasets/fineweb10B_sp1024/fineweb_{split}_{i:06d}.bin"] = \
                builder.shard_bytes(np.ones(4, dtype=np.uint16))
    remote.update(remote_change)
    remote = {k: v for k, v in remote.items() if v is not None}  # a missing file: the fake hub raises KeyError
    install_fake_hub(monkeypatch, remote, "someone/mirror")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/mirror")
    code, err = downloader_fails(monkeypatch, capsys, ["--output-root", str(tmp_path / "data"), "--train-shards",
                                                       "1", *argv])
    assert code == status and fragment in err


def test_downloader_without_huggingface_hub_exits_with_the_download_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    code, err = downloader_fails(monkeypatch, capsys, ["--output-root", str(tmp_path)])
    assert code == DOWNLOAD and "pip install huggingface-hub" in err


def test_downloader_refuses_a_folder_where_a_shard_goes_and_keeps_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    blocked = tmp_path / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin"
    (blocked / "keep.txt").parent.mkdir(parents=True)
    (blocked / "keep.txt").write_text("mine\n", encoding="utf-8")
    remote = {"datasets/manifest.json": json.dumps(FAKE_MANIFEST).encode(),
              "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin": builder.shard_bytes(np.ones(4, np.uint16))}
    install_fake_hub(monkeypatch, remote, "someone/mirror")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/mirror")
    code, err = downloader_fails(monkeypatch, capsys, ["--output-root", str(tmp_path), "--train-shards", "0"])
    assert code == OUTPUT and "fineweb_val_000000.bin" in err and "free some space or choose another" in err
    assert (blocked / "keep.txt").read_text(encoding="utf-8") == "mine\n"
