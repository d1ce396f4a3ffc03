"""Build a SentencePiece tokenizer and train/val shards in the challenge's format, offline.

    python3 data/make_local_dataset.py                       # the interpreter's standard library
    python3 data/make_local_dataset.py --input corpus/ notes.txt 'web/*.jsonl' --vocab-size 4096

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


def read_documents(path: Path) -> list[str]:
    """Documents of one file: the whole text, or one per line of a .jsonl file."""
    text = path.read_text(encoding="utf-8")  # OSError / UnicodeDecodeError: caller skips the file
    if path.suffix.lower() != ".jsonl":
        return [text]
    docs = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            fail(f"{path}:{line_no} is not a JSON object with a 'text' field; fix or remove that line.")
        if not isinstance(doc, str):
            fail(f"{path}:{line_no} has a 'text' field that is not a string.")
        docs.append(doc)
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


def train_tokenizer(train_docs: list[str], vocab_size: int) -> bytes:
    """Serialized SentencePiece model with the challenge's tokenizer settings."""
    model = io.BytesIO()  # an in-memory writer keeps temp paths out of the model's trainer_spec
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=tokenizer_sentences(train_docs), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, character_coverage=0.999,
            byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            hard_vocab_limit=False,  # as the official export; the size is checked below instead
            input_sentence_size=0, shuffle_input_sentence=False,  # no sampling: deterministic
            max_sentence_length=4 * TOKENIZER_LINE_CHARS, num_threads=TOKENIZER_TRAIN_THREADS,
            minloglevel=2)
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
    threads = os.cpu_count() or 1  # encoding output does not depend on the thread count
    for start in range(0, len(docs), ENCODE_BATCH_DOCS):
        for ids in sp.encode(docs[start:start + ENCODE_BATCH_DOCS], num_threads=threads):
            writer.add(np.array([BOS_ID, *ids], dtype=np.uint16))
    writer.flush()


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
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if args.vocab_size <= SPECIAL_AND_BYTE_PIECES:
        fail(f"--vocab-size {args.vocab_size} is too small: the tokenizer needs 4 special ids and "
             f"256 byte pieces plus the corpus's characters; use e.g. 512 or more.")
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
    model = train_tokenizer(train_docs, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=model)

    root, v = Path(args.output_root), args.vocab_size
    dataset_dir = root / "datasets" / f"{args.name}_sp{v}"
    tokenizer_path = root / "tokenizers" / f"{args.name}_{v}_bpe.model"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(tokenizer_path, model)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(v))
    write_atomic(tokenizer_path.with_suffix(".vocab"), vocab.encode("utf-8"))

    remove_stale_shards(dataset_dir)
    print(f"{args.name}_sp{v}: {len(docs)} docs, {total_bytes:,} bytes of text")
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        writer = ShardWriter(dataset_dir, split, args.shard_tokens)
        write_split(sp, split_docs, writer)
        split_bytes = sum(len(d.encode("utf-8")) for d in split_docs)
        print(f"  {split:5s} docs={len(split_docs)} bytes={split_bytes} "
              f"tokens={writer.total_tokens} shards={writer.shards}")
    print(f"  done in {time.time() - t0:.1f}s")
    print(f"DATA_PATH={dataset_dir} TOKENIZER_PATH={tokenizer_path} VOCAB_SIZE={v}")


if __name__ == "__main__":
    main()
