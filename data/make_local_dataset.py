"""Build a SentencePiece tokenizer and train/val shards in the challenge's format, offline.

    python3 data/make_local_dataset.py                       # the interpreter's standard library
    python3 data/make_local_dataset.py --input corpus/ notes.txt 'web/*.jsonl' --vocab-size 4096
    python3 data/make_local_dataset.py --caseops --vocab-size 1024           # lossless-case variant

Inputs are text files (one document each), directories (searched recursively for text-like
files, hidden entries skipped), glob patterns, and `.jsonl` files whose lines are JSON objects
with a `text` field (one document per line). With no `--input` the standard-library `*.py`
files of the running Python are used, so every machine can build a dataset without a download.

Documents are read in a fixed order (inputs as given, files sorted), cut off once `--max-bytes`
is reached, shuffled with `--seed`, and the first `--val-docs` go to validation. The tokenizer
uses the challenge's SentencePiece BPE settings and is trained on the training documents only.
Each document is written as BOS (id 1) followed by its tokens, no EOS, into shards of a 256 x
int32 header (magic 20240520, version 1, token count) plus uint16 ids, exactly like the official
`fineweb_{train,val}_*.bin`. The same input and options give byte-identical files.

With `--caseops` every document is first rewritten by data/caseops.py (lowercase words plus the
case operators TITLE/ALLCAPS/CAPNEXT/ESC, U+E001..U+E004, exactly invertible), the tokenizer
gets the four operators as user-defined pieces, and each validation shard gets a byte sidecar:
    {output-root}/datasets/{name}_sp{V}_caseops/fineweb_{train,val}_NNNNNN.bin
    {output-root}/datasets/{name}_sp{V}_caseops/fineweb_val_bytes_NNNNNN.bin
    {output-root}/tokenizers/{name}_{V}_caseops.model (and .vocab)
A sidecar has the shard format and one uint16 per token of its val shard: the ORIGINAL UTF-8
bytes that token stands for (0 for BOS and operators), so a document's counts sum to exactly
len(text.encode("utf-8")) and bits-per-byte is scored on the untransformed text. The tokenizer
still normalises (NFKC, whitespace folding), so a decoded document can differ from the original
where it had e.g. doubled spaces or newlines; the sidecar counts those original bytes anyway, on
the neighbouring token. Note `fineweb_val_*.bin` also matches the sidecars: readers of val
shards should glob `fineweb_val_[0-9]*.bin`.

The last line printed is `DATA_PATH=... TOKENIZER_PATH=... VOCAB_SIZE=...` to paste before the
training command. The corpus is held in memory; use --max-bytes to bound a large input. The whole
standard library (~31 MB, ~1,760 files) takes about 10 s on 2 CPU cores at vocab 1024 or 8192.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import caseops  # noqa: E402  (data/ is not a package; this file is run as a script)

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
BOS_ID = 1
SPECIAL_AND_BYTE_PIECES = 4 + 256  # pad/bos/eos/unk plus one piece per byte for byte_fallback
MAX_VOCAB_SIZE = 2**16  # ids are stored as uint16
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".pyi", ".html", ".htm", ".xml", ".tex",
                 ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".js", ".ts", ".java", ".sh",
                 ".toml", ".yaml", ".yml", ".cfg", ".ini", ".jsonl"}
# Bounds on what the tokenizer trainer sees, so a large corpus still trains in seconds; the
# whole standard library (~31 MB) fits under the byte budget.
TOKENIZER_TRAIN_BYTES = 64_000_000
TOKENIZER_LINE_CHARS = 4096  # longer lines are cut; spm silently drops sentences over its limit
# The trainer records num_threads in the .model file; a fixed value keeps the file identical
# across machines. The learned pieces do not depend on it (checked with 1, 2 and 4 threads).
TOKENIZER_TRAIN_THREADS = 4
ENCODE_BATCH_DOCS = 256


def fail(message: str) -> NoReturn:
    raise SystemExit(f"make_local_dataset: {message}")


# ---- INPUT DOCUMENTS ----

def default_input_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    third_party = {"site-packages", "dist-packages"}
    return sorted(p for p in stdlib.rglob("*.py") if not third_party & set(p.relative_to(stdlib).parts))


def is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_input(spec: str) -> list[Path]:
    """Files named by one --input value: a file, a directory (recursive) or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and p.suffix.lower() in TEXT_SUFFIXES and not is_hidden(p, path))
    if any(ch in spec for ch in "*?["):
        return [f for match in sorted(glob.glob(spec, recursive=True)) for f in expand_input(match)]
    fail(f"input {spec!r} does not exist; pass text files, directories, glob patterns or .jsonl files.")


def collect_input_files(specs: list[str] | None) -> list[Path]:
    files = default_input_files() if not specs else [f for s in specs for f in expand_input(s)]
    unique = list(dict.fromkeys(f.resolve() for f in files))  # keep first occurrence's order
    if not unique:
        where = ", ".join(specs) if specs else "the standard library"
        fail(f"no input files found in {where}; pass text files, directories, globs or .jsonl files.")
    return unique


def jsonl_texts(lines, path: Path, fail) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a JSONL file; `fail` ends the run on a bad line."""
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            fail(f"{path}:{line_no} is not a JSON object with a 'text' field; fix or remove that line.")
        if not isinstance(doc, str):
            fail(f"{path}:{line_no} has a 'text' field that is not a string.")
        yield line_no, doc


def read_documents(path: Path) -> list[str]:
    """Documents of one file: the whole text, or one per line of a .jsonl file."""
    text = path.read_text(encoding="utf-8")  # OSError / UnicodeDecodeError: caller skips the file
    if path.suffix.lower() != ".jsonl":
        return [text]
    docs = [doc for _, doc in jsonl_texts(text.splitlines(), path, fail)]
    return docs


def load_documents(files: list[Path], max_bytes: int | None) -> tuple[list[str], int]:
    """Non-blank documents in input order; reading stops once max_bytes of text is reached.

    Files that cannot be read as UTF-8 (binary files, legacy encodings) are skipped with a note.
    """
    limit = float("inf") if max_bytes is None else max_bytes
    docs: list[str] = []
    total = 0
    skipped: list[Path] = []
    for path in files:
        if total >= limit:
            break
        try:
            file_docs = read_documents(path)
        except (OSError, UnicodeDecodeError):
            skipped.append(path)
            continue
        for doc in file_docs:
            if total >= limit:
                break
            if doc.strip():
                docs.append(doc)
                total += len(doc.encode("utf-8"))
    if skipped:
        print(f"skipped {len(skipped)} files that are not readable UTF-8 text, e.g. {skipped[0]}")
    return docs, total


def split_documents(docs: list[str], val_docs: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then the first val_docs documents are validation, the rest training."""
    if not docs:
        fail("every input document is empty or unreadable; give UTF-8 files that contain text.")
    if val_docs is None:
        # 10% of the corpus, capped at 200 documents: enough for a stable val_bpb on a small
        # corpus without taking most of a large one away from training.
        val_docs = min(200, max(1, len(docs) // 10))
    if val_docs < 1:
        fail("--val-docs must be at least 1; the training script needs a validation split.")
    if val_docs >= len(docs):
        fail(f"--val-docs {val_docs} leaves no training documents out of {len(docs)}; "
             "lower --val-docs or add input.")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    shuffled = [docs[i] for i in order]
    return shuffled[val_docs:], shuffled[:val_docs]


# ---- TOKENIZER ----

def tokenizer_sentences(train_docs: list[str]) -> Iterator[str]:
    """Non-blank lines of the training documents, in order, cut to bounded length and budget.

    SentencePiece treats each line as a sentence; its pieces never cross whitespace, so feeding
    lines instead of whole documents loses nothing but keeps every sentence under its limit.
    """
    budget = TOKENIZER_TRAIN_BYTES
    for doc in train_docs:
        for line in doc.splitlines():
            for start in range(0, len(line), TOKENIZER_LINE_CHARS):
                piece = line[start:start + TOKENIZER_LINE_CHARS]
                if not piece.strip():
                    continue
                budget -= len(piece.encode("utf-8"))
                if budget < 0:
                    return
                yield piece


def train_tokenizer(train_docs: list[str], vocab_size: int, user_symbols: tuple[str, ...] = ()) -> bytes:
    """Serialized SentencePiece model with the challenge's tokenizer settings.

    `user_symbols` become pieces of their own that are never merged or normalised away (the
    CaseOps operators); without them the options are exactly the challenge's.
    """
    model = io.BytesIO()  # an in-memory writer keeps temp paths out of the model's trainer_spec
    extra = {"user_defined_symbols": list(user_symbols)} if user_symbols else {}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=tokenizer_sentences(train_docs), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, character_coverage=0.999,
            byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            hard_vocab_limit=False,  # as the official export; the size is checked below instead
            input_sentence_size=0, shuffle_input_sentence=False,  # no sampling: deterministic
            max_sentence_length=4 * TOKENIZER_LINE_CHARS, num_threads=TOKENIZER_TRAIN_THREADS,
            minloglevel=2, **extra)
    except RuntimeError as exc:
        fail(f"SentencePiece could not train a {vocab_size}-piece tokenizer ({exc}); "
             "raise --vocab-size or add input.")
    got = spm.SentencePieceProcessor(model_proto=model.getvalue()).vocab_size()
    if got != vocab_size:
        fail(f"the training documents only support {got} tokenizer pieces, not --vocab-size "
             f"{vocab_size}; lower --vocab-size or add input.")
    return model.getvalue()


# ---- SHARDS ----

def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file and rename, so an interrupted run never leaves a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def shard_bytes(tokens: np.ndarray) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    return header.tobytes() + tokens.astype("<u2", copy=False).tobytes()


class ShardWriter:
    """Cuts one split's token stream into fineweb_{split}_{i:06d}.bin shards of shard_tokens."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = self.total_tokens = self.shards = 0

    def add(self, tokens: np.ndarray) -> None:
        while len(tokens):
            room = self.shard_tokens - self.pending_tokens
            self.pending.append(tokens[:room])
            self.pending_tokens += len(tokens[:room])
            tokens = tokens[room:]
            if self.pending_tokens == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.pending_tokens:
            return
        path = self.directory / f"fineweb_{self.split}_{self.shards:06d}.bin"
        write_atomic(path, shard_bytes(np.concatenate(self.pending)))
        self.total_tokens += self.pending_tokens
        self.shards += 1
        self.pending, self.pending_tokens = [], 0


def remove_stale_shards(directory: Path) -> None:
    for pattern in ("fineweb_train_*.bin", "fineweb_val_*.bin", "*.tmp"):
        for stale in directory.glob(pattern):
            stale.unlink()


def write_split(sp: spm.SentencePieceProcessor, docs: list[str], writer: ShardWriter) -> None:
    """BOS + tokens of each document, which the caller has already CaseOps-encoded if wanted."""
    threads = os.cpu_count() or 1  # encoding output does not depend on the thread count
    for start in range(0, len(docs), ENCODE_BATCH_DOCS):
        for ids in sp.encode(docs[start:start + ENCODE_BATCH_DOCS], num_threads=threads):
            writer.add(np.array([BOS_ID, *ids], dtype=np.uint16))
    writer.flush()


def write_caseops_val(sp: spm.SentencePieceProcessor, docs: list[str], tokens: ShardWriter,
                      sidecar: ShardWriter) -> None:
    """CaseOps tokens of ORIGINAL documents, with each token's original byte count in `sidecar`.

    Both writers get the same lengths, so fineweb_val_bytes_i lines up with fineweb_val_i.
    """
    threads = os.cpu_count() or 1
    is_byte = caseops.byte_piece_mask(sp)
    for start in range(0, len(docs), ENCODE_BATCH_DOCS):
        batch = docs[start:start + ENCODE_BATCH_DOCS]
        try:
            encoded = caseops.encode_with_byte_counts(sp, batch, threads, is_byte)
        except ValueError as exc:
            fail(f"validation documents {start}..{start + len(batch) - 1}: {exc}")
        for ids, counts in encoded:
            tokens.add(np.concatenate([[BOS_ID], ids]).astype(np.uint16))
            sidecar.add(np.concatenate([[0], counts]).astype(np.uint16))
    tokens.flush()
    sidecar.flush()


# ---- OUTPUT ----

def output_paths(root: Path, name: str, vocab_size: int, caseops_on: bool) -> tuple[Path, Path]:
    """(dataset folder, tokenizer .model path): {name}_sp{V}[_caseops] and {name}_{V}_{bpe|caseops}.model."""
    suffix = "_caseops" if caseops_on else ""
    return (root / "datasets" / f"{name}_sp{vocab_size}{suffix}",
            root / "tokenizers" / f"{name}_{vocab_size}_{'caseops' if caseops_on else 'bpe'}.model")


def write_tokenizer(model_path: Path, model: bytes) -> None:
    """The .model and a .vocab listing (piece, score) per id, as the official export ships."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(model_path, model)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    write_atomic(model_path.with_suffix(".vocab"), vocab.encode("utf-8"))


# ---- MAIN ----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", action="extend", help="files, directories, globs, .jsonl")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--val-docs", type=int, default=None,
                   help="validation documents (default: 10%% of documents, at most 200)")
    p.add_argument("--name", default="local")
    p.add_argument("--output-root", default="data")
    p.add_argument("--max-bytes", type=int, default=None, help="stop reading input after this many bytes")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--caseops", action="store_true",
                   help="lossless-case transform (data/caseops.py): writes {name}_sp{V}_caseops with a "
                        "fineweb_val_bytes_NNNNNN.bin sidecar per val shard and tokenizer {name}_{V}_caseops.model")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    reserved = SPECIAL_AND_BYTE_PIECES + (len(caseops.OPERATORS) if args.caseops else 0)
    if args.vocab_size <= reserved:
        fail(f"--vocab-size {args.vocab_size} is too small: the tokenizer needs {reserved} special, "
             f"operator and byte pieces plus the corpus's characters; use e.g. 512 or more.")
    if args.vocab_size > MAX_VOCAB_SIZE:
        fail(f"--vocab-size {args.vocab_size} is too large: shards store ids as uint16, so at most 65536.")
    if args.shard_tokens < 1 or args.shard_tokens >= 2**31:
        fail("--shard-tokens must be between 1 and 2**31 - 1 (the header stores an int32 count).")
    if args.max_bytes is not None and args.max_bytes < 1:
        fail("--max-bytes must be positive.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_args(args)
    t0 = time.time()
    docs, total_bytes = load_documents(collect_input_files(args.input), args.max_bytes)
    train_docs, val_docs = split_documents(docs, args.val_docs, args.seed)
    # CaseOps: the tokenizer and train shards see encoded text; val is encoded while it is
    # written, next to the original bytes of each token.
    train_text = [caseops.encode(d) for d in train_docs] if args.caseops else train_docs
    model = train_tokenizer(train_text, args.vocab_size, caseops.OPERATORS if args.caseops else ())
    sp = spm.SentencePieceProcessor(model_proto=model)

    root, v = Path(args.output_root), args.vocab_size
    dataset_dir, tokenizer_path = output_paths(root, args.name, v, args.caseops)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer_path, model)

    remove_stale_shards(dataset_dir)
    print(f"{dataset_dir.name}: {len(docs)} docs, {total_bytes:,} bytes of text")
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        writer = ShardWriter(dataset_dir, split, args.shard_tokens)
        if split == "val" and args.caseops:
            write_caseops_val(sp, split_docs, writer, ShardWriter(dataset_dir, "val_bytes", args.shard_tokens))
        else:
            write_split(sp, train_text if split == "train" else split_docs, writer)
        split_bytes = sum(len(d.encode("utf-8")) for d in split_docs)
        print(f"  {split:5s} docs={len(split_docs)} bytes={split_bytes} "
              f"tokens={writer.total_tokens} shards={writer.shards}")
    print(f"  done in {time.time() - t0:.1f}s")
    print(f"DATA_PATH={dataset_dir} TOKENIZER_PATH={tokenizer_path} VOCAB_SIZE={v}")


if __name__ == "__main__":
    main()
