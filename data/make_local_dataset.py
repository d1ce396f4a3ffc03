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

Shards are written into a `{dataset}.partial` folder and the tokenizer into `.partial` files, and
only a complete build replaces the previous dataset folder and tokenizer, so a run that fails or
is interrupted leaves an earlier run's files as they were and nothing half-written under a real
name. A `.jsonl` input must be UTF-8 with one JSON object per line, and a text file named by
--input must be UTF-8; files found in a directory or by a glob that are not UTF-8 text are
skipped with a note. `--name` is a plain file name: no path separator and no `..`.

exit status: 0 done; 2 a bad option or option value (a --name with a path in it included);
3 an input missing, unreadable, not UTF-8, malformed, or too small for the options; 4 the
--output-root is a file or not writable, or a write failed; 130 interrupted. Every refusal is
one line on stderr starting "error:".
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, TypeVar

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
# A --name becomes part of file names under --output-root, never a path of its own.
PLAIN_NAME = re.compile(r"[\w.-]+")
MAX_NAME_BYTES = 200  # leaves room for the suffixes within a file system's 255-byte names

# Exit statuses of the data tools, one per cause (prep_docs_selected.py uses these too).
EXIT_USAGE = 2         # a bad option or option value
EXIT_INPUT = 3         # an input missing, unreadable, malformed, or too small for the options
EXIT_OUTPUT = 4        # --output-root unusable, or a write failed
EXIT_INTERRUPTED = 130


class DataToolError(SystemExit):
    """A refusal: str() is the one-line reason, .code the exit status of its cause.

    A SystemExit, so a caller that does not catch it still exits with that status.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.code = status


def fail(message: str, status: int) -> NoReturn:
    raise DataToolError(message, status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line errors are one `error:` line with EXIT_USAGE, not usage text."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help.", EXIT_USAGE)


def tool_parser(doc: str) -> ArgumentParser:
    """A parser whose description is the docstring's first paragraph and epilog its exit statuses."""
    exit_statuses = next(p for p in doc.split("\n\n") if p.startswith("exit status:"))
    return ArgumentParser(description=doc.split("\n\n")[0], epilog=exit_statuses,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def run_cli(body: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    """Run a tool's body; a refusal or Ctrl-C ends as one `error:` line on stderr and its status."""
    try:
        body(argv)
    except DataToolError as exc:
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # one line, whatever the cause
        raise
    except KeyboardInterrupt:
        print("error: interrupted; this run's partial files were removed and earlier outputs kept.",
              file=sys.stderr)
        raise DataToolError("interrupted", EXIT_INTERRUPTED) from None


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
    if path.exists():
        fail(f"--input {spec} is neither a regular file nor a folder; pass text files, directories, "
             "glob patterns or .jsonl files.", EXIT_INPUT)
    fail(f"--input {spec} does not exist; pass text files, directories, glob patterns or .jsonl files.",
         EXIT_INPUT)


def collect_input_files(specs: list[str] | None) -> tuple[list[Path], set[Path]]:
    """(input files in reading order, the ones named directly rather than found by a folder or glob).

    Every --input value must give at least one file: a glob that matches nothing is a typo, not
    an empty corpus.
    """
    if not specs:
        files, named = default_input_files(), set()
        if not files:
            fail("no input files found in the standard library; pass --input with text files, "
                 "directories, globs or .jsonl files.", EXIT_INPUT)
    else:
        files, named = [], set()
        for spec in specs:
            if not spec:
                fail("--input got an empty value; pass text files, directories, globs or .jsonl files.", EXIT_USAGE)
            found = expand_input(spec)
            if not found:
                what = "matches no file" if not Path(spec).is_dir() else "holds no text-like file"
                fail(f"no input files found in --input {spec}: it {what} (read suffixes: .txt, .md, .py, "
                     ".jsonl and other text types); check the path or pattern.", EXIT_INPUT)
            if Path(spec).is_file():
                named.add(found[0].resolve())
            files += found
    unique = list(dict.fromkeys(f.resolve() for f in files))  # keep first occurrence's order
    return unique, named


def jsonl_texts(lines: Iterable[bytes], path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a JSONL file, given as raw byte lines.

    A line that is not UTF-8, not JSON, not an object with a string `text`, or whose text is
    not valid Unicode ends the run naming the file and line.
    """
    for line_no, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            fail(f"{path}:{line_no} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                 "re-encode the file as UTF-8 or remove that line.", EXIT_INPUT)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{path}:{line_no} is not a JSON object with a 'text' field (invalid JSON: {exc.msg} "
                 f"at column {exc.colno}); fix or remove that line.", EXIT_INPUT)
        except (ValueError, RecursionError):  # an integer over 4300 digits, nesting past the stack
            fail(f"{path}:{line_no} is not a JSON object with a 'text' field (JSON the parser cannot "
                 "hold); fix or remove that line.", EXIT_INPUT)
        if not isinstance(record, dict) or "text" not in record:
            fail(f"{path}:{line_no} is not a JSON object with a 'text' field; fix or remove that line.",
                 EXIT_INPUT)
        doc = record["text"]
        if not isinstance(doc, str):
            fail(f"{path}:{line_no} has a 'text' field that is not a string; fix or remove that line.",
                 EXIT_INPUT)
        # Only a \u escape can put a lone surrogate into a string decoded from UTF-8.
        if "\\u" in line and not doc.isascii():
            try:
                doc.encode("utf-8")
            except UnicodeEncodeError as exc:
                fail(f"{path}:{line_no} has a 'text' with an unpaired surrogate \\u{ord(doc[exc.start]):04x}, "
                     "which is not Unicode text; fix or remove that line.", EXIT_INPUT)
        yield line_no, doc


def utf8_problem(path: Path) -> str:
    """Where a file stops being UTF-8: 'byte 0x.. on line N'."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"byte 0x{raw[exc.start]:02x} on line {line}"
    return "it changed while being read"


def read_documents(path: Path) -> list[str]:
    """Documents of one file: the whole text, or one per line of a .jsonl file.

    OSError and UnicodeDecodeError of a plain text file reach the caller; a .jsonl file is
    checked line by line and refused with the line's number.
    """
    if path.suffix.lower() != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    # Lines end at "\n" only: U+2028 or U+0085 may sit raw inside a JSON string.
    return [doc for _, doc in jsonl_texts(path.read_bytes().split(b"\n"), path)]


def load_documents(files: list[Path], max_bytes: int | None,
                   named: set[Path] = frozenset()) -> tuple[list[str], int]:
    """Non-blank documents in input order; reading stops once max_bytes of text is reached.

    Files that cannot be read as UTF-8 (binary files, legacy encodings) are skipped with a note,
    unless they are in `named` (given directly by --input): those are refused.
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
        except OSError as exc:
            if path in named:
                fail(f"cannot read --input {path} ({exc.strerror}); check its permissions.", EXIT_INPUT)
            skipped.append(path)
            continue
        except UnicodeDecodeError:
            if path in named:
                fail(f"--input {path} is not UTF-8 text ({utf8_problem(path)}); re-encode it as UTF-8 "
                     "or leave it out.", EXIT_INPUT)
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
        fail("every input document is empty or unreadable; give UTF-8 files that contain text.", EXIT_INPUT)
    if val_docs is None:
        # 10% of the corpus, capped at 200 documents: enough for a stable val_bpb on a small
        # corpus without taking most of a large one away from training.
        val_docs = min(200, max(1, len(docs) // 10))
    if val_docs < 1:
        fail("--val-docs must be at least 1; the training script needs a validation split.", EXIT_USAGE)
    if val_docs >= len(docs):
        fail(f"--val-docs {val_docs} leaves no training documents out of {len(docs)}; "
             "lower --val-docs or add input.", EXIT_INPUT)
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
             "raise --vocab-size or add input.", EXIT_INPUT)
    got = spm.SentencePieceProcessor(model_proto=model.getvalue()).vocab_size()
    if got != vocab_size:
        fail(f"the training documents only support {got} tokenizer pieces, not --vocab-size "
             f"{vocab_size}; lower --vocab-size or add input.", EXIT_INPUT)
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
            fail(f"validation documents {start}..{start + len(batch) - 1}: {exc}", EXIT_INPUT)
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


def check_name(name: str) -> None:
    """--name must stay one file name inside --output-root."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        fail(f"--name {name!r} is not a plain name: use letters, digits, '.', '_' and '-' (no '..', no "
             f"path separator, at most {MAX_NAME_BYTES} bytes); it names files inside --output-root, "
             "which chooses the folder.", EXIT_USAGE)


def check_output_location(root: Path, dataset_dir: Path, tokenizer_path: Path | None) -> None:
    """Refuse, before any work, an --output-root where this run could not publish its files.

    A folder that does not exist yet is judged by its nearest existing parent, which must be a
    folder that takes a new file (tried with a temporary file: permission bits do not stop root).
    """
    if root.exists() and not root.is_dir():
        fail(f"--output-root {root} is a file, not a folder; pass a folder (it is created if missing).", EXIT_OUTPUT)
    for folder in (dataset_dir.parent, *([tokenizer_path.parent] if tokenizer_path else [])):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            fail(f"--output-root {root} cannot hold {folder}: {existing} is a file, not a folder; "
                 "move it away or choose another --output-root.", EXIT_OUTPUT)
        try:
            handle, probe = tempfile.mkstemp(prefix=".write_test_", dir=existing)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            fail(f"--output-root {root} is not writable ({existing}: {exc.strerror}); "
                 "choose a folder you can write to.", EXIT_OUTPUT)
    if dataset_dir.exists() and not dataset_dir.is_dir():
        fail(f"{dataset_dir} is a file where the dataset folder goes; move it away or choose another --name.",
             EXIT_OUTPUT)
    for path in ([tokenizer_path, tokenizer_path.with_suffix(".vocab")] if tokenizer_path else []):
        if path.is_dir():
            fail(f"{path} is a folder where the tokenizer file goes; move it away or choose another --name.",
                 EXIT_OUTPUT)


def tokenizer_files(model: bytes) -> tuple[bytes, bytes]:
    """The .model and a .vocab listing (piece, score) per id, as the official export ships."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    return model, vocab.encode("utf-8")


def publish(partial: Path, dataset_dir: Path, tokenizer_path: Path | None, model: bytes | None) -> None:
    """Put a complete build in place of the previous one.

    The tokenizer files are staged first and the old dataset folder is set aside (not deleted)
    until the new one is in place, so a failure before the last renames changes nothing.
    """
    staged: list[tuple[Path, Path]] = []
    old = dataset_dir.with_name(dataset_dir.name + ".old")
    try:
        if model is not None:
            tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
            for path, data in zip((tokenizer_path, tokenizer_path.with_suffix(".vocab")), tokenizer_files(model)):
                staged.append((path.with_name(path.name + ".partial"), path))
                staged[-1][0].write_bytes(data)
        shutil.rmtree(old, ignore_errors=True)
        if dataset_dir.exists():
            os.replace(dataset_dir, old)
        try:
            os.replace(partial, dataset_dir)
        except BaseException:
            if old.exists() and not dataset_dir.exists():
                os.replace(old, dataset_dir)
            raise
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


Result = TypeVar("Result")


def write_outputs(dataset_dir: Path, tokenizer_path: Path | None, model: bytes | None,
                  write_shards: Callable[[Path], Result]) -> Result:
    """write_shards(a fresh `.partial` folder), then publish it and the tokenizer (None: keep it).

    Any failure removes what this run wrote and leaves an earlier run's files as they were; an
    OSError (disk full, permissions) ends the run with EXIT_OUTPUT naming the path.
    """
    target = dataset_dir.resolve()  # through a symlinked dataset folder, onto the disk it points to
    partial = target.with_name(target.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        result = write_shards(partial)
        publish(partial, target, tokenizer_path, model)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        fail(f"could not write {exc.filename or target} ({exc.strerror or exc}); free some space or "
             "choose another --output-root.", EXIT_OUTPUT)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result


# ---- MAIN ----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--input", nargs="+", action="extend", help="files, directories, globs, .jsonl")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--val-docs", type=int, default=None,
                   help="validation documents (default: 10%% of documents, at most 200)")
    p.add_argument("--name", default="local", help="plain name of the outputs (no path separator, no '..')")
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
             f"operator and byte pieces plus the corpus's characters; use e.g. 512 or more.", EXIT_USAGE)
    if args.vocab_size > MAX_VOCAB_SIZE:
        fail(f"--vocab-size {args.vocab_size} is too large: shards store ids as uint16, so at most 65536.",
             EXIT_USAGE)
    if args.shard_tokens < 1 or args.shard_tokens >= 2**31:
        fail(f"--shard-tokens {args.shard_tokens} is out of range: it must be between 1 and 2**31 - 1 "
             "(the header stores an int32 count).", EXIT_USAGE)
    if args.max_bytes is not None and args.max_bytes < 1:
        fail(f"--max-bytes {args.max_bytes} must be positive; leave it out to read all the input.", EXIT_USAGE)
    if args.val_docs is not None and args.val_docs < 1:
        fail(f"--val-docs {args.val_docs} must be at least 1; the training script needs a validation split.",
             EXIT_USAGE)
    if not args.output_root:
        fail("--output-root is empty; pass the folder that should receive datasets/ and tokenizers/.", EXIT_USAGE)
    check_name(args.name)


def build(argv: list[str] | None) -> None:
    args = parse_args(argv)
    check_args(args)
    root, v = Path(args.output_root), args.vocab_size
    dataset_dir, tokenizer_path = output_paths(root, args.name, v, args.caseops)
    check_output_location(root, dataset_dir, tokenizer_path)
    t0 = time.time()
    files, named = collect_input_files(args.input)
    docs, total_bytes = load_documents(files, args.max_bytes, named)
    train_docs, val_docs = split_documents(docs, args.val_docs, args.seed)
    # CaseOps: the tokenizer and train shards see encoded text; val is encoded while it is
    # written, next to the original bytes of each token.
    train_text = [caseops.encode(d) for d in train_docs] if args.caseops else train_docs
    model = train_tokenizer(train_text, args.vocab_size, caseops.OPERATORS if args.caseops else ())
    sp = spm.SentencePieceProcessor(model_proto=model)

    print(f"{dataset_dir.name}: {len(docs)} docs, {total_bytes:,} bytes of text")

    def write_shards(folder: Path) -> None:
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            writer = ShardWriter(folder, split, args.shard_tokens)
            if split == "val" and args.caseops:
                write_caseops_val(sp, split_docs, writer, ShardWriter(folder, "val_bytes", args.shard_tokens))
            else:
                write_split(sp, train_text if split == "train" else split_docs, writer)
            split_bytes = sum(len(d.encode("utf-8")) for d in split_docs)
            print(f"  {split:5s} docs={len(split_docs)} bytes={split_bytes} "
                  f"tokens={writer.total_tokens} shards={writer.shards}")

    write_outputs(dataset_dir, tokenizer_path, model, write_shards)
    print(f"  done in {time.time() - t0:.1f}s")
    print(f"DATA_PATH={dataset_dir} TOKENIZER_PATH={tokenizer_path} VOCAB_SIZE={v}")


def main(argv: list[str] | None = None) -> None:
    run_cli(build, argv)


if __name__ == "__main__":
    main()
