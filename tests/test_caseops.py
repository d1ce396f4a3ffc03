"""Tests for data/caseops.py, make_local_dataset.py --caseops and prep_docs_selected.py (CPU, no network)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
import caseops  # noqa: E402
import make_local_dataset as builder  # noqa: E402
import prep_docs_selected as prep  # noqa: E402

TITLE, ALLCAPS, CAPNEXT, ESC = caseops.OPERATORS
SYLLABLES = "ka lo mi ne su ta ri po ve da ze gu ha bo ni fe lu sa mo te ra ki".split()
# Text the tokenizer's normalisation (NFKC, whitespace folding) rewrites: only the sidecar can
# still count these documents' original bytes.
MESSY = ["two  spaces", "line\n\nbreaks", "\ttab", " leading", "wide\u3000space", "ﬁne ½ Ａ", "e\u0301cole"]
EXTRAS = ["naïve", "Straße", "Élan", "ÆSIR", "東京", "🚀", "abc123Def", "2024", "NASA", "iPhone",
          "OpenAI", "A", "I'm", f"x{TITLE}y", f"{ESC}{ESC}", f"{CAPNEXT}Z"]


# ---- helpers ----

def read_shard(path: Path) -> np.ndarray:
    return caseops.read_shard(path).astype(np.int64)


def val_shards(directory: Path) -> list[Path]:
    """Token shards only: fineweb_val_*.bin also matches the byte sidecars."""
    return sorted(directory.glob("fineweb_val_[0-9]*.bin"))


def documents(tokens: np.ndarray, values: np.ndarray | None = None) -> list[np.ndarray]:
    """Per document (BOS excluded), `values` (default: the tokens) cut at each BOS."""
    values = tokens if values is None else values
    starts = list(np.flatnonzero(tokens == builder.BOS_ID)) + [len(tokens)]
    assert starts[0] == 0
    return [values[a + 1:b] for a, b in zip(starts, starts[1:])]


def cased(word: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.6:
        return word
    if style < 0.8:
        return word.title()
    if style < 0.9:
        return word.upper()
    return "".join(c.upper() if rng.random() < 0.3 else c for c in word)


def corpus_docs(n: int, seed: int = 0) -> list[str]:
    """Single-line mixed-case prose; every 5th document also holds text the normaliser rewrites."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(300)]
    docs = []
    for i in range(n):
        body = [cased(w, rng) for w in rng.choices(words, k=150)] + rng.choices(EXTRAS, k=8)
        rng.shuffle(body)
        if i % 5 == 4:
            body.insert(rng.randint(0, len(body)), rng.choice(MESSY))
        docs.append(f"Doc {i}, " + " ".join(body) + ".")
    return docs


def is_messy(doc: str) -> bool:
    return any(m in doc for m in MESSY)


def random_string(rng: random.Random) -> str:
    pools = ["aZbYcX", "QWERTYqwerty", "0123456789", " .,;:!?'-\n\t", "".join(caseops.OPERATORS),
             "éÉßÆæøΩ東京", "🚀😀", "\ue000\ue005\uffff"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 30)))


@pytest.fixture(scope="module")
def caseops_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A CaseOps dataset built by make_local_dataset.py from ~300 KB of mixed-case text."""
    tmp = tmp_path_factory.mktemp("caseops")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in corpus_docs(320)), encoding="utf-8")
    args = ["--input", str(corpus), "--caseops", "--vocab-size", "512", "--max-bytes", "300000",
            "--val-docs", "40"]
    proc = subprocess.run([sys.executable, str(ROOT / "data" / "make_local_dataset.py"),
                           "--output-root", str(tmp / "out"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    docs, _ = builder.load_documents([corpus], 300_000)
    _, val_docs = builder.split_documents(docs, 40, seed=1337)
    data = Path(paths["DATA_PATH"])
    return {"tmp": tmp, "args": args, "paths": paths, "data": data, "val_docs": val_docs,
            "sp": spm.SentencePieceProcessor(model_file=paths["TOKENIZER_PATH"]),
            "tokens": read_shard(data / "fineweb_val_000000.bin"),
            "bytes": read_shard(data / "fineweb_val_bytes_000000.bin")}


# ---- the transform ----

@pytest.mark.parametrize("text, encoded", [
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
    ("A", f"{TITLE}a"),
    ("NASA", f"{ALLCAPS}nasa"),
    ("abc123Def", f"abc123{TITLE}def"),
    ("Élan ÆSIR naïve Straße", f"Élan Æ{ALLCAPS}sir naïve {TITLE}straße"),
    ("lower case", "lower case"),
    (f"a{TITLE}b{ESC}", f"a{ESC}{TITLE}b{ESC}{ESC}"),
])
def test_words_encode_to_the_documented_operators(text: str, encoded: str) -> None:
    assert caseops.encode(text) == encoded
    assert caseops.decode(encoded) == text


@pytest.mark.parametrize("text", [
    "", "\n", "\n\n\n", "  ", "Hello World", "HELLO world", "HeLLo", "aBC", "ABc", "x", "X", "I",
    "iPhone OpenAI NASA A", "Élan ÆSIR naïve Straße", "abc123Def 9X 0xFF", "Ünïcödé ÀB",
    "".join(caseops.OPERATORS), ESC, ESC * 5 + "A", TITLE + "a", f"{ALLCAPS}NASA{CAPNEXT}",
    "emoji 🚀🚀 End\n\nNext PARAGRAPH\r\n", "\ue000\ue005 private use next door",
    "McDonald's O'Neil USA's e.g. U.S.A.", "ŉ ǅungla ǈj",
])
def test_round_trip_is_exact_on_adversarial_text(text: str) -> None:
    assert caseops.decode(caseops.encode(text)) == text


def test_round_trip_is_exact_on_random_strings() -> None:
    rng = random.Random(2024)
    for _ in range(4000):
        text = random_string(rng)
        encoded = caseops.encode(text)
        assert caseops.decode(encoded) == text
        assert not any("A" <= c <= "Z" for c in encoded)  # every capital became an operator


def test_long_words_round_trip_without_quadratic_backtracking() -> None:
    for text in ["a" * 300_000, ("a" * 100_000 + "B") * 3, "Q" * 200_000 + "q"]:
        assert caseops.decode(caseops.encode(text)) == text


def test_decode_drops_operators_with_nothing_to_act_on() -> None:
    assert caseops.decode(f"{TITLE}{ALLCAPS} 1{CAPNEXT}{ESC}") == " 1"
    rng = random.Random(7)
    for _ in range(2000):
        caseops.decode(random_string(rng))  # model output can be anything: never raises


def test_original_byte_prefix_ends_at_the_original_utf8_length() -> None:
    rng = random.Random(11)
    for text in [random_string(rng) for _ in range(2000)] + ["", ESC, ESC + ESC + TITLE]:
        prefix = caseops.original_byte_prefix(caseops.encode(text))
        assert prefix[-1] == len(text.encode("utf-8"))
        assert (np.diff(prefix) >= 0).all()


# ---- per-token byte counts ----

def test_token_counts_give_operators_zero_and_everything_else_its_bytes(caseops_build: dict) -> None:
    sp = caseops_build["sp"]
    texts = ["Hello NASA 🦜", f"lit{TITLE}eral {ESC}", " two  spaces ", "ﬁne ½ e\u0301", "", "x"]
    for text, (ids, counts) in zip(texts, caseops.encode_with_byte_counts(sp, texts)):
        assert counts.sum() == len(text.encode("utf-8"))
        assert ids.tolist() == sp.encode(caseops.encode(text))
        pieces = [sp.id_to_piece(int(i)) for i in ids]
        escaped = [i > 0 and pieces[i - 1] == ESC and counts[i - 1] == 0 for i in range(len(pieces))]
        for piece, count, literal in zip(pieces, counts, escaped):
            if piece in caseops.OPERATORS and not literal:
                assert count == 0
        if "🦜" in text:  # not in the corpus, so spelled by four byte-fallback pieces
            assert [c for p, c in zip(pieces, counts) if p.startswith("<0x")] == [1, 1, 1, 1]


def test_a_document_that_normalises_to_nothing_is_refused(caseops_build: dict) -> None:
    with pytest.raises(ValueError, match="has no tokens after normalisation"):
        caseops.encode_with_byte_counts(caseops_build["sp"], ["   "])


def test_counts_are_fast_enough_for_megabytes(caseops_build: dict) -> None:
    import time
    text = " ".join(caseops_build["val_docs"])
    docs = [text] * max(1, 500_000 // len(text))
    start = time.process_time()
    results = caseops.encode_with_byte_counts(caseops_build["sp"], docs)
    assert time.process_time() - start < 15  # about 3 us per token; 0.5 MB at vocab 512 is ~200k tokens
    assert sum(int(c.sum()) for _, c in results) == len(text.encode("utf-8")) * len(docs)


# ---- make_local_dataset.py --caseops ----

def test_caseops_build_names_and_files(caseops_build: dict) -> None:
    out = caseops_build["tmp"] / "out"
    assert caseops_build["paths"] == {"DATA_PATH": str(out / "datasets" / "local_sp512_caseops"),
                                      "TOKENIZER_PATH": str(out / "tokenizers" / "local_512_caseops.model"),
                                      "VOCAB_SIZE": "512"}
    names = sorted(p.name for p in caseops_build["data"].iterdir())
    assert names == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    assert caseops.sidecar_problem(caseops_build["data"] / names[1], caseops_build["data"] / names[2]) is None


def test_tokenizer_keeps_operators_as_single_pieces(caseops_build: dict) -> None:
    sp = caseops_build["sp"]
    assert caseops.operator_piece_problem(sp) is None
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.encode(caseops.encode("NASA"))[0] == sp.piece_to_id(ALLCAPS)
    assert caseops_build["tokens"].max() < 512


def test_sidecar_sums_to_each_validation_documents_utf8_length(caseops_build: dict) -> None:
    tokens, counts, val_docs = caseops_build["tokens"], caseops_build["bytes"], caseops_build["val_docs"]
    assert len(tokens) == len(counts) and not counts[tokens == builder.BOS_ID].any()
    per_doc = [int(c.sum()) for c in documents(tokens, counts)]
    assert per_doc == [len(d.encode("utf-8")) for d in val_docs]
    assert any(is_messy(d) for d in val_docs) and any(not is_messy(d) for d in val_docs)


def test_decoded_validation_text_is_the_original_unless_normalisation_rewrote_it(caseops_build: dict) -> None:
    sp, val_docs = caseops_build["sp"], caseops_build["val_docs"]
    decoded = [caseops.decode(sp.decode(ids.tolist())) for ids in documents(caseops_build["tokens"])]
    for original, text in zip(val_docs, decoded):
        assert (text == original) != is_messy(original)  # NFKC / whitespace folding: see caseops.py


def test_bpb_from_sidecar_equals_bpb_from_original_text(caseops_build: dict) -> None:
    tokens, counts, val_docs = caseops_build["tokens"], caseops_build["bytes"], caseops_build["val_docs"]
    sp = caseops_build["sp"]
    rng = np.random.default_rng(0)
    for nll in (np.full(len(tokens), math.log(512)), rng.uniform(0.1, 9.0, len(tokens))):
        targets = slice(1, None)  # every token after the first is predicted
        bits = nll[targets].sum() / math.log(2)
        from_sidecar = bits / counts[targets].sum()
        from_text = bits / sum(len(d.encode("utf-8")) for d in val_docs)
        assert from_sidecar == pytest.approx(from_text, rel=1e-12)
    # Where the round trip is exact, the decoded text's bytes give the same per-document bpb.
    nll = rng.uniform(0.1, 9.0, len(tokens))
    for ids, doc_nll, doc_counts, original in zip(documents(tokens), documents(tokens, nll),
                                                  documents(tokens, counts), val_docs):
        if not is_messy(original):
            text = caseops.decode(sp.decode(ids.tolist()))
            assert doc_nll.sum() / doc_counts.sum() == pytest.approx(doc_nll.sum() / len(text.encode()), rel=1e-12)


def test_caseops_build_is_byte_identical_when_repeated(caseops_build: dict, tmp_path: Path) -> None:
    builder.main(["--output-root", str(tmp_path), *caseops_build["args"]])
    first = caseops_build["tmp"] / "out"
    for path in sorted(p for p in first.rglob("*") if p.is_file()):
        assert (tmp_path / path.relative_to(first)).read_bytes() == path.read_bytes(), path.name


def test_caseops_vocab_must_leave_room_for_the_operators(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="needs 264 special, operator and byte pieces"):
        builder.main(["--caseops", "--vocab-size", "264", "--output-root", str(tmp_path)])


# ---- sidecar validation ----

def test_sidecar_problem_names_a_wrong_length_or_bytes_on_bos(tmp_path: Path) -> None:
    tokens = np.array([1, 5, 6, 1, 7], dtype=np.uint16)
    val, side = tmp_path / "fineweb_val_000000.bin", tmp_path / "fineweb_val_bytes_000000.bin"
    val.write_bytes(builder.shard_bytes(tokens))
    side.write_bytes(builder.shard_bytes(np.array([0, 1, 2, 0], dtype=np.uint16)))
    assert "holds 4 byte counts but" in caseops.sidecar_problem(val, side)
    side.write_bytes(builder.shard_bytes(np.array([0, 1, 2, 3, 1], dtype=np.uint16)))
    assert "gives bytes to a BOS token" in caseops.sidecar_problem(val, side)
    side.write_bytes(builder.shard_bytes(np.array([0, 1, 2, 0, 1], dtype=np.uint16))[:-2])
    assert "not a complete challenge shard" in caseops.sidecar_problem(val, side)
    side.write_bytes(builder.shard_bytes(np.array([0, 1, 2, 0, 1], dtype=np.uint16)))
    assert caseops.sidecar_problem(val, side) is None


# ---- prep_docs_selected.py ----

def write_docs(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def docs_selected(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A docs_selected.jsonl with the official 50,000 (tiny) validation documents, then training ones."""
    tmp = tmp_path_factory.mktemp("docs")
    rng = random.Random(5)
    val = [f"Val {i} " + " ".join(cased(w, rng) for w in rng.choices(SYLLABLES, k=4)) for i in range(50_000)]
    train = corpus_docs(120, seed=9)
    return {"tmp": tmp, "val": val, "train": train, "path": write_docs(tmp / "docs_selected.jsonl", val + train)}


def run_prep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "data" / "prep_docs_selected.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_prep_validation_is_the_first_documents_and_training_starts_after_50000(
        docs_selected: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prep.main(["--docs", str(docs_selected["path"]), "--caseops", "--vocab-size", "400",
               "--val-docs", "300", "--output-root", str(tmp_path)])
    paths = dict(item.split("=", 1) for item in capsys.readouterr().out.strip().splitlines()[-1].split())
    data = Path(paths["DATA_PATH"])
    assert data.name == "docs_selected_sp400_caseops_val300"  # a smoke split says so in its name
    assert Path(paths["TOKENIZER_PATH"]).name == "docs_selected_400_caseops_val300.model"
    sp = spm.SentencePieceProcessor(model_file=paths["TOKENIZER_PATH"])
    tokens, counts = read_shard(data / "fineweb_val_000000.bin"), read_shard(data / "fineweb_val_bytes_000000.bin")
    assert [int(c.sum()) for c in documents(tokens, counts)] == [len(t.encode()) for t in docs_selected["val"][:300]]
    assert [caseops.decode(sp.decode(d.tolist())) for d in documents(tokens)] == docs_selected["val"][:300]
    train = np.concatenate([read_shard(p) for p in sorted(data.glob("fineweb_train_*.bin"))])
    decoded = [caseops.decode(sp.decode(d.tolist())) for d in documents(train)]
    assert len(decoded) == len(docs_selected["train"])
    assert all(d.startswith(f"Doc {i},") for i, d in enumerate(decoded))


@pytest.mark.parametrize("reuse_tokenizer", [False, True])
def test_prep_refuses_training_text_equal_to_a_validation_document(
        docs_selected: dict, tmp_path: Path, reuse_tokenizer: bool) -> None:
    # The duplicate is validation document 49,999, which a --val-docs 300 run does not even write.
    leaky = write_docs(tmp_path / "leaky.jsonl", docs_selected["val"] + docs_selected["train"][:60]
                       + [docs_selected["val"][-1]] + docs_selected["train"][60:])
    out = tmp_path / "out"
    args = ["--docs", str(leaky), "--caseops", "--val-docs", "300", "--output-root", str(out)]
    # An earlier run's outputs under the names this run would publish must survive the refusal.
    earlier = out / "datasets" / "docs_selected_sp400_caseops_val300"
    earlier.mkdir(parents=True)
    (earlier / "fineweb_val_000000.bin").write_bytes(builder.shard_bytes(np.arange(5, dtype=np.uint16)))
    (out / "tokenizers").mkdir()
    (out / "tokenizers" / "docs_selected_400_caseops_val300.model").write_bytes(b"an earlier model")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if reuse_tokenizer:  # no tokenizer sample is read first: the leak is met while shards are written
        model = tmp_path / "tok.model"
        model.write_bytes(builder.train_tokenizer([caseops.encode(d) for d in docs_selected["train"]], 400,
                                                  caseops.OPERATORS))
        args += ["--tokenizer", str(model), "--shard-tokens", "2000"]
    else:
        args += ["--vocab-size", "400"]
    proc = run_prep(*args)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "line 50061 has the exact text of the validation document on line 50000" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written or removed
    assert proc.stderr.startswith("error: ") and not list(out.rglob("*.partial"))


def test_prep_can_drop_training_documents_equal_to_validation_ones(docs_selected: dict, tmp_path: Path) -> None:
    leaky = write_docs(tmp_path / "leaky.jsonl", docs_selected["val"] + [docs_selected["val"][7]]
                       + docs_selected["train"])
    proc = run_prep("--docs", str(leaky), "--vocab-size", "400", "--val-docs", "50", "--drop-val-duplicates",
                    "--output-root", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 training documents equal to validation ones" in proc.stdout
    paths = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    sp = spm.SentencePieceProcessor(model_file=paths["TOKENIZER_PATH"])
    train = read_shard(Path(paths["DATA_PATH"]) / "fineweb_train_000000.bin")
    assert Path(paths["DATA_PATH"]).name == "docs_selected_sp400_val50"
    assert sp.decode(documents(train)[0].tolist()).startswith("Doc 0,")


@pytest.mark.parametrize("args, message", [
    (["--val-docs", "50001"], "--val-docs must be between 1 and 50,000"),
    (["--val-docs", "0"], "--val-docs must be between 1 and 50,000"),
    (["--vocab-size", "264", "--caseops"], "--vocab-size must be between 265"),
    (["--train-shards", "0"], "--train-shards must be at least 1"),
])
def test_prep_refuses_options_that_break_the_split_or_shards(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        prep.main(["--docs", str(tmp_path / "unused.jsonl"), "--output-root", str(tmp_path), *args])


def test_prep_refuses_a_file_shorter_than_the_validation_split(tmp_path: Path) -> None:
    short = write_docs(tmp_path / "short.jsonl", corpus_docs(30))
    with pytest.raises(SystemExit, match="has only 30 documents, but the first 50,000 are validation"):
        prep.main(["--docs", str(short), "--val-docs", "10", "--output-root", str(tmp_path)])


def test_prep_reused_tokenizer_must_have_the_operators(docs_selected: dict, tmp_path: Path) -> None:
    model = tmp_path / "plain.model"
    model.write_bytes(builder.train_tokenizer(docs_selected["train"], 400))
    with pytest.raises(SystemExit, match="no user-defined piece for operator U\\+E001"):
        prep.main(["--docs", str(docs_selected["path"]), "--caseops", "--tokenizer", str(model),
                   "--val-docs", "10", "--output-root", str(tmp_path)])


def test_prep_is_byte_identical_when_repeated_and_keeps_only_full_train_shards(
        docs_selected: dict, tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        prep.main(["--docs", str(docs_selected["path"]), "--caseops", "--vocab-size", "400", "--val-docs", "50",
                   "--shard-tokens", "3000", "--train-shards", "2", "--output-root", str(tmp_path / run)])
        outputs.append({p.relative_to(tmp_path / run): p.read_bytes()
                        for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1]
    train = sorted(p for p in outputs[0] if p.name.startswith("fineweb_train_"))
    assert [p.name for p in train] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert all(len(outputs[0][p]) == 1024 + 2 * 3000 for p in train)
