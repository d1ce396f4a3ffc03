"""Build shards from the challenge's docs_selected.jsonl with the official split, refusing any leak.

    python3 data/prep_docs_selected.py --docs raw/docs_selected.jsonl --caseops --vocab-size 8192
    python3 data/prep_docs_selected.py --docs raw/docs_selected.jsonl --caseops \
        --tokenizer data/tokenizers/fineweb_8192_caseops.model      # reuse a tokenizer
    python3 data/prep_docs_selected.py --docs raw/docs_selected.jsonl --caseops --vocab-size 1024 \
        --val-docs 2000 --train-shards 1                            # smoke run, not the official split

docs_selected.jsonl holds one JSON object with a `text` field per line, in a fixed order. The
official validation split is its FIRST 50,000 documents and training uses only the documents
after them, so `--val-docs` can only lower the validation count (for smoke runs: the output
name then says `_val{N}`, and documents N..49,999 are used by neither split). Every training
document is checked against the sha1 of the exact text of all 50,000 validation documents; a
match stops the run with exit status 3 and one `error:` line on stderr, and nothing is written
(pass `--drop-val-duplicates` to leave such documents out instead). A copied prep script that took
the first 10,000 documents as validation trained on the other 40,000 (issue #2127); this one
cannot.

The tokenizer, unless `--tokenizer` gives one, is trained like data/make_local_dataset.py's on
the first 64 MB of training documents. Output, for name N (default docs_selected) and vocab V:
    {output-root}/datasets/N_spV[_caseops][_val{n}]/fineweb_{train,val}_NNNNNN.bin
    {output-root}/datasets/N_spV_caseops.../fineweb_val_bytes_NNNNNN.bin   (with --caseops)
    {output-root}/tokenizers/N_V_{bpe|caseops}[_val{n}].model (and .vocab; not with --tokenizer)
With --caseops the text is transformed by data/caseops.py and each val shard gets a sidecar of
original UTF-8 bytes per token, exactly as data/make_local_dataset.py --caseops writes it.
Shards are written to a `.partial` folder and the tokenizer to `.partial` files, renamed into
place only when the whole build is complete, so a run that fails leaves an earlier run's files as
they were; the same input and options give byte-identical files. The last line is
`DATA_PATH=... TOKENIZER_PATH=... VOCAB_SIZE=...`. The --docs file is read as UTF-8 bytes, line by
line: a line that is not UTF-8 or not a JSON object with a string `text` is refused naming its
number. `--name` is a plain file name: no path separator and no `..`.

exit status: 0 done; 2 a bad option or option value (a --name with a path in it included);
3 the --docs or --tokenizer file missing, unreadable, not UTF-8, malformed or too short, or a
training document equal to a validation one; 4 the --output-root is a file or not writable, or
a write failed; 130 interrupted. Every refusal is one line on stderr starting "error:".
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import caseops  # noqa: E402  (data/ is not a package; this file is run as a script)
import make_local_dataset as builder  # noqa: E402
from make_local_dataset import EXIT_INPUT, EXIT_USAGE, fail  # noqa: E402  (one set of exit statuses)

OFFICIAL_VAL_DOCS = 50_000
TRAIN_BATCH_DOCS = 4096  # documents read, checked and transformed per round of shard writing


# ---- DOCUMENTS AND SPLIT ----

def check_docs_file(path: Path) -> None:
    """The --docs file must be a readable regular file before any work starts."""
    if not path.exists():
        fail(f"--docs {path} does not exist; give the path of docs_selected.jsonl.", EXIT_INPUT)
    if not path.is_file():
        fail(f"--docs {path} is not a regular file; give the path of docs_selected.jsonl.", EXIT_INPUT)
    try:
        path.open("rb").close()
    except OSError as exc:
        fail(f"cannot open --docs {path} ({exc.strerror}); check its permissions.", EXIT_INPUT)


def read_docs(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each document, in file order; blank lines are not documents.

    Read as bytes, so a line that is not UTF-8 is refused with its number rather than a traceback.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        fail(f"cannot open --docs {path} ({exc.strerror}); give the path of docs_selected.jsonl.", EXIT_INPUT)
    with handle:
        try:
            yield from builder.jsonl_texts(handle, path)
        except OSError as exc:  # a read error met while shards are written is still the input's fault
            fail(f"cannot read --docs {path} ({exc.strerror or exc}); check the file and its disk.", EXIT_INPUT)


def text_hash(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def take_validation(docs: Iterator[tuple[int, str]], val_docs: int) -> tuple[list[str], dict[bytes, int]]:
    """(texts of the first val_docs documents, {sha1: line number} of all 50,000 official validation ones).

    All 50,000 are hashed even when fewer are written, so no official validation text can
    reach training in a smoke run either.
    """
    texts: list[str] = []
    hashes: dict[bytes, int] = {}
    seen = 0
    for line_no, text in itertools.islice(docs, OFFICIAL_VAL_DOCS):
        if text:  # an empty document holds no validation text to leak
            hashes.setdefault(text_hash(text), line_no)
        if seen < val_docs:
            texts.append(text)
        seen += 1
    if seen < OFFICIAL_VAL_DOCS:
        fail(f"the file has only {seen:,} documents, but the first {OFFICIAL_VAL_DOCS:,} are "
             "validation and training comes after them; give the full docs_selected.jsonl.", EXIT_INPUT)
    return texts, hashes


def training_docs(docs: Iterator[tuple[int, str]], val_hashes: dict[bytes, int], drop: bool,
                  dropped: list[int]) -> Iterator[str]:
    """Documents after the validation split, each checked against every validation text.

    A match ends the run (EXIT_INPUT), or with `drop` is left out and its line recorded in `dropped`.
    """
    for line_no, text in docs:
        val_line = val_hashes.get(text_hash(text))
        if val_line is None:
            yield text
        elif drop:
            dropped.append(line_no)
        else:
            fail(f"the training document on line {line_no} has the exact text of the validation document "
                 f"on line {val_line}; refusing to write training shards that contain validation text "
                 "(pass --drop-val-duplicates to leave such documents out).", EXIT_INPUT)


def take_bytes(docs: Iterator[str], budget: int) -> list[str]:
    """Leading documents up to `budget` UTF-8 bytes (at least one), for tokenizer training."""
    head: list[str] = []
    for text in docs:
        head.append(text)
        budget -= len(text.encode("utf-8"))
        if budget <= 0:
            break
    return head


# ---- TOKENIZER ----

def load_tokenizer(path: Path, caseops_on: bool) -> bytes:
    try:
        model = path.read_bytes()
        sp = spm.SentencePieceProcessor(model_proto=model)
    except (OSError, RuntimeError) as exc:
        fail(f"--tokenizer {path} is not a readable SentencePiece model ({exc}); pass a .model file.",
             EXIT_INPUT)
    if sp.bos_id() != builder.BOS_ID or sp.vocab_size() > builder.MAX_VOCAB_SIZE:
        fail(f"--tokenizer {path} needs BOS id {builder.BOS_ID} and at most 65536 pieces to fit the shards.",
             EXIT_INPUT)
    problem = caseops.operator_piece_problem(sp) if caseops_on else None
    if problem:
        fail(f"--tokenizer {path}: {problem}", EXIT_INPUT)
    return model


def train_new_tokenizer(docs: list[str], vocab_size: int, caseops_on: bool) -> bytes:
    text = [caseops.encode(d) for d in docs] if caseops_on else docs
    return builder.train_tokenizer(text, vocab_size, caseops.OPERATORS if caseops_on else ())


# ---- SHARDS ----

def write_train(sp: spm.SentencePieceProcessor, docs: Iterator[str], writer: builder.ShardWriter,
                caseops_on: bool, max_shards: int | None) -> int:
    """Training shards, stopping after max_shards full ones; returns the documents written.

    The CaseOps transform is pure Python (~8 MB/s a core), so it runs in a process pool: on
    the full file it would otherwise take longer than the tokenizer. pool.map keeps the order.
    """
    threads = os.cpu_count() or 1
    pool = multiprocessing.Pool(threads) if caseops_on and threads > 1 else None
    count = 0
    try:
        while batch := list(itertools.islice(docs, TRAIN_BATCH_DOCS)):
            if caseops_on:
                batch = pool.map(caseops.encode, batch, chunksize=64) if pool else [caseops.encode(d) for d in batch]
            for ids in sp.encode(batch, num_threads=threads):
                writer.add(np.array([builder.BOS_ID, *ids], dtype=np.uint16))
                count += 1
                if max_shards is not None and writer.shards >= max_shards:
                    return count  # the partial remainder is dropped: every kept shard is full
    finally:
        if pool:
            pool.terminate()
    writer.flush()
    return count


def output_names(args: argparse.Namespace, vocab_size: int) -> tuple[Path, Path]:
    dataset_dir, tokenizer_path = builder.output_paths(Path(args.output_root), args.name, vocab_size, args.caseops)
    if args.val_docs < OFFICIAL_VAL_DOCS:  # a smoke run must never pass for the official split
        tag = f"_val{args.val_docs}"
        dataset_dir = dataset_dir.with_name(dataset_dir.name + tag)
        tokenizer_path = tokenizer_path.with_name(tokenizer_path.stem + tag + ".model")
    if args.tokenizer:
        tokenizer_path = Path(args.tokenizer)
    return dataset_dir, tokenizer_path


# ---- MAIN ----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = builder.tool_parser(__doc__)
    p.add_argument("--docs", type=Path, required=True, help="docs_selected.jsonl (one {\"text\": ...} per line)")
    p.add_argument("--caseops", action="store_true",
                   help="lossless-case transform; adds fineweb_val_bytes_NNNNNN.bin sidecars "
                        "(original bytes per token)")
    p.add_argument("--vocab-size", type=int, default=8192, help="pieces of the tokenizer to train")
    p.add_argument("--tokenizer", type=Path, help="reuse this SentencePiece .model instead of training one")
    p.add_argument("--val-docs", type=int, default=OFFICIAL_VAL_DOCS,
                   help=f"validation documents, at most the official {OFFICIAL_VAL_DOCS}; "
                        "fewer names the output _val{N}")
    p.add_argument("--train-shards", type=int, default=None, help="stop after this many full training shards")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--drop-val-duplicates", action="store_true",
                   help="leave out training documents whose text equals a validation document instead of refusing")
    p.add_argument("--name", default="docs_selected",
                   help="plain name of the outputs (no path separator, no '..'): datasets/{name}_sp{V}"
                        "[_caseops][_val{N}]/ and tokenizers/{name}_{V}_{bpe|caseops}[_val{N}].model")
    p.add_argument("--output-root", default=str(Path(__file__).resolve().parent),
                   help="folder that receives datasets/ and tokenizers/ (default: this data/ folder)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.val_docs <= OFFICIAL_VAL_DOCS:
        fail(f"--val-docs must be between 1 and {OFFICIAL_VAL_DOCS:,}: validation is the first "
             f"{OFFICIAL_VAL_DOCS:,} documents and nothing after them, so a larger value would score training text.",
             EXIT_USAGE)
    if args.train_shards is not None and args.train_shards < 1:
        fail(f"--train-shards must be at least 1, not {args.train_shards}; leave it out to write every shard.",
             EXIT_USAGE)
    if not 1 <= args.shard_tokens < 2**31:
        fail(f"--shard-tokens {args.shard_tokens} is out of range: it must be between 1 and 2**31 - 1 "
             "(the header stores an int32 count).", EXIT_USAGE)
    reserved = builder.SPECIAL_AND_BYTE_PIECES + (len(caseops.OPERATORS) if args.caseops else 0)
    if not args.tokenizer and not reserved < args.vocab_size <= builder.MAX_VOCAB_SIZE:
        fail(f"--vocab-size must be between {reserved + 1} and {builder.MAX_VOCAB_SIZE} (special, operator "
             "and byte pieces come first; shards store uint16 ids); use e.g. 8192.", EXIT_USAGE)
    if not args.output_root:
        fail("--output-root is empty; pass the folder that should receive datasets/ and tokenizers/.", EXIT_USAGE)
    builder.check_name(args.name)


def build(args: argparse.Namespace, model: bytes | None) -> tuple[Path, Path, int]:
    """Shards into a .partial folder, published with the tokenizer only when all are written.

    `model` is the reused --tokenizer, or None to train one on the first training documents.
    """
    docs = read_docs(args.docs)
    val_texts, val_hashes = take_validation(docs, args.val_docs)
    dropped: list[int] = []
    train = training_docs(docs, val_hashes, args.drop_val_duplicates, dropped)
    new_model = None
    if model is None:
        head = take_bytes(train, builder.TOKENIZER_TRAIN_BYTES)
        if not head:
            fail(f"no documents follow the first {OFFICIAL_VAL_DOCS:,}, so there is nothing to train on.",
                 EXIT_INPUT)
        model = new_model = train_new_tokenizer(head, args.vocab_size, args.caseops)
        train = itertools.chain(head, train)
    sp = spm.SentencePieceProcessor(model_proto=model)
    dataset_dir, tokenizer_path = output_names(args, sp.vocab_size())

    def write_shards(folder: Path) -> tuple[builder.ShardWriter, builder.ShardWriter, int]:
        val = builder.ShardWriter(folder, "val", args.shard_tokens)
        if args.caseops:
            builder.write_caseops_val(sp, val_texts, val, builder.ShardWriter(folder, "val_bytes", args.shard_tokens))
        else:
            builder.write_split(sp, val_texts, val)
        writer = builder.ShardWriter(folder, "train", args.shard_tokens)
        count = write_train(sp, train, writer, args.caseops, args.train_shards)
        if not writer.shards:
            fail("no training document was written; give the full docs_selected.jsonl.", EXIT_INPUT)
        return val, writer, count

    val, writer, train_count = builder.write_outputs(
        dataset_dir, None if args.tokenizer else tokenizer_path, new_model, write_shards)
    val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    print(f"{dataset_dir.name}: val docs={len(val_texts)} bytes={val_bytes} tokens={val.total_tokens} "
          f"shards={val.shards}; train docs={train_count} tokens={writer.total_tokens} shards={writer.shards}"
          + (f"; left out {len(dropped)} training documents equal to validation ones" if dropped else ""))
    return dataset_dir, tokenizer_path, sp.vocab_size()


def prepare(argv: list[str] | None) -> None:
    args = parse_args(argv)
    check_args(args)
    check_docs_file(args.docs)
    # A reused tokenizer is read first: it is cheap, and the output names need its vocabulary size.
    model = load_tokenizer(args.tokenizer, args.caseops) if args.tokenizer else None
    vocab_size = spm.SentencePieceProcessor(model_proto=model).vocab_size() if model else args.vocab_size
    dataset_dir, tokenizer_path = output_names(args, vocab_size)
    builder.check_output_location(Path(args.output_root), dataset_dir, None if args.tokenizer else tokenizer_path)
    t0 = time.time()
    dataset_dir, tokenizer_path, vocab_size = build(args, model)
    print(f"  done in {time.time() - t0:.1f}s")
    print(f"DATA_PATH={dataset_dir} TOKENIZER_PATH={tokenizer_path} VOCAB_SIZE={vocab_size}")


def main(argv: list[str] | None = None) -> None:
    builder.run_cli(prepare, argv)


if __name__ == "__main__":
    main()
