#!/usr/bin/env python3
"""Package Parameter Golf run logs into a submission folder, or re-check one.

Usage, from the repository root (where each run's DATA_PATH is):

    python3 records/package.py --name ShortName --logs logs/a.txt logs/b.txt logs/c.txt \\
        [--artifacts a.ptz b.ptz c.ptz] [--author NAME] [--github-id ID] [--date YYYY-MM-DD] \\
        [--script train_gpt.py] [--wrap none|lzma|brotli] [--source train_gpt.py] \\
        [--out-root records/track_10min_16mb] [--force] [--non-record] [--full-val-tokens N] \\
        [--rescore [--nproc N] [--rescore-env KEY=VALUE ...] [--rescore-tolerance 1e-6]]
    python3 records/package.py --check records/track_10min_16mb/2026-04-09_ShortName [--rescore ...]
    python3 records/package.py --make-wrapper run/train_gpt.py [--wrap brotli|lzma] [--force]
    python3 records/package.py --sizes [--script train_gpt.py]

Packaging writes `{out-root}/{date}_{ShortName}/` with train_gpt.py (as is, or as a small
self-extracting wrapper, then with the readable script beside it as train_gpt_readable.py), one
`train_seed{SEED}.log` and `artifact_seed{SEED}.ptz` per run, submission.json, a README.md
skeleton and requirements.txt, and nothing else. Every log and file is validated before anything
is written; a refusal is one line saying what is wrong and what to do. The new folder is then
re-checked exactly as `--check` does.

Nothing a log states is taken on trust: the score is re-read from the line of the last stage
that ran, the artifact size is code + model bytes, and the code bytes are recomputed from the
logged source. A log whose lines disagree (an edited score, stage or size, a repeated line, a
stage its settings enable but no line for, a val_bpb/val_loss ratio unlike the other stages')
is refused, so a hand-edited log can neither be packaged nor pass `--check`.

The files are the evidence: each run's artifact must have the size and SHA-256 its serialize
(or artifact_loaded) line recorded, and the train_gpt.py shipped the SHA-256 and bytes of its
`script` line (or be the packager's wrapper of exactly that file). Two seeds may not share a
training curve or an artifact, and must share their data: the `data` line's val_tokens, bytes,
caseops and tokenizer_sha256. A record must score the challenge's whole validation split: its
`data val_tokens:` must equal the token count of the fineweb_val_*.bin shards in its DATA_PATH
(found from the current directory), which must hold the challenge's 50,000 documents; where those
shards are absent, --full-val-tokens N gives the count. A record must also run on 8xH100 with
the 600 s clock; --non-record lifts that and the submission says so. `--rescore` re-runs
`EVAL_ONLY=1` of the shipped train_gpt.py on each shipped artifact with the run's own logged
settings and refuses a score that differs from the log's by more than --rescore-tolerance, and
rebuilds each run's initial model from its logged SEED to check its init_probe line. Without
--rescore nothing is run, so a log edited consistently throughout passes; no check retrains.
`--check` also refuses a folder holding a symbolic link or any file the packager does not write.

A wrapper (--make-wrapper, --wrap) is the readable script minified with python-minifier (the
version pinned in requirements.txt; only this tool imports it), compressed with lzma or brotli
and stored in a 7-bit string; it sets `_SOURCE_SHA256` to the readable script's SHA-256 and
`_WRAPPED_SOURCE` to the minified text and execs that with the wrapper's own `__file__`, so
train_gpt.py logs the text it runs, counts the wrapper's bytes as code and logs the readable
script's hash as `source_sha256`. Only that exact template is a wrapper: a file that changes any
byte of it outside the payload (an exec line that edits the source first, say) is refused, and
so is a wrapper whose payload is not minify(readable script) or whose `_SOURCE_SHA256` is not
that script's. `unwrap` reads the text a wrapper runs without executing anything. `--sizes`
prints the code bytes of the script as is, minified and as each wrapper; brotli's is the smaller
on train_gpt.py, so it is --make-wrapper's default.

An existing file is never overwritten unless the packager wrote it: a submission folder is
replaced only with --force and only if it holds nothing but the files listed above, and a
--make-wrapper PATH that exists is left alone when it already holds that wrapper, refused
otherwise, and replaced with --force (never a folder, a link or --script itself).

Exit status: 0 done; 2 refused: a log, file, folder or flag that fails a check, or a usage
error (one `error:` line saying what and what to do); 3 a tool is missing or not the pinned
version (python-minifier, brotli); 4 the output could not be written (disk full, permissions).
A traceback is a bug in this tool.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import functools
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SEPARATOR = "=" * 100
TRACK, NON_RECORD_TRACK = "10min_16mb", "non_record_16mb"
TRACK_WALLCLOCK_SECONDS = 600
TRACK_WALLCLOCK_MS = TRACK_WALLCLOCK_SECONDS * 1000
STAGE_ORDER = ("prequant", "roundtrip", "sliding", "ttt")  # the order train_gpt.py logs them
SCORED_STAGES = STAGE_ORDER[1:]  # run on the artifact; final_score is the last one that ran
STAGE_FIELDS = ("val_loss", "val_bpb", "eval_time")
ARTIFACT_FIELDS = ("code_bytes", "model_bytes", "total_bytes", "limit_bytes")
# A run writes each of these once; a second one means the log was edited or two were joined.
# serialize (training, EXPORT_ONLY) and artifact_loaded (EVAL_ONLY) name the artifact file.
ARTIFACT_FILE_TAGS = ("serialize", "artifact_loaded")
ONCE_TAGS = ("artifact", "final_score", *(f"final_{s}" for s in STAGE_ORDER), "script", "data",
             "init_probe", *ARTIFACT_FILE_TAGS)
# Seeds of one submission may differ only in these; anything else means a different run.
PER_RUN_HPARAMS = {"SEED", "RUN_ID", "DATA_PATH", "TOKENIZER_PATH", "NLL_DUMP_PATH", "ARTIFACT_PATH", "CHECKPOINT_PATH"}
# Always spelled out in the reproduction command when the script's default can't be found.
KEY_HPARAMS = (
    "VOCAB_SIZE NUM_LAYERS MODEL_DIM NUM_HEADS NUM_KV_HEADS MLP_MULT TRAIN_SEQ_LEN PROGRESSIVE_CONTEXT EVAL_SEQ_LEN "
    "TRAIN_BATCH_TOKENS LOOP_START LOOP_END NUM_LOOPS ENABLE_LOOPING_AT PASS_LORA_RANK "
    "PASS_LORA_TARGETS PASS_EMBED MATRIX_BITS EMBED_BITS COMPRESSOR EVAL_STRIDE TTT_ENABLED "
    "TTT_MODE TTT_EPOCHS TTT_LR TTT_CHUNK_TOKENS MAX_WALLCLOCK_SECONDS"
).split()
BPB_TOLERANCE = 5e-9  # values are stored with 8 decimals
# The challenge's validation split: the first 50,000 documents of its FineWeb export, each
# starting with BOS (id 1 in the challenge's tokenizers), in fineweb_val_*.bin shards of 256
# int32 header words (magic, version, token count) and uint16 tokens (train_gpt.py, DATA).
CHALLENGE_VAL_DOCS = 50_000
BOS_ID = 1
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4
RECORD_HARDWARE = re.compile(r"8x.*H100")  # run_info hardware:{world_size}x{device name}
# Rescoring: evaluation on one machine is deterministic (a tiny CPU run reproduces every printed
# digit), so a larger difference is an edit or another setting; 1e-6 bpb leaves room for the last
# digits of GPU reductions and is far below the seed-to-seed spread (~5e-4) and the 0.005-nat
# record margin. Another GPU type or world size can move it more: pass --rescore-tolerance.
RESCORE_TOLERANCE = 1e-6
# Logged settings not passed to the re-evaluation: it gets a fresh RUN_ID, the shipped artifact,
# EVAL_ONLY=1, and writes no checkpoint, export or NLL dump.
RESCORE_SKIP = {"RUN_ID", "ARTIFACT_PATH", "CHECKPOINT_PATH", "EVAL_ONLY", "EXPORT_ONLY",
                "NLL_DUMP_PATH"}
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT")


NOT_RESCORED = ("note: not rescored: the scores are as logged, checked for agreement only; --rescore "
                "re-evaluates each artifact and rebuilds each seed's initial model")


class PackageError(Exception):
    """A refusal; the message says what is wrong and what to do about it."""


# ---- LOG PARSING ----
# A log is the script's source, a line of 100 '=', then tagged lines (README.md, "Log-line
# contract"). Unknown lines and fields are ignored so the script can add some without breaking
# this.


@dataclass
class Score:
    """The final_score line as logged; check_score_lines checks it against its sources."""
    val_bpb: float
    stage: str
    total_bytes: int


@dataclass
class RunLog:
    name: str
    source: str
    run_info: dict[str, str] = field(default_factory=dict)
    hparams: dict[str, str] = field(default_factory=dict)
    finals: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> values
    score: Score | None = None
    artifact: dict[str, int] | None = None  # code_bytes, model_bytes, total_bytes, limit_bytes
    wallclock: dict[str, int] | None = None  # train_time, gptq_time, total, limit (all ms)
    over_limit_line: str | None = None
    val_tokens_limit_lines: int = 0
    stopped_early: bool = False
    script: dict | None = None  # the script line: path (file name), bytes, sha256, source_sha256
    artifact_file: dict | None = None  # serialize or artifact_loaded: tag, path, bytes, sha256
    val_tokens: int | None = None  # the data line: validation tokens loaded and scored
    byte_count: str = "tables"  # the data line: what bits per byte divided by (tables or sidecar)
    caseops: bool = False  # the data line: a CaseOps tokenizer
    data_path: str | None = None
    tokenizer_sha256: str | None = None  # the data line: the tokenizer file's SHA-256
    curve: list[tuple[str, str]] = field(default_factory=list)  # (step, train_loss) as logged
    init_probe: tuple[int, list[float]] | None = None  # the init_probe line: seed, values
    # Set by validate_runs: whether the run scored the challenge's whole validation split.
    full_split: bool | None = None
    # Where the checked lines are: tag -> (line number, line), for ONCE_TAGS, score_withheld
    # and each `hparam NAME` (keyed so).
    where: dict[str, tuple[int, str]] = field(default_factory=dict)

    def line(self, tag: str) -> str:
        """'line 57 of a.txt ('final_score ...')', to name an offending line in a refusal."""
        lineno, text = self.where[tag]
        return f"line {lineno} of {self.name} ({text!r})"

    @property
    def val_bpb(self) -> float:
        """The score, read from the scored stage's own line, never from final_score alone."""
        return self.finals[self.score.stage]["val_bpb"]

    @property
    def artifact_bytes(self) -> int:
        """Code plus model bytes of the artifact line (validate_runs checks the code bytes)."""
        return self.artifact["code_bytes"] + self.artifact["model_bytes"]

    @property
    def seed(self) -> int | None:
        value = self.hparams.get("SEED")
        return int(value) if value is not None and re.fullmatch(r"-?\d+", value) else None

    def number(self, key: str, default: float | None = None) -> float | None:
        """A numeric hyperparameter; a value that is not a number is a refusal, not a crash."""
        if key not in self.hparams:
            return default
        try:
            return float(self.hparams[key])
        except ValueError:
            raise PackageError(f"{self.name} has {key}={self.hparams[key]!r}, not a number; "
                               "pass a log written by train_gpt.py.") from None

    @property
    def val_tokens_limit(self) -> int:
        return int(self.number("VAL_TOKENS_LIMIT", 0))

    @property
    def max_wallclock_seconds(self) -> float | None:
        limit_ms = (self.wallclock or {}).get("limit")
        fallback = limit_ms / 1000 if limit_ms is not None else None
        return self.number("MAX_WALLCLOCK_SECONDS", fallback)


def _number(text: str) -> float:
    return float(re.sub(r"[A-Za-z]+$", "", text))  # "588000ms" -> 588000.0


def _pairs(rest: str) -> dict[str, str]:
    """`key:value` pairs; a value runs until the next ` key:` (hardware names hold spaces)."""
    return {m[1]: m[2] for m in re.finditer(r"(\w+):(.*?)(?=\s+\w+:|\s*$)", rest)}


def _file_fields(rest: str, tag: str) -> dict | None:
    """tag, path, bytes and sha256 of a script, serialize or artifact_loaded line (and a script
    line's source_sha256: the readable source's, see the wrapper); None when it has no path and
    sha256 (an older train_gpt.py wrote it)."""
    p = _pairs(rest)
    if "sha256" not in p or "path" not in p:
        return None
    fields = {"tag": tag, "path": p["path"], "bytes": int(p["bytes"]), "sha256": p["sha256"]}
    if "source_sha256" in p:
        fields["source_sha256"] = p["source_sha256"]
    for key in ("sha256", "source_sha256"):
        if key in fields and not re.fullmatch(r"[0-9a-f]{64}", fields[key]):
            raise ValueError(f"{key}:{fields[key]} is not 64 hex digits")
    return fields


def parse_log(text: str, name: str = "log") -> RunLog:
    """Parse one run log; raises PackageError naming `name` if it is not in the contract."""
    lines = text.splitlines(keepends=True)
    sep = next((i for i, line in enumerate(lines) if line.rstrip("\r\n") == SEPARATOR), None)
    if sep is None:
        raise PackageError(f"{name} has no line of 100 '=' after the script source; "
                           "pass the logs/{RUN_ID}.txt file that train_gpt.py wrote.")
    run = RunLog(name=name, source="".join(lines[:sep]))
    for lineno, line in enumerate(lines[sep + 1:], start=sep + 2):
        tag, _, rest = line.strip().partition(" ")
        if tag in ONCE_TAGS and tag in run.where:
            raise PackageError(f"line {lineno} of {name} ({line.strip()!r}) is a second {tag} "
                               f"line (the first is line {run.where[tag][0]}), but a run writes "
                               "it once, so the log was edited or two logs were joined; package "
                               "the log exactly as train_gpt.py wrote it.")
        if tag in ONCE_TAGS or tag == "score_withheld":
            run.where.setdefault(tag, (lineno, line.strip()))
        try:
            if tag == "run_info":
                run.run_info.update(_pairs(rest))
            elif tag == "hparam" and "=" in rest:
                key, _, value = rest.partition("=")
                run.hparams[key.strip()] = value.strip()
                run.where[f"hparam {key.strip()}"] = (lineno, line.strip())
            elif tag == "script" or tag in ARTIFACT_FILE_TAGS:
                fields = _file_fields(rest, tag)
                if fields is None:
                    raise PackageError(f"line {lineno} of {name} ({line.strip()!r}) has no path: "
                                       "and sha256: fields, so an older train_gpt.py wrote it and "
                                       "the file it measured cannot be checked; package a log of "
                                       "the current train_gpt.py.")
                if tag == "script":
                    run.script = fields
                else:
                    run.artifact_file = fields
            elif tag == "data":
                p = _pairs(rest)
                run.val_tokens, run.data_path = int(p["val_tokens"]), p.get("data_path")
                run.byte_count, run.caseops = p.get("bytes", "tables"), p.get("caseops", "0") == "1"
                run.tokenizer_sha256 = p.get("tokenizer_sha256")
            elif tag.startswith("step:") and "train_loss:" in rest:
                run.curve.append((tag.removeprefix("step:"), _pairs(rest)["train_loss"]))
            elif tag in {f"final_{s}" for s in STAGE_ORDER}:
                values = {k: _number(v) for k, v in _pairs(rest).items() if k in STAGE_FIELDS}
                if "val_bpb" not in values:
                    raise KeyError("val_bpb")
                run.finals[tag.removeprefix("final_")] = values
            elif tag == "final_score":
                p = _pairs(rest)
                run.score = Score(float(p["val_bpb"]), p["stage"], int(p["total_bytes"]))
            elif tag == "artifact":
                p = _pairs(rest)
                run.artifact = {k: int(p[k]) for k in ARTIFACT_FIELDS}
            elif tag == "wallclock":
                run.wallclock = {k: int(_number(v)) for k, v in _pairs(rest).items()}
            elif tag == "init_probe":
                p = _pairs(rest)
                run.init_probe = (int(p["seed"]), [float(v) for v in p["values"].split(",")])
            elif tag == "artifact_over_limit":
                run.over_limit_line = line.strip()
            elif tag == "val_tokens_limit":
                run.val_tokens_limit_lines += 1
            elif tag == "stopping_early:":
                run.stopped_early = True
        except (KeyError, ValueError) as exc:
            raise PackageError(f"line {lineno} of {name} is malformed ({exc!r}): {line.strip()!r}; "
                               "was the log edited or truncated?") from None
    return run


def read_log(path: Path) -> RunLog:
    try:
        return parse_log(path.read_text(encoding="utf-8"), name=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"cannot read log {path} ({exc}); check the path.") from None


# ---- SELF-EXTRACTING WRAPPER ----
# A wrapper runs the readable script minified: python-minifier (pinned: another version minifies
# differently, so the packager could no longer rebuild what ran), then lzma or brotli, then a
# dense 7-bit text encoding. It names the readable script's SHA-256 in _SOURCE_SHA256 and the text
# it runs in _WRAPPED_SOURCE, which train_gpt.py logs instead of its own file (script_source and
# start_log there). Only this exact template is accepted as a wrapper: a file that changes any
# byte of it outside the payload (say an exec line that edits the source first) is refused.

MINIFIER_VERSION = "3.4.0"  # requirements.txt pins the same version
WRAP_METHODS = ("lzma", "brotli")
RECOMMENDED_WRAP = "brotli"  # the smaller wrapper of train_gpt.py (--sizes measures both)
READABLE_NAME = "train_gpt_readable.py"  # beside a wrapper in a submission folder
# PR #2135's counted code (python-minifier, lzma, base85 of its 191 KB script), the leaderboard's
# smallest at the time; --sizes compares against it.
REFERENCE_CODE_BYTES = 37_155
MAX_SOURCE_BYTES = 64 << 20  # a payload that inflates past this is refused, not decompressed
# The minifier's options, all spelled out so its defaults can never change them. Each transform
# must leave train_gpt.py's behaviour alone:
MINIFY_OPTIONS = {
    "remove_literal_statements": True,  # docstrings: train_gpt.py never reads __doc__ (tested)
    "rename_globals": True,  # nothing looks a global up by name: the init probe imports the readable script
    "rename_locals": True,  # keyword arguments keep their names; python-minifier renames
                            # nothing at all in a module that calls globals(), locals() or exec
    "hoist_literals": False,  # names for repeated strings compress worse than the strings do
    "remove_asserts": False,
    "remove_debug": False,
    "combine_imports": True,
    "remove_pass": True,
    "remove_object_base": True,
    "convert_posargs_to_args": True,
    "preserve_shebang": True,
    "remove_explicit_return_none": True,
    "remove_builtin_exception_brackets": True,
    "constant_folding": True,
    "prefer_single_line": False,
    "remove_dead_branches": True,
}
# The payload's encoding: every ASCII byte that can stand in a b"..." literal (all but NUL, LF,
# CR, '"' and '\'), 123 digits, so 15 of them hold 13 bytes (123**15 >= 256**13): 15.4% larger
# than the compressed bytes, against base85's 25%.
DIGITS = bytes(c for c in range(1, 128) if c not in b'\n\r"\\')
BLOCK_CHARS, BLOCK_BYTES = 15, 13
WRAPPER_TEMPLATE = (
    "import {method} as L\n"
    '_SOURCE_SHA256="{sha256}"\n'
    'D=b"{digits}"\n'
    "b=bytearray()\n"
    "for i in range(0,len(D),15):\n"
    " n=0\n"
    " for c in D[i:i+15]:n=n*123+c-(c>10)-(c>13)-(c>34)-(c>92)-1\n"  # c's index in DIGITS
    ' b+=n.to_bytes(13,"big")\n'
    "_WRAPPED_SOURCE=L.decompress(b[:{size}]).decode()\n"
    'exec(compile(_WRAPPED_SOURCE,__file__,"exec"))\n'
)
_FIELD_PATTERNS = {"method": "(?P<method>lzma|brotli)", "sha256": "(?P<sha256>[0-9a-f]{64})",
                   "digits": '(?P<digits>[^\\x00\\n\\r"\\\\\\x80-\\U0010ffff]*)',
                   "size": "(?P<size>[1-9][0-9]*)"}
_WRAPPER_LINES = [re.compile("".join(_FIELD_PATTERNS[p[1:-1]] if p.startswith("{") else re.escape(p)
                                     for p in re.split(r"(\{\w+\})", line)))
                  for line in WRAPPER_TEMPLATE.splitlines()]


class ToolError(Exception):
    """A tool the command needs is missing or not the pinned version (exit status 3)."""


def _minifier():
    try:
        import python_minifier
        from importlib.metadata import version
        installed = version("python-minifier")
    except ImportError:
        raise ToolError(f"python-minifier is not installed, and wrappers are minified with it; "
                        f"pip install python-minifier=={MINIFIER_VERSION} (requirements.txt)") from None
    if installed != MINIFIER_VERSION:
        raise ToolError(f"python-minifier {installed} is installed, but wrappers are made with "
                        f"{MINIFIER_VERSION} (another version minifies differently); pip install "
                        f"python-minifier=={MINIFIER_VERSION} (requirements.txt)")
    return python_minifier


@functools.lru_cache(maxsize=8)
def minify(source: str) -> str:
    """What a wrapper of `source` runs: `source` through python-minifier with MINIFY_OPTIONS."""
    pm = _minifier()
    options = dict(MINIFY_OPTIONS, remove_annotations=pm.RemoveAnnotationsOptions(
        remove_variable_annotations=True, remove_return_annotations=True,
        remove_argument_annotations=True,
        remove_class_attribute_annotations=False))  # dataclass fields are class annotations
    # Under Python 3.12+ python-minifier writes f-strings with PEP 701's nested quotes, which do
    # not parse before 3.12 and differ byte for byte from what it writes under 3.10 or 3.11.
    # Printing them the older way makes the minified text the same on every Python (so any
    # machine can rebuild and check a wrapper) and runnable on all of them.
    from python_minifier import expression_printer, f_string
    printer = expression_printer.ExpressionPrinter
    original = printer.visit_JoinedStr

    def visit_joined_str(self, node):
        self.printer.fstring(str(f_string.OuterFString(node, pep701=False)))
    printer.visit_JoinedStr = visit_joined_str
    try:
        return pm.minify(source, **options)
    except SyntaxError as exc:
        raise PackageError(f"the script does not parse as Python (line {exc.lineno}: {exc.msg}), "
                           "so it cannot be minified; pass the train_gpt.py the runs ran.") from None
    finally:
        printer.visit_JoinedStr = original


def _compress(data: bytes, method: str) -> bytes:
    if method == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    if method == "brotli":
        try:
            import brotli
        except ImportError:
            raise ToolError("brotli is not installed; pip install -r requirements.txt, or pass "
                            "--wrap lzma") from None
        return brotli.compress(data, quality=11)
    raise ValueError(f"unknown wrap method {method!r}; use lzma or brotli")


def _decompress(blob: bytes, method: str) -> bytes:
    """The one stream in `blob`, at most MAX_SOURCE_BYTES; ValueError for anything else
    (a second stream after it included: lzma.decompress would run that too)."""
    try:
        if method == "lzma":
            decoder = lzma.LZMADecompressor()
            out = decoder.decompress(blob, max_length=MAX_SOURCE_BYTES + 1)
            finished = decoder.eof and not decoder.unused_data
        else:
            import brotli  # a wrapper that names brotli runs only where it is installed
            decoder = brotli.Decompressor()
            out = decoder.process(blob, output_buffer_limit=MAX_SOURCE_BYTES + 1)
            finished = decoder.is_finished()
    except ImportError:
        raise ToolError("brotli is not installed, and the wrapper is compressed with it; "
                        "pip install -r requirements.txt") from None
    except Exception as exc:  # lzma.LZMAError, brotli.error: the payload is not one stream
        raise ValueError(f"its payload does not {method}-decompress ({exc})") from None
    if not finished or len(out) > MAX_SOURCE_BYTES:
        raise ValueError(f"its payload is not one complete {method} stream of at most "
                         f"{MAX_SOURCE_BYTES} bytes")
    return out


def _encode(blob: bytes) -> str:
    blob += bytes(-len(blob) % BLOCK_BYTES)  # zeros; the wrapper slices them off
    out = bytearray()
    for i in range(0, len(blob), BLOCK_BYTES):
        n, block = int.from_bytes(blob[i:i + BLOCK_BYTES], "big"), bytearray(BLOCK_CHARS)
        for j in reversed(range(BLOCK_CHARS)):
            n, block[j] = divmod(n, len(DIGITS))
        out += block.translate(DIGITS.ljust(256, b"\0"))
    return out.decode("ascii")


def _decode(digits: str, size: int) -> bytes:
    """The inverse of _encode, as the wrapper computes it; ValueError where the wrapper would
    fail or where _encode could not have written `digits`."""
    index = {c: i for i, c in enumerate(DIGITS)}
    data, out = digits.encode("ascii"), bytearray()
    if len(data) % BLOCK_CHARS:
        raise ValueError(f"its payload has {len(data)} digits, not a multiple of {BLOCK_CHARS}")
    for i in range(0, len(data), BLOCK_CHARS):
        n = 0
        for c in data[i:i + BLOCK_CHARS]:
            n = n * len(DIGITS) + index[c]
        if n >= 256 ** BLOCK_BYTES:
            raise ValueError(f"its payload's block at digit {i} overflows {BLOCK_BYTES} bytes")
        out += n.to_bytes(BLOCK_BYTES, "big")
    if not len(out) - BLOCK_BYTES < size <= len(out) or any(out[size:]):
        raise ValueError(f"its size {size} does not fit its {len(data)} payload digits")
    return bytes(out[:size])


def wrap_minified(minified: str, source_sha256: str, method: str) -> str:
    """The wrapper that runs `minified` and names `source_sha256` as its readable source's."""
    blob = _compress(minified.encode("utf-8"), method)
    return WRAPPER_TEMPLATE.format(method=method, sha256=source_sha256, digits=_encode(blob),
                                   size=len(blob))


def make_wrapper(source: str, method: str) -> str:
    """The wrapper of the readable script `source`; `none` is the script itself."""
    if method == "none":
        return source
    if method not in WRAP_METHODS:
        raise ValueError(f"unknown wrap method {method!r}; use none, lzma or brotli")
    return wrap_minified(minify(source), _sha256_text(source), method)


@dataclass
class Wrapper:
    """A wrapper's fields: its compressor, the readable source's SHA-256 and the text it runs."""
    method: str
    source_sha256: str
    source: str


def template_mismatch(text: str) -> int | None:
    """The first line of `text` that the wrapper template does not allow (past the end counts),
    or None when every line fits it."""
    lines = text.split("\n")
    expected = len(_WRAPPER_LINES) + 1  # the last line ends with "\n": an empty tail
    for number, line in enumerate(lines[:expected], start=1):
        pattern = _WRAPPER_LINES[number - 1] if number <= len(_WRAPPER_LINES) else re.compile("")
        if not pattern.fullmatch(line):
            return number
    return None if len(lines) == expected else min(len(lines), expected)


def parse_wrapper(text: str) -> Wrapper:
    """The fields of a wrapper, read (never executed) from its text; ValueError unless `text` is
    byte for byte WRAPPER_TEMPLATE around a payload that decodes to one compressed stream."""
    line = template_mismatch(text)
    if line is not None:
        raise ValueError(f"it is not the packager's wrapper: its line {line} differs from the "
                         "template in records/package.py")
    fields = {}
    for pattern, part in zip(_WRAPPER_LINES, text.split("\n")):
        fields.update(pattern.fullmatch(part).groupdict())
    if WRAPPER_TEMPLATE.format(**fields) != text:  # cannot happen; keeps parse and format in step
        raise ValueError("it is not the packager's wrapper")
    blob = _decode(fields["digits"], int(fields["size"]))
    try:
        source = _decompress(blob, fields["method"]).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("its payload is not UTF-8 text") from None
    return Wrapper(fields["method"], fields["sha256"], source)


def looks_like_wrapper(text: str) -> bool:
    """Starts like the template: a file meant as a wrapper, canonical or not."""
    return text.startswith(("import lzma as L\n", "import brotli as L\n"))


def is_wrapper(text: str) -> bool:
    try:
        parse_wrapper(text)
        return True
    except ValueError:
        return False


def unwrap(text: str) -> str:
    """The text a wrapper runs (the minified source), found without executing anything."""
    return parse_wrapper(text).source


def script_source(text: str) -> str:
    """What a script runs: a wrapper's minified source, or the script itself."""
    return unwrap(text) if looks_like_wrapper(text) and is_wrapper(text) else text


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _first_difference(a: str, b: str) -> int:
    a_lines, b_lines = a.rstrip("\n").split("\n"), b.rstrip("\n").split("\n")
    for i, (x, y) in enumerate(zip(a_lines, b_lines), start=1):
        if x != y:
            return i
    return min(len(a_lines), len(b_lines)) + 1


def same_source(a: str, b: str) -> bool:
    # The log may or may not hold a blank line before the separator; nothing else may differ.
    return a.rstrip("\n") == b.rstrip("\n")


# ---- VALIDATION ----


def validate_runs(runs: list[RunLog], non_record: bool, full_val_tokens: int | None = None) -> None:
    """Refuse anything that must not become a submission; raises PackageError. Sets each run's
    full_split. Reads no file but the validation shards (see full_split)."""
    for run in runs:
        n = run.name
        art = run.artifact or {}
        limit = art.get("limit_bytes", 10**18)
        sizes = [art.get("total_bytes", 0), art.get("code_bytes", 0) + art.get("model_bytes", 0),
                 run.score.total_bytes if run.score else 0]
        if run.over_limit_line or max(sizes) > limit:
            raise PackageError(f"{n} has an artifact over the size limit "
                               f"({run.over_limit_line or art}); shrink the model or code "
                               "(e.g. fewer bits, --wrap lzma) and rerun.")
        if run.score is None:
            raise PackageError(f"{n} has no final_score line (the run crashed or was cut "
                               "short); package only runs that finished evaluation.")
        check_score_lines(run)
        check_evidence_lines(run)
        if run.caseops and run.byte_count != "sidecar":
            raise PackageError(f"{n} used a CaseOps tokenizer but divided by its lookup-table bytes "
                               f"(bytes:{run.byte_count} on its data line), which count the case "
                               "operators as text; rerun on data with its byte sidecars "
                               "(fineweb_val_bytes_*.bin).")
        if run.seed is None:
            raise PackageError(f"{n} has no integer 'hparam SEED=' line; "
                               "pass a log written by train_gpt.py.")
        for key in ("hardware", "torch"):
            if key not in run.run_info:
                raise PackageError(f"{n} has no run_info {key}: field; "
                                   "pass a log written by train_gpt.py.")
        wc, cap = run.wallclock, run.max_wallclock_seconds
        if wc and wc.get("limit", 0) > 0 and wc.get("total", 0) > wc["limit"]:
            raise PackageError(f"{n} trained for {wc['total']}ms, over its {wc['limit']}ms "
                               "wall-clock cap; rerun with a larger GPTQ reserve or fewer steps.")
        run.full_split, why_not = full_split(run, full_val_tokens)
        if run.full_split is None:
            raise PackageError(f"cannot tell whether {n} scored the whole validation split: "
                               f"{why_not}; run the packager where the run's DATA_PATH is, or pass "
                               "--full-val-tokens with the full split's token count.")
        if non_record:
            continue
        # Everything that makes a finished run no record, in one sentence.
        problems = []
        if run.val_tokens_limit > 0 or run.val_tokens_limit_lines:
            problems.append(f"it scored only a prefix of the validation split (VAL_TOKENS_LIMIT="
                            f"{run.val_tokens_limit}; rerun with VAL_TOKENS_LIMIT=0)")
        elif not run.full_split:
            problems.append(why_not)
        hardware = run.run_info["hardware"]
        if not RECORD_HARDWARE.match(hardware):
            problems.append(f"it ran on hardware {hardware!r}, not 8xH100")
        if cap is None or not 0 < cap <= TRACK_WALLCLOCK_SECONDS:
            shown = run.hparams.get("MAX_WALLCLOCK_SECONDS", cap)
            problems.append(f"it ran with MAX_WALLCLOCK_SECONDS={shown}, which is not a "
                            f"{TRACK_WALLCLOCK_SECONDS}s-track run (rerun with MAX_WALLCLOCK_"
                            f"SECONDS<={TRACK_WALLCLOCK_SECONDS})")
        if problems:
            raise PackageError(f"{n} is not a {TRACK} record: {'; '.join(problems)}; fix that, "
                               "or pass --non-record to package it as a non-record submission.")
        if not wc or "total" not in wc or not 0 < wc.get("limit", 0) <= TRACK_WALLCLOCK_MS:
            raise PackageError(f"{n} has no complete 'wallclock ... total: limit:' line, so its "
                               "training time cannot be checked; pass a log from a finished run.")

    first = runs[0]
    differing = [r for r in runs[1:] if not same_source(r.source, first.source)]
    if differing:
        where = ", ".join(f"{r.name} (from line {_first_difference(first.source, r.source)})"
                          for r in differing)
        raise PackageError(f"the script source in {where} differs from {first.name}; "
                           "package only runs of one and the same train_gpt.py.")
    for run in runs[1:]:
        differ = [f"{key}:{mine} against {theirs}" for key, mine, theirs in (
            ("val_tokens", run.val_tokens, first.val_tokens),
            ("bytes", run.byte_count, first.byte_count),
            ("caseops", int(run.caseops), int(first.caseops)),
            ("tokenizer_sha256", run.tokenizer_sha256, first.tokenizer_sha256)) if mine != theirs]
        if differ:
            raise PackageError(f"{run.line('data')} differs from the data line of {first.name} "
                               f"(line {first.where['data'][0]}) in {', '.join(differ)}, so the "
                               "seeds scored other data or another tokenizer; package seeds run "
                               "on the same data and tokenizer.")
    seen: dict[int, str] = {}
    for run in runs:
        if run.seed in seen:
            raise PackageError(f"{run.name} and {seen[run.seed]} both used SEED={run.seed}; "
                               "pass one log per seed.")
        seen[run.seed] = run.name
    for i, run in enumerate(runs):
        for other in runs[:i]:
            if run.curve and run.curve == other.curve:
                raise PackageError(f"{run.name} (SEED={run.seed}) and {other.name} (SEED="
                                   f"{other.seed}) log the same training curve ({len(run.curve)} "
                                   "step: train_loss: values), but different seeds train "
                                   "differently, so one is a copy of the other with its SEED "
                                   "edited; package one log per run that was trained.")
            if run.artifact_file["sha256"] == other.artifact_file["sha256"]:
                raise PackageError(f"{run.name} (SEED={run.seed}) and {other.name} (SEED="
                                   f"{other.seed}) name the same artifact (sha256:"
                                   f"{run.artifact_file['sha256']}), but one model is not two "
                                   "seeds' result; package one log per run that was trained.")
    for key, label in (("hardware", "hardware"), ("torch", "torch version")):
        for run in runs[1:]:
            if run.run_info[key] != first.run_info[key]:
                raise PackageError(f"{run.name} ran on {label} {run.run_info[key]!r} but "
                                   f"{first.name} on {first.run_info[key]!r}; package runs "
                                   "from one environment.")
    for run in runs[1:]:
        for key in sorted((set(run.hparams) | set(first.hparams)) - PER_RUN_HPARAMS):
            if run.hparams.get(key) != first.hparams.get(key):
                raise PackageError(f"{run.name} has {key}={run.hparams.get(key)} but {first.name} "
                                   f"has {key}={first.hparams.get(key)}; seeds must differ only "
                                   "in SEED.")


def _local(path: str) -> Path:
    """A path a log names, as seen from here: relative ones from the current directory, where
    the runs ran when the packager runs from the repository root."""
    return Path(path) if Path(path).is_absolute() else Path.cwd() / path


@functools.lru_cache(maxsize=8)
def val_shards(folder: str) -> tuple[int, int, int] | None:
    """(tokens, documents, shards) of the fineweb_val_*.bin shards in `folder`: tokens from the
    headers, documents by counting BOS tokens. None if there are none."""
    paths = sorted(Path(folder).glob("fineweb_val_[0-9]*.bin"))  # not the byte sidecars fineweb_val_bytes_*
    if not paths:
        return None
    tokens = documents = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PackageError(f"cannot read validation shard {path} ({exc}); check the "
                               "DATA_PATH folder.") from None
        magic, version, count = struct.unpack_from("<3i", data) if len(data) >= 12 else (0, 0, 0)
        if (magic, version) != (SHARD_MAGIC, SHARD_VERSION) or (
                len(data) != SHARD_HEADER_BYTES + 2 * count):
            raise PackageError(f"{path} is not a whole challenge shard (magic {magic}, version "
                               f"{version}, {count} tokens in a {len(data)}-byte file); "
                               "re-download or rebuild the validation shards.")
        tokens += count
        documents += _count_bos(memoryview(data)[SHARD_HEADER_BYTES:])
    return tokens, documents, len(paths)


def _count_bos(tokens: memoryview) -> int:
    """How many little-endian uint16 tokens equal BOS_ID (numpy when installed: 40M tokens)."""
    try:
        import numpy as np
        return int(np.count_nonzero(np.frombuffer(tokens, dtype="<u2") == BOS_ID))
    except ImportError:
        import array
        ids = array.array("H", tokens)
        if sys.byteorder == "big":
            ids.byteswap()
        return ids.count(BOS_ID)


def full_split(run: RunLog, full_val_tokens: int | None) -> tuple[bool | None, str]:
    """Whether `run` scored the challenge's whole validation split, and if not why (a clause
    for a refusal); None when that cannot be told here. The full split's size comes from the
    shards in the run's DATA_PATH when they are here (then they must hold the challenge's
    documents), else from --full-val-tokens."""
    if run.val_tokens_limit > 0 or run.val_tokens_limit_lines:
        return False, f"it scored a VAL_TOKENS_LIMIT={run.val_tokens_limit} prefix"
    logged = run.data_path or run.hparams.get("DATA_PATH", "")
    folder = _local(logged) if logged else None
    shards = val_shards(str(folder)) if folder is not None and folder.is_dir() else None
    data_line = f"line {run.where['data'][0]} of {run.name}"
    if shards is not None:
        tokens, documents, count = shards
        if full_val_tokens is not None and full_val_tokens != tokens:
            raise PackageError(f"--full-val-tokens {full_val_tokens} disagrees with the {tokens} "
                               f"tokens of the {count} fineweb_val_*.bin shard(s) in {folder}; "
                               "drop --full-val-tokens (the shards are the split).")
        if run.val_tokens != tokens:
            return False, (f"it scored {run.val_tokens} validation tokens ({data_line}), but the "
                           f"{count} fineweb_val_*.bin shard(s) in {folder} hold {tokens}")
        if documents != CHALLENGE_VAL_DOCS:
            return False, (f"its validation shards in {folder} hold {documents} documents, not "
                           f"the challenge's {CHALLENGE_VAL_DOCS}, so they are not its "
                           "validation split")
        return True, ""
    if full_val_tokens is not None:
        if run.val_tokens != full_val_tokens:
            return False, (f"it scored {run.val_tokens} validation tokens ({data_line}), not the "
                           f"full split's {full_val_tokens} (--full-val-tokens)")
        return True, ""
    return None, f"no fineweb_val_*.bin shards are in {folder or 'its DATA_PATH'} here"


EDITED = "so the log was edited; package the log exactly as train_gpt.py wrote it."


def check_score_lines(run: RunLog) -> None:
    """Recompute the score and the artifact size from the lines that measured them and refuse
    a final_score (or artifact line) that disagrees: the score is the last stage that ran,
    never the best one, and total_bytes is code_bytes + model_bytes."""
    if "score_withheld" in run.where:
        raise PackageError(f"{run.line('final_score')} comes with a score_withheld line "
                           f"(line {run.where['score_withheld'][0]}), but a run that withholds "
                           f"its score writes no final_score, {EDITED}")
    stages = [s for s in STAGE_ORDER if f"final_{s}" in run.where]
    for before, after in zip(stages, stages[1:]):
        if run.where[f"final_{after}"][0] < run.where[f"final_{before}"][0]:
            raise PackageError(f"{run.line(f'final_{after}')} comes before final_{before} (line "
                               f"{run.where[f'final_{before}'][0]}), but train_gpt.py evaluates "
                               f"in the order {', '.join(STAGE_ORDER)}, {EDITED}")
    scored = [s for s in stages if s in SCORED_STAGES]
    if not scored:
        raise PackageError(f"{run.line('final_score')} has no final_roundtrip, final_sliding or "
                           "final_ttt line to come from; package a complete log.")
    last, score = scored[-1], run.score
    if score.stage != last:
        raise PackageError(f"{run.line('final_score')} names stage:{score.stage}, but the last "
                           f"stage that ran is {last} (final_{last} on line "
                           f"{run.where[f'final_{last}'][0]}) and the score is always the last "
                           f"stage, never the best one, {EDITED}")
    if run.where["final_score"][0] < run.where[f"final_{last}"][0]:
        raise PackageError(f"{run.line('final_score')} comes before the final_{last} line it "
                           f"reports (line {run.where[f'final_{last}'][0]}), {EDITED}")
    # Both lines print val_bpb with 8 decimals: compare at that precision.
    if f"{score.val_bpb:.8f}" != f"{run.finals[last]['val_bpb']:.8f}":
        raise PackageError(f"{run.line('final_score')} does not match final_{last} "
                           f"val_bpb:{run.finals[last]['val_bpb']:.8f} on line "
                           f"{run.where[f'final_{last}'][0]}, {EDITED}")
    art = run.artifact
    if art is None:
        raise PackageError(f"{run.line('final_score')} has no artifact line to check its "
                           "total_bytes against; package a complete log.")
    if art["total_bytes"] != run.artifact_bytes:
        raise PackageError(f"{run.line('artifact')} has total_bytes:{art['total_bytes']}, not "
                           f"code_bytes + model_bytes = {run.artifact_bytes}, {EDITED}")
    if score.total_bytes != art["total_bytes"]:
        raise PackageError(f"{run.line('final_score')} has total_bytes:{score.total_bytes}, but "
                           f"the artifact line (line {run.where['artifact'][0]}) measured "
                           f"{art['total_bytes']}, {EDITED}")


def check_evidence_lines(run: RunLog) -> None:
    """The lines naming the files behind the score must be there and agree with the artifact
    line, and the stage lines must be the ones the logged settings evaluate, each scoring the
    same tokens: an edit that keeps final_score and its stage line consistent still shows."""
    n, art = run.name, run.artifact
    if run.script is None:
        raise PackageError(f"{n} has no 'script path: bytes: sha256:' line, so the script it ran "
                           "cannot be checked; package a log of the current train_gpt.py.")
    if "source_sha256" not in run.script:
        raise PackageError(f"{run.line('script')} has no source_sha256: field, so an older "
                           "train_gpt.py wrote it and the readable source behind the file run "
                           "cannot be checked; package a log of the current train_gpt.py.")
    if run.script["bytes"] != art["code_bytes"]:
        raise PackageError(f"{run.line('script')} has bytes:{run.script['bytes']}, but the "
                           f"artifact line (line {run.where['artifact'][0]}) counts code_bytes:"
                           f"{art['code_bytes']} of the same file, {EDITED}")
    tags = [t for t in ARTIFACT_FILE_TAGS if t in run.where]
    if not tags:
        raise PackageError(f"{n} has no serialize or artifact_loaded line naming the artifact "
                           "and its sha256, so the artifact cannot be checked; package a log of "
                           "the current train_gpt.py.")
    if len(tags) > 1:
        raise PackageError(f"{run.line(tags[1])} loads an artifact, but line "
                           f"{run.where[tags[0]][0]} says the run wrote one, and a run does one "
                           f"or the other, {EDITED}")
    blob = run.artifact_file
    if blob["bytes"] != art["model_bytes"]:
        raise PackageError(f"{run.line(blob['tag'])} has bytes:{blob['bytes']}, but the artifact "
                           f"line (line {run.where['artifact'][0]}) counts model_bytes:"
                           f"{art['model_bytes']} of the same file, {EDITED}")
    if run.val_tokens is None:
        raise PackageError(f"{n} has no 'data val_tokens:' line, so the number of validation "
                           "tokens scored cannot be checked; package a log of the current "
                           "train_gpt.py.")
    if run.tokenizer_sha256 is None:
        raise PackageError(f"{run.line('data')} has no tokenizer_sha256: field, so an older "
                           "train_gpt.py wrote it and the seeds' tokenizers cannot be compared; "
                           "package a log of the current train_gpt.py.")
    for stage, key in (("sliding", "SLIDING_ENABLED"), ("ttt", "TTT_ENABLED")):
        if key not in run.hparams:
            continue
        on, logged = _on(run.hparams[key]), f"final_{stage}" in run.where
        if on and not logged:
            raise PackageError(f"{run.line(f'hparam {key}')} switches the {stage} stage on, but "
                               f"there is no final_{stage} line, and a run that scores evaluates "
                               f"every stage it enables, {EDITED}")
        if logged and not on:
            raise PackageError(f"{run.line(f'final_{stage}')} comes from a stage that line "
                               f"{run.where[f'hparam {key}'][0]} ({key}={run.hparams[key]}) "
                               f"switches off, {EDITED}")
    # Every stage scores each validation target once, so val_bpb / val_loss = tokens / bytes /
    # ln 2 is the same on every final_* line, up to their 8-decimal rounding.
    stages = [s for s in STAGE_ORDER if "val_loss" in run.finals.get(s, {})]
    if not stages:
        return
    first = run.finals[stages[0]]
    for stage in stages:
        loss, bpb = run.finals[stage]["val_loss"], run.finals[stage]["val_bpb"]
        if loss <= 0 or bpb <= 0:
            raise PackageError(f"{run.line(f'final_{stage}')} has a loss that is not positive, "
                               f"{EDITED}")
        ratio, first_ratio = bpb / loss, first["val_bpb"] / first["val_loss"]
        slack = BPB_TOLERANCE * (1 / loss + 1 / bpb + 1 / first["val_loss"] + 1 / first["val_bpb"])
        if abs(ratio / first_ratio - 1) > slack + 1e-12:
            raise PackageError(f"{run.line(f'final_{stage}')} has val_bpb/val_loss {ratio:.9f}, "
                               f"but final_{stages[0]} (line {run.where[f'final_{stages[0]}'][0]}) "
                               f"has {first_ratio:.9f}, and the ratio is the same on every line "
                               f"because every stage scores the same tokens and bytes, {EDITED}")


def ran_wrapper(run: RunLog) -> bool:
    """Whether the run ran a wrapper: it then logs the readable source's SHA-256 beside its own."""
    return run.script["sha256"] != run.script["source_sha256"]


def check_script(readable: str, script_name: str, runs: list[RunLog]) -> None:
    """`readable` must be the source the runs logged, or (for runs of a wrapper) the script whose
    SHA-256 they logged as source_sha256 and whose minified text they logged."""
    run = runs[0]
    if same_source(readable, run.source):
        return
    if ran_wrapper(run):
        digest = _sha256_text(readable)
        if digest != run.script["source_sha256"]:
            raise PackageError(f"{script_name} (sha256 {digest}) is not the readable script of the "
                               f"wrapper {run.name} ran ({run.line('script')} names its "
                               f"source_sha256:{run.script['source_sha256']}); pass the "
                               "train_gpt.py the wrapper was made of.")
        minified = minify(readable)
        if not same_source(minified, run.source):
            line = _first_difference(run.source, minified)
            raise PackageError(f"{script_name} minified with python-minifier {MINIFIER_VERSION} "
                               f"differs from the source recorded in {run.name} (from line "
                               f"{line}), so the wrapper run was not made of it by this packager; "
                               "rebuild the wrapper with --make-wrapper and rerun.")
        return
    line = _first_difference(run.source, readable)
    raise PackageError(f"{script_name} differs from the source recorded in {run.name} "
                       f"(from line {line}); pass --script with the file that produced "
                       "the logs.")


def logged_settings(run: RunLog) -> dict[str, str]:
    """The run's hparam lines as environment variables (switches are logged True/False, read 0/1)."""
    return {key: {"True": "1", "False": "0"}.get(value, value) for key, value in run.hparams.items()}


# Imports the logged source (check_script has matched it to the shipped script), rebuilds each
# run's initial model from its logged settings and prints its init_probe values, a JSON list a run.
PROBE_PROGRAM = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("probed_train_gpt", sys.argv[1])
tg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tg)
for env in json.loads(sys.stdin.read()):
    print(json.dumps(tg.untrained_model(tg.Hyperparameters(environ=env)).init_probe()), flush=True)
"""
# The initial weights are drawn on the CPU, so only BLAS rounding (orthogonal init's QR) differs
# between machines: a few units in the 7th digit. Another seed moves every value by its whole size.
PROBE_TOLERANCE = 1e-5


def check_init_probes(runs: list[RunLog], rebuild: bool, source: str) -> None:
    """A log's SEED must be the seed its model was initialised with: its init_probe line must
    name that seed and, with `rebuild` (--rescore), equal the values the logged SEED and settings
    give on the CPU here, rebuilt by the readable `source` (a wrapper runs it minified, with other
    global names: check_shipped_script proved the two the same program). Nothing to check for a
    script that logs no init_probe."""
    if not re.search(r"^\s+def init_probe\(", source, flags=re.M):  # an older or another script
        return
    for run in runs:
        if run.init_probe is None:
            if run.curve:  # only EVAL_ONLY and EXPORT_ONLY runs, which train nothing, have none
                raise PackageError(f"{run.name} has no init_probe line, but its script writes one "
                                   "before training; package the log exactly as train_gpt.py wrote it.")
            continue
        if run.init_probe[0] != run.seed:
            raise PackageError(f"{run.line('init_probe')} was written by seed {run.init_probe[0]}, "
                               f"but the log's SEED is {run.seed}: the SEED line was edited; "
                               "package the log the run wrote.")
    runs = [run for run in runs if run.init_probe is not None]
    if not (rebuild and runs):
        return
    envs = [logged_settings(run) for run in runs]
    with tempfile.TemporaryDirectory(prefix="probe.") as work:
        module = Path(work) / "probed_train_gpt.py"
        module.write_text(source, encoding="utf-8")
        proc = subprocess.run([sys.executable, "-c", PROBE_PROGRAM, str(module)], input=json.dumps(envs),
                              capture_output=True, text=True, cwd=work,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    rebuilt = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    if proc.returncode != 0 or len(rebuilt) != len(runs):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackageError(f"rebuilding the runs' initial models to check their init_probe lines "
                           f"failed ({last}); report this bug.")
    for run, values in zip(runs, rebuilt):
        logged = run.init_probe[1]
        off = [i for i, (a, b) in enumerate(zip(logged, values)) if not abs(a - b) <= PROBE_TOLERANCE]  # NaN: off
        if len(logged) != len(values) or off:
            i = off[0] if off else min(len(logged), len(values))
            shown = (f"value {i}: logged {logged[i]:.7g}, rebuilt {values[i]:.7g}" if off
                     else f"{len(logged)} values logged, {len(values)} rebuilt")
            raise PackageError(f"{run.line('init_probe')} is not the initial model that SEED={run.seed} "
                               f"and the log's settings give ({shown}), so its SEED or model settings "
                               "were edited; package the log the run wrote.")


@functools.lru_cache(maxsize=16)
def _wrapper_bytes(minified: str, source_sha256: str, method: str) -> int | str:
    """Size of the wrapper running `minified`; a note where that compressor is not installed."""
    try:
        return len(wrap_minified(minified, source_sha256, method).encode("utf-8"))
    except ToolError:
        return f"unknown ({method} not installed)"


def counted_script(run: RunLog, shipped: str) -> str:
    """Which script the run's `artifact code_bytes` counted, recomputed from the logged source:
    'plain' (the source itself), 'lzma' or 'brotli' (the wrapper running the logged source and
    naming the logged source_sha256, as --make-wrapper writes it), or 'shipped' (the wrapper
    shipped, when it runs the logged source: covers another compressor version's bytes).
    Refuses anything else."""
    code = run.artifact["code_bytes"]
    # train_gpt.py adds a newline before the separator when its file lacks one, so the file
    # that ran may be one byte shorter than the logged source.
    sources = [run.source] + ([run.source[:-1]] if run.source.endswith("\n") else [])
    if any(len(s.encode("utf-8")) == code for s in sources):
        return "plain"
    if (len(shipped.encode("utf-8")) == code and looks_like_wrapper(shipped) and is_wrapper(shipped)
            and same_source(unwrap(shipped), run.source)):
        return "shipped"
    digest = run.script["source_sha256"]
    for method in WRAP_METHODS:
        if any(_wrapper_bytes(s, digest, method) == code for s in sources):
            return method
    sizes = {m: _wrapper_bytes(sources[-1], digest, m) for m in WRAP_METHODS}
    raise PackageError(f"{run.line('artifact')} counts code_bytes:{code}, but the logged source "
                       f"is {len(run.source.encode('utf-8'))} bytes and the lzma and brotli "
                       f"wrappers running it {sizes['lzma']} and {sizes['brotli']} bytes, so the "
                       "log was edited, or the file run was neither train_gpt.py nor its "
                       "--make-wrapper wrapper, or that wrapper was compressed by another "
                       "lzma or brotli version (then pass it as --script and the readable "
                       "train_gpt.py as --source); package an unedited log of such a run.")


def check_code_bytes(shipped: str, script_name: str, runs: list[RunLog]) -> None:
    """Each run's code bytes must be those of the script it ran (see counted_script), and the
    script shipped may be no bigger, else submission.json's artifact_bytes would understate
    the artifact as shipped."""
    code = len(shipped.encode("utf-8"))
    for run in runs:
        counted, art = counted_script(run, shipped), run.artifact
        if code > art["code_bytes"]:
            total, limit = art["model_bytes"] + code, art["limit_bytes"]
            excess = (f"over {limit}" if total > limit
                      else f"more than the {art['total_bytes']} the run measured")
            advice = "--wrap none" if counted == "plain" else f"--wrap {counted}"
            raise PackageError(f"{script_name} has {code} bytes, so seed {run.seed}'s artifact "
                               f"({art['model_bytes']} model bytes, {run.name}) would be {total} "
                               f"bytes, {excess}; ship the script the run counted "
                               f"({art['code_bytes']} code bytes, {counted}) with {advice}.")


# ---- THE FILES: SCRIPT AND ARTIFACTS ----


def artifact_name(seed: int) -> str:
    return f"artifact_seed{seed}.ptz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_shipped_script(shipped: str, script_name: str, readable: str | None,
                         readable_name: str, runs: list[RunLog]) -> None:
    """The train_gpt.py shipped must run exactly what the logs record: either it is the file
    each run ran (the SHA-256 and bytes of its script line, with no other source named), or it
    is byte for byte the packager's wrapper, naming the SHA-256 of `readable` and running
    minify(readable), and each run ran it or ran `readable` itself. Anything else, such as a
    wrapper whose exec line edits the source first, is refused whatever its payload."""
    data = shipped.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    wrapper = None
    if looks_like_wrapper(shipped):
        try:
            wrapper = parse_wrapper(shipped)
        except ValueError as exc:
            raise PackageError(f"{script_name} starts like a wrapper but {exc}, and only that exact "
                               "template is accepted, so that it runs exactly the logged source; "
                               "ship train_gpt.py or the wrapper --make-wrapper writes of it."
                               ) from None
    if wrapper is None:
        for run in runs:
            if (run.script["sha256"], run.script["bytes"]) != (digest, len(data)):
                raise PackageError(f"{script_name} ({len(data)} bytes, sha256 {digest}) is not "
                                   f"the script seed {run.seed} ran ({run.line('script')}); pass "
                                   "--script with the very file the runs ran.")
            if ran_wrapper(run):
                raise PackageError(f"{run.line('script')} names a source_sha256 other than the "
                                   f"sha256 of the file run, {script_name}, but only the "
                                   "packager's wrapper names another source, so the file run set "
                                   f"_SOURCE_SHA256 itself or the log was edited, {EDITED}")
        if readable is not None:
            raise PackageError(f"{readable_name} is there, but {script_name} is no wrapper, so "
                               "the packager did not write it; remove it.")
        return
    if readable is None:
        raise PackageError(f"{script_name} is a wrapper but there is no {readable_name}, the "
                           "readable script it was made of; re-run the packager with --force.")
    readable_digest = _sha256_text(readable)
    if wrapper.source_sha256 != readable_digest:
        raise PackageError(f"{script_name} names _SOURCE_SHA256 {wrapper.source_sha256}, but "
                           f"{readable_name} has sha256 {readable_digest}; ship the wrapper "
                           "--make-wrapper writes of the readable script.")
    minified = minify(readable)
    if wrapper.source != minified:
        line = _first_difference(minified, wrapper.source)
        raise PackageError(f"{script_name} runs a text that is not {readable_name} minified with "
                           f"python-minifier {MINIFIER_VERSION} (from line {line}); ship the "
                           "wrapper --make-wrapper writes of the readable script.")
    plain = (readable_digest, len(readable.encode("utf-8")))
    for run in runs:
        s = run.script
        if (s["sha256"], s["bytes"]) == (digest, len(data)):  # ran this wrapper
            if s["source_sha256"] != readable_digest or not same_source(run.source, minified):
                raise PackageError(f"{run.line('script')} is a run of {script_name}, but its "
                                   f"log records another source than the wrapper runs, {EDITED}")
        elif (s["sha256"], s["bytes"]) == plain and not ran_wrapper(run):  # ran the readable
            if not same_source(run.source, readable):
                raise PackageError(f"{run.line('script')} is a run of {readable_name}, but its "
                                   f"log records another source, {EDITED}")
        else:
            raise PackageError(f"{script_name} ({len(data)} bytes, sha256 {digest}) is not the "
                               f"script seed {run.seed} ran ({run.line('script')}), and "
                               f"{readable_name}, the readable script it wraps, is not either; "
                               "pass --script with the very file the runs ran (a wrapper made "
                               "elsewhere: --script WRAPPER --source READABLE).")


def find_artifacts(runs: list[RunLog], log_paths: list[str], given: list[str] | None) -> list[Path]:
    """--artifacts in the order of --logs, else the file each log's serialize (or
    artifact_loaded) line names: as is when absolute; a relative one from the run's folder
    (the parent of the log's logs/ folder, where train_gpt.py writes it), else from here."""
    if given:
        if len(given) != len(runs):
            raise PackageError(f"--artifacts lists {len(given)} files for {len(runs)} --logs; "
                               "pass one artifact per log, in the same order.")
        return [Path(a) for a in given]
    found = []
    for run, log in zip(runs, log_paths):
        named, log_dir = Path(run.artifact_file["path"]), Path(log).parent
        places = [named] if named.is_absolute() else [Path.cwd() / named]
        if not named.is_absolute() and log_dir.name == "logs":
            places.insert(0, log_dir.parent / named)
        path = next((p for p in places if p.is_file()), None)
        if path is None:
            raise PackageError(f"{run.line(run.artifact_file['tag'])} names the artifact {named}, "
                               f"but it is not at {' or '.join(map(str, places))}; pass "
                               "--artifacts with each run's .ptz file, in the order of --logs.")
        found.append(path)
    return found


def check_artifact(run: RunLog, path: Path) -> None:
    """The artifact must have the size and SHA-256 the run measured when it wrote (or loaded) it."""
    blob = run.artifact_file
    try:
        size, digest = path.stat().st_size, _sha256(path)
    except OSError as exc:
        raise PackageError(f"cannot read the artifact {path} of {run.name} ({exc}); pass the "
                           ".ptz file the run wrote.") from None
    if size != blob["bytes"]:
        raise PackageError(f"{path} has {size} bytes, but {run.line(blob['tag'])} measured "
                           f"{blob['bytes']}, so it is not the artifact of {run.name}; pass the "
                           "file that run wrote.")
    if digest != blob["sha256"]:
        raise PackageError(f"{path} has sha256 {digest}, but {run.line(blob['tag'])} recorded "
                           f"sha256:{blob['sha256']}, so it is not the artifact of {run.name} (or "
                           "it was modified); pass the file that run wrote.")


# ---- RESCORING ----


@dataclass
class Options:
    """What checking needs beyond the folder: the full split's token count where its shards
    are not here, and whether and how to re-evaluate the artifacts."""
    full_val_tokens: int | None = None
    rescore: bool = False
    rescore_env: dict[str, str] = field(default_factory=dict)
    nproc: int = 1
    tolerance: float = RESCORE_TOLERANCE


def rescore_env(run: RunLog, artifact: Path, overrides: dict[str, str]) -> dict[str, str]:
    """The run's logged settings as the environment of an EVAL_ONLY run on `artifact`."""
    env = {key: value for key, value in logged_settings(run).items() if key not in RESCORE_SKIP}
    env.update(overrides)
    for key in ("DATA_PATH", "TOKENIZER_PATH"):  # it runs in a temporary folder
        if env.get(key):
            env[key] = str(_local(env[key]))
    return {**env, "EVAL_ONLY": "1", "ARTIFACT_PATH": str(artifact.resolve())}


def rescore(folder: Path, runs: list[RunLog], options: Options) -> None:
    """Re-evaluate each artifact in `folder` with the folder's train_gpt.py and refuse a log
    whose scores the artifact does not give."""
    script = (folder / "train_gpt.py").resolve()
    launcher = ([sys.executable] if options.nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={options.nproc}"])
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    for run in sorted(runs, key=lambda r: r.seed):
        artifact = folder / artifact_name(run.seed)
        run_id = f"rescore_seed{run.seed}_{os.getpid()}"
        env = {**rescore_env(run, artifact, options.rescore_env), "RUN_ID": run_id}
        print(f"rescoring seed {run.seed}: EVAL_ONLY=1 ARTIFACT_PATH={artifact} "
              f"({len(env)} settings from {run.name}) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="rescore.") as work:
            proc = subprocess.run([*launcher, str(script)], cwd=work, env={**base, **env},
                                  capture_output=True, text=True)
            log = Path(work) / "logs" / f"{run_id}.txt"
            text = log.read_text(encoding="utf-8") if log.is_file() else ""
        if proc.returncode != 0 or not text:
            last = next((line for out in (proc.stderr, proc.stdout)
                         for line in reversed(out.splitlines()) if line.strip()), "no output")
            raise PackageError(f"re-evaluating seed {run.seed}'s artifact failed (exit "
                               f"{proc.returncode}: {last.strip()}); fix that (--rescore-env "
                               "KEY=VALUE overrides a logged setting) and rerun.")
        compare_rescore(run, parse_log(text, name=f"the re-evaluation of seed {run.seed}"),
                        options.tolerance)


def compare_rescore(run: RunLog, again: RunLog, tolerance: float) -> None:
    if again.score is None:
        raise PackageError(f"the re-evaluation of seed {run.seed} wrote no final_score; its log "
                           "shows why (rerun it by hand with the same settings).")
    if (again.artifact_file or {}).get("sha256") != run.artifact_file["sha256"]:
        raise PackageError(f"the re-evaluation of seed {run.seed} loaded another artifact than "
                           f"{run.name} names; report this bug.")
    if again.val_tokens != run.val_tokens:
        raise PackageError(f"the re-evaluation of seed {run.seed} scored {again.val_tokens} "
                           f"validation tokens, but {run.line('data')} scored {run.val_tokens}; "
                           "point --rescore-env DATA_PATH=... at the data the run used.")
    for stage in SCORED_STAGES:
        if stage not in run.finals or stage not in again.finals:
            continue
        logged, got = run.finals[stage]["val_bpb"], again.finals[stage]["val_bpb"]
        if abs(got - logged) > tolerance:
            raise PackageError(f"re-evaluating seed {run.seed}'s artifact gives final_{stage} "
                               f"val_bpb:{got:.8f}, but {run.line(f'final_{stage}')} says "
                               f"{logged:.8f} (off by {abs(got - logged):.2g}, more than the "
                               f"tolerance {tolerance:g}), so the log is not this artifact's; "
                               "package the log the run wrote (or, if the machine differs, "
                               "pass --rescore-tolerance).")
    if again.score.stage != run.score.stage:
        raise PackageError(f"the re-evaluation of seed {run.seed} scores stage "
                           f"{again.score.stage}, but {run.line('final_score')} names "
                           f"{run.score.stage}; drop the --rescore-env setting that changes the "
                           "stages, or package the log the run wrote.")
    print(f"rescored seed {run.seed}: val_bpb {again.val_bpb:.8f} ({again.score.stage}), log "
          f"{run.val_bpb:.8f}", flush=True)


# ---- SUBMISSION CONTENT ----


def _on(value: str | None) -> bool:
    return value not in (None, "", "0", "False", "false")


def _ttt_summary(hp: dict[str, str]) -> str:
    """The TTT stage in words; TTT_MODE says what is adapted (chunked when not logged)."""
    mode = hp.get("TTT_MODE", "chunked")
    kind = {"chunked": "score-first TTT", "docs": "score-first per-document LoRA TTT",
            "phased": "score-first per-document LoRA TTT + global SGD phases"}.get(
                mode, f"score-first TTT ({mode} mode)")
    formats = {"TTT_EPOCHS": "{} epochs", "TTT_LR": "lr {}", "TTT_CHUNK_TOKENS": "{}-token chunks"}
    details = [fmt.format(hp[key]) for key, fmt in formats.items() if hp.get(key)]
    return f"{kind} ({', '.join(details)})" if details else kind


def technique_summary(hp: dict[str, str], stages: list[str]) -> str:
    """One line describing the run, derived only from its logged hyperparameters."""
    g, parts = hp.get, []
    if g("NUM_LAYERS") and g("MODEL_DIM"):
        parts.append(f"{g('NUM_LAYERS')}L×{g('MODEL_DIM')}d")
    if g("VOCAB_SIZE"):
        parts.append(f"SP{g('VOCAB_SIZE')} vocab")
    if _on(g("DOC_ATTENTION")):
        parts.append("document-aware attention")
    if int(float(g("XSA_LAST_N", "0"))) > 0:
        parts.append(f"XSA on the last {g('XSA_LAST_N')} layers")
    if _on(g("SMEAR_GATE")):
        parts.append("SmearGate")
    if _on(g("ATTN_GATE")):
        parts.append("attention output gate")
    if int(float(g("NUM_LOOPS", "0"))) > 0:
        passes = 1 + int(float(g("NUM_LOOPS")))
        frac = round(float(g("ENABLE_LOOPING_AT", "0")) * 100, 6)
        parts.append(f"depth recurrence L{g('LOOP_START')}-{g('LOOP_END')} ×{passes} passes "
                     f"from {frac:g}% of training")
        if int(float(g("PASS_LORA_RANK", "0"))) > 0:
            parts.append(f"rank-{g('PASS_LORA_RANK')} per-pass LoRA on "
                         f"{g('PASS_LORA_TARGETS', '?')}")
        if _on(g("PASS_EMBED", "0")):
            parts.append("pass embeddings")
    bits = [f"int{g(key)} {what}" for key, what in
            (("MATRIX_BITS", "matrices"), ("EMBED_BITS", "embeddings")) if g(key)]
    if bits:
        parts.append("/".join(bits) + (f" + {g('COMPRESSOR')}" if g("COMPRESSOR") else ""))
    names = {"roundtrip": "round-trip", "sliding": f"sliding (stride {g('EVAL_STRIDE', '?')})",
             "ttt": _ttt_summary(hp)}
    evals = [names[s] for s in stages if s in names]
    if evals:
        parts.append("eval " + " → ".join(evals))
    return ", ".join(parts)


def build_submission(runs: list[RunLog], author: str, github_id: str, name: str, date: str,
                     non_record: bool) -> dict:
    runs = sorted(runs, key=lambda r: r.seed)
    bpbs = [r.val_bpb for r in runs]
    walls = [r.wallclock or {} for r in runs]
    first = runs[0]
    return {
        "author": author, "github_id": github_id, "name": name, "date": date,
        "track": NON_RECORD_TRACK if non_record else TRACK,
        "val_bpb": round(statistics.mean(bpbs), 8),
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) > 1 else 0.0,
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {"val_bpb": round(r.val_bpb, 8),
                                       "artifact_bytes": r.artifact_bytes,
                                       "stage": r.score.stage} for r in runs},
        "hardware": first.run_info["hardware"],
        "pytorch_version": first.run_info["torch"],
        "technique_summary": technique_summary(first.hparams,
                                               [s for s in STAGE_ORDER if s in first.finals]),
        "compliance": {
            # TTT in train_gpt.py scores each chunk under no_grad before training on it
            # (score_first_ttt in train_gpt.py); vacuously true when the score is another stage.
            "score_first_ttt": True,
            "full_validation_split": all(r.full_split for r in runs),  # see full_split
            "artifact_under_limit": all(r.artifact_bytes <= r.artifact["limit_bytes"]
                                        for r in runs),
            "train_within_wallclock": all(0 < w.get("limit", 0) and
                                          w.get("total", 10**18) <= w["limit"] for w in walls),
            "gptq_calibration_in_budget": all(
                "gptq_time" in w and w.get("train_time", 0) + w["gptq_time"] <= w.get("total", -1)
                <= w.get("limit", -1) for w in walls),
            "three_seeds": len(runs) >= 3,
        },
    }


def _source_defaults(source: str) -> dict[str, str]:
    """Defaults written as `"NAME", literal` in the script (e.g. os.environ.get("X", 11))."""
    found: dict[str, str] = {}
    literal = r"""("[^"\n]*"|'[^'\n]*'|-?[0-9][0-9.eE+_-]*|True|False)"""
    pattern = r"""["']([A-Z][A-Z0-9_]*)["']\s*,\s*""" + literal
    for m in re.finditer(pattern, source):
        try:
            found.setdefault(m[1], str(ast.literal_eval(m[2])))
        except (ValueError, SyntaxError):
            pass
    return found


def _normal(value: str) -> str:
    if value.lower() in ("true", "false"):
        return "1" if value.lower() == "true" else "0"
    try:
        return repr(float(value))
    except ValueError:
        return value


def reproduction_commands(run_list: list[RunLog], folder: Path, readable: str | None = None) -> list[str]:
    """One command per seed, to run from inside the submission folder. The defaults come from
    the readable script (a wrapper's minified text writes 0.005 as .005)."""
    first = run_list[0]
    defaults = _source_defaults(readable or first.source)
    env = []
    for key, value in first.hparams.items():
        if key in PER_RUN_HPARAMS:
            continue
        default = defaults.get(key)
        if (default is None and key in KEY_HPARAMS
                or default is not None and _normal(default) != _normal(value)):
            env.append(f"{key}={shlex.quote(value)}")
    for key in ("DATA_PATH", "TOKENIZER_PATH"):  # the files the run read, seen from the folder
        logged = first.hparams.get(key)
        if logged:
            where = logged if Path(logged).is_absolute() else os.path.relpath(_local(logged), folder.resolve())
            env.append(f"{key}={shlex.quote(Path(where).as_posix())}")
    nproc = first.run_info.get("world_size", "8")
    tail = " ".join(env + [f"torchrun --standalone --nproc_per_node={nproc} train_gpt.py"])
    return [f"SEED={r.seed} {tail}" for r in sorted(run_list, key=lambda r: r.seed)]


def render_readme(sub: dict, runs: list[RunLog], folder: Path, wrap: str | None = None,
                  readable: str | None = None) -> str:
    """The README skeleton; `wrap` names the compressor when train_gpt.py is a wrapper of the
    script `readable`."""
    runs = sorted(runs, key=lambda r: r.seed)
    out = [f"# {sub['name']}", "",
           f"**val_bpb {sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}** (mean ± sample std over "
           f"{len(runs)} seeds), track `{sub['track']}`, {sub['hardware']}, "
           f"torch {sub['pytorch_version']}.",
           "", "## What and why", "",
           "_TODO(author): the idea, what changed against the previous record, why it helps, "
           "and the measurements that show it._", "", f"Technique: {sub['technique_summary']}", "",
           "## Results", "", "| seed | val_bpb | stage | artifact bytes |",
           "| --- | --- | --- | --- |"]
    for r in runs:
        out.append(f"| {r.seed} | {r.val_bpb:.8f} | {r.score.stage} | {r.artifact_bytes} |")
    out += [f"| **mean ± std** | **{sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}** | | |", "",
            "Every stage (val_bpb, from the logs):", "",
            "| seed | " + " | ".join(STAGE_ORDER) + " | train ms | gptq ms |",
            "| --- " * (len(STAGE_ORDER) + 3) + "|"]
    for r in runs:
        cells = [f"{r.finals[s]['val_bpb']:.8f}" if s in r.finals else "-" for s in STAGE_ORDER]
        wc = r.wallclock or {}
        out.append(f"| {r.seed} | " + " | ".join(cells) +
                   f" | {wc.get('train_time', '-')} | {wc.get('gptq_time', '-')} |")
    out += ["", "## Reproduce", "", "From inside this folder (each run writes logs/{RUN_ID}.txt):",
            "", "```", *reproduction_commands(runs, folder, readable), "```", "",
            "Logs: " + ", ".join(f"`train_seed{r.seed}.log`" for r in runs) + ".", ""]
    if wrap:
        out += [f"`train_gpt.py` is the packager's self-extracting wrapper of `{READABLE_NAME}` "
                f"(python-minifier {MINIFIER_VERSION}, then {wrap}): it runs the minified text "
                "each log starts with; `--check` (below) proves it is exactly that wrapper of "
                "that script.", ""]
    out += ["## Artifacts", "",
            "The compressed models the runs wrote, byte for byte: they are the evidence for the "
            "scores. `python3 records/package.py --check <this folder>` checks each against the "
            "size and SHA-256 its log recorded; with `--rescore` (and `--nproc 8` on 8 GPUs) it "
            "also re-evaluates each with `EVAL_ONLY=1` and the run's logged settings.", "",
            "| seed | file | bytes | sha256 |", "| --- | --- | --- | --- |"]
    out += [f"| {r.seed} | `{artifact_name(r.seed)}` | {r.artifact_file['bytes']} | "
            f"`{r.artifact_file['sha256']}` |" for r in runs]
    out += ["", "## Compliance", ""]
    out += [f"- [{'x' if ok else ' '}] {key}" for key, ok in sub["compliance"].items()]
    return "\n".join(out) + "\n"


# ---- PACKAGE AND CHECK ----


def _differences(expected: object, actual: object, where: str) -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key not in actual:
                return f"{where}{key} is missing"
            diff = _differences(expected[key], actual[key], f"{where}{key}.")
            if diff:
                return diff
        return None
    if isinstance(expected, float) and type(actual) in (int, float):
        same = abs(expected - actual) <= BPB_TOLERANCE
    else:
        same = expected == actual
    return None if same else f"{where[:-1]} is {actual!r} but the logs give {expected!r}"


# What a submission folder holds: the packager writes these and nothing else.
PACKAGED_NAMES = re.compile(r"README\.md|submission\.json|requirements\.txt|train_gpt\.py|"
                            + re.escape(READABLE_NAME) + r"|train_seed-?\d+\.log|artifact_seed-?\d+\.ptz")


class WriteError(Exception):
    """The output could not be written (disk full, permissions): exit status 4."""


def check_folder_entries(folder: Path, doing: str) -> None:
    """Every entry of `folder` must be a regular file with a name the packager writes: a link
    could point --check at a file outside the folder, and --force must never delete a file the
    packager did not write. `doing` ends the refusal: what to do about it."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise PackageError(f"cannot list {folder} ({exc.strerror}); check its permissions.") from None
    for entry in entries:
        if entry.is_symlink():
            raise PackageError(f"{entry} is a symbolic link (to {os.readlink(entry)}), but the "
                               f"packager writes only regular files; {doing}")
        if not entry.is_file():
            raise PackageError(f"{entry} is not a regular file (a folder?), so the packager did "
                               f"not write it; {doing}")
        if not PACKAGED_NAMES.fullmatch(entry.name):
            raise PackageError(f"{folder} holds {entry.name}, which the packager does not write; "
                               f"{doing}")


def check_folder(folder: Path, expected_name: str | None = None,
                 options: Options | None = None) -> dict:
    """Re-validate a submission folder against its own logs and files (and re-evaluate its
    artifacts with options.rescore); returns submission.json."""
    options = options or Options()
    if not folder.is_dir():
        raise PackageError(f"{folder} is not a folder; pass a submission folder.")
    check_folder_entries(folder, "remove it, or re-run the packager into a new folder.")
    try:
        sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
        script_text = (folder / "train_gpt.py").read_bytes().decode("utf-8")
        readme = (folder / "README.md").read_text(encoding="utf-8")
        readable_path = folder / READABLE_NAME
        readable = readable_path.read_bytes().decode("utf-8") if readable_path.exists() else None
    except (OSError, ValueError) as exc:
        raise PackageError(f"{folder} is incomplete or unreadable ({exc}); "
                           "re-run the packager with --force.") from None
    if not isinstance(sub, dict):
        raise PackageError(f"{folder}/submission.json holds a JSON {type(sub).__name__}, not an "
                           "object; re-run the packager with --force.")
    log_paths = sorted(folder.glob("train_seed*.log"))
    if not log_paths:
        raise PackageError(f"{folder} holds no train_seed*.log files; "
                           "re-run the packager with --force.")
    runs = [read_log(p) for p in log_paths]
    non_record = sub.get("track") == NON_RECORD_TRACK
    validate_runs(runs, non_record, options.full_val_tokens)
    for path, run in zip(log_paths, runs):
        if path.name != f"train_seed{run.seed}.log":
            raise PackageError(f"{path} holds the run with SEED={run.seed}; "
                               f"rename it to train_seed{run.seed}.log.")
    shipped_name, readable_name = str(folder / "train_gpt.py"), str(folder / READABLE_NAME)
    wrapped = looks_like_wrapper(script_text)
    if wrapped and readable is None:
        raise PackageError(f"{shipped_name} is a wrapper but there is no {readable_name}, the "
                           "readable script it was made of; re-run the packager with --force.")
    check_script(readable if wrapped else script_text, readable_name if wrapped else shipped_name,
                 runs)
    check_code_bytes(script_text, shipped_name, runs)
    check_shipped_script(script_text, shipped_name, readable, readable_name, runs)
    check_init_probes(runs, rebuild=options.rescore, source=readable if wrapped else script_text)
    for run in runs:
        artifact = folder / artifact_name(run.seed)
        if not artifact.is_file():
            raise PackageError(f"{folder} holds no {artifact.name}, the artifact of "
                               f"train_seed{run.seed}.log, so its score cannot be checked; "
                               "re-run the packager with --force.")
        check_artifact(run, artifact)
    fields = {k: sub.get(k) for k in ("author", "github_id", "name", "date")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise PackageError(f"{folder}/submission.json lacks a string author, github_id, name "
                           "or date; add them.")
    if (expected_name or folder.name) != f"{sub['date']}_{sub['name']}":
        raise PackageError(f"{folder} should be named {sub['date']}_{sub['name']} after its date "
                           "and name; rename it.")
    expected = build_submission(runs, non_record=non_record, **fields)
    expected.pop("technique_summary")  # the author may reword it
    if sub.get("seeds") != expected["seeds"]:
        raise PackageError(f"{folder}/submission.json lists seeds {sub.get('seeds')} but the "
                           f"folder holds logs of seeds {expected['seeds']}; re-run the packager "
                           "with --force.")
    diff = _differences(expected, sub, "")
    if diff is None and not (isinstance(sub.get("technique_summary"), str)
                             and sub["technique_summary"]):
        diff = "technique_summary is empty"
    if diff:
        raise PackageError(f"{folder}/submission.json does not match its logs: {diff}; "
                           "re-run the packager with --force.")
    for r in runs:
        if f"{r.val_bpb:.8f}" not in readme:
            raise PackageError(f"{folder}/README.md does not show seed {r.seed}'s val_bpb "
                               f"{r.val_bpb:.8f}; restore the results table.")
    seeds = {artifact_name(r.seed) for r in runs}
    for path in sorted(folder.glob("artifact_seed*.ptz")):
        if path.name not in seeds:
            raise PackageError(f"{folder} holds {path.name}, but no log of that seed, so the "
                               "packager did not write it; remove it.")
    if options.rescore:
        rescore(folder, runs, options)
    return sub


def _git_user() -> str:
    try:
        out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True,
                             cwd=REPO_ROOT)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _read_script(path: Path, flag: str) -> str:
    try:
        # Bytes, not text mode: the file's SHA-256 is checked, so no newline may be translated.
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"cannot read {flag} {path} ({exc}); pass the train_gpt.py that "
                           "produced the logs.") from None


def scripts_to_ship(args: argparse.Namespace) -> tuple[str, str, str, str | None]:
    """(shipped text, its name in refusals, the readable script, the readable's path): --script
    as is or wrapped with --wrap, or a wrapper given as --script with its readable from --source."""
    script_path = Path(args.script)
    text = _read_script(script_path, "--script")
    if not looks_like_wrapper(text):
        wrap = args.wrap or "none"
        name = str(script_path) if wrap == "none" else f"the train_gpt.py to ship ({wrap} wrap)"
        return make_wrapper(text, wrap), name, text, str(script_path)
    if args.wrap not in (None, "none"):
        raise PackageError(f"--script {script_path} is already a wrapper; drop --wrap, or pass "
                           "the readable train_gpt.py to wrap.")
    try:
        wrapper = parse_wrapper(text)
    except ValueError as exc:
        raise PackageError(f"--script {script_path} starts like a wrapper but {exc}, and only that "
                           "exact template is accepted, so that it runs exactly the logged "
                           "source; pass train_gpt.py or the wrapper --make-wrapper writes of it."
                           ) from None
    source_path = Path(args.source or REPO_ROOT / "train_gpt.py")
    readable = _read_script(source_path, "--source")
    if _sha256_text(readable) != wrapper.source_sha256:
        raise PackageError(f"--source {source_path} has sha256 {_sha256_text(readable)}, but the "
                           f"wrapper --script {script_path} was made of a script with sha256 "
                           f"{wrapper.source_sha256}; pass --source with that readable "
                           "train_gpt.py.")
    return text, str(script_path), readable, str(source_path)


def prepare_out_root(out_root: Path, folder: Path, force: bool) -> None:
    """Refuse an output that is not ours to replace: --out-root that is not a folder, or a
    submission folder that exists (without --force) or holds anything the packager does not
    write (even with --force: it deletes the folder)."""
    for path in (out_root, *out_root.parents):
        if path.exists() and not path.is_dir() or path.is_symlink() and not path.exists():
            raise PackageError(f"--out-root {out_root}: {path} is a file or a link, not a folder; "
                               "pass a folder (it is created if missing).")
    if folder.exists() or folder.is_symlink():
        if not force:
            raise PackageError(f"{folder} already exists; pass --force to replace it or choose "
                               "another --name.")
        if folder.is_symlink() or not folder.is_dir():
            raise PackageError(f"{folder} is a file or a link, not a folder the packager wrote, "
                               "so --force will not delete it; move it away or choose another "
                               "--name.")
        check_folder_entries(folder, "--force deletes the folder, so move it away or choose "
                                     "another --name.")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create --out-root {out_root} ({exc.strerror}); pass a folder "
                         "you can write to.") from None


def package(args: argparse.Namespace, options: Options | None = None) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise PackageError(f"--name {args.name!r} must be letters, digits, '_', '-' or '.'; "
                           "pick a short name like SP8192_LoopLoRA.")
    try:
        dt.date.fromisoformat(args.date)
    except ValueError:
        raise PackageError(f"--date {args.date!r} is not YYYY-MM-DD; "
                           "pass e.g. --date 2026-04-09.") from None
    options = options or Options()
    runs = [read_log(Path(p)) for p in args.logs]
    validate_runs(runs, args.non_record, options.full_val_tokens)
    shipped, shipped_name, readable, readable_name = scripts_to_ship(args)
    check_script(readable, readable_name, runs)
    check_code_bytes(shipped, shipped_name, runs)
    wrapped = shipped is not readable
    check_shipped_script(shipped, shipped_name, readable if wrapped else None, readable_name, runs)
    artifacts = find_artifacts(runs, args.logs, args.artifacts)
    for run, artifact in zip(runs, artifacts):
        check_artifact(run, artifact)
    track = NON_RECORD_TRACK if args.non_record else TRACK
    out_root = Path(args.out_root or REPO_ROOT / "records" / f"track_{track}")
    folder = out_root / f"{args.date}_{args.name}"
    prepare_out_root(out_root, folder, args.force)

    sub = build_submission(runs, args.author or _git_user(), args.github_id, args.name,
                           args.date, args.non_record)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out_root))
    except OSError as exc:
        raise WriteError(f"cannot write in --out-root {out_root} ({exc.strerror}); pass a folder "
                         "you can write to.") from None
    try:
        (tmp / "train_gpt.py").write_bytes(shipped.encode("utf-8"))
        if wrapped:
            (tmp / READABLE_NAME).write_bytes(readable.encode("utf-8"))
        for run, path, artifact in zip(runs, args.logs, artifacts):
            shutil.copyfile(path, tmp / f"train_seed{run.seed}.log")
            shutil.copyfile(artifact, tmp / artifact_name(run.seed))
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        wrap = parse_wrapper(shipped).method if wrapped else None
        (tmp / "README.md").write_text(render_readme(sub, runs, folder, wrap, readable),
                                         encoding="utf-8")
        if (REPO_ROOT / "requirements.txt").is_file():
            shutil.copyfile(REPO_ROOT / "requirements.txt", tmp / "requirements.txt")
        check_folder(tmp, expected_name=folder.name, options=options)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except OSError as exc:
        raise WriteError(f"cannot write {folder} ({exc}); free space or fix the permissions of "
                         f"{out_root}, then rerun.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def write_file(path: Path, data: bytes, force: bool, protect: Path) -> str:
    """Write `data` at `path` unless that would overwrite something the packager did not write:
    an existing file is left alone when it already holds `data` ('unchanged'), replaced only with
    `force` ('replaced'), and never when it is a folder, a link or `protect` (the --script)."""
    if path.is_symlink():
        raise PackageError(f"--make-wrapper {path} is a symbolic link; pass the path of a file.")
    if path.is_dir():
        raise PackageError(f"--make-wrapper {path} is a folder; pass a file path such as "
                           f"{path / 'train_gpt.py'}.")
    if path.exists():
        if path.resolve() == protect.resolve():
            raise PackageError(f"--make-wrapper {path} is --script itself, and writing the "
                               "wrapper there would destroy the readable script; pass another "
                               "path.")
        if path.read_bytes() == data:
            return "unchanged"
        if not force:
            raise PackageError(f"--make-wrapper {path} exists and is not this wrapper; pass "
                               "--force to replace it, or another path.")
    if not path.parent.is_dir():
        raise PackageError(f"--make-wrapper {path}: the folder {path.parent} does not exist; "
                           "create it or pass another path.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        existed = path.exists()
        os.replace(tmp, path)  # whole or not at all
    except OSError as exc:
        raise WriteError(f"cannot write --make-wrapper {path} ({exc.strerror}); free space or "
                         "fix the folder's permissions.") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return "replaced" if existed else "wrote"


def wrapper_sizes(source: str) -> dict[str, int]:
    """Byte counts of `source` as the file run: as is, minified, and each wrapper's."""
    sizes = {"source": len(source.encode("utf-8")), "minified": len(minify(source).encode("utf-8"))}
    for method in WRAP_METHODS:
        sizes[method] = len(make_wrapper(source, method).encode("utf-8"))
    return sizes


def size_report(path: Path) -> list[str]:
    """The --sizes lines: what each way of shipping `path` counts as code bytes."""
    source = _read_script(path, "--script")
    if looks_like_wrapper(source):
        raise PackageError(f"--script {path} is a wrapper; pass the readable train_gpt.py.")
    sizes = wrapper_sizes(source)
    best = min(WRAP_METHODS, key=sizes.get)
    lines = [f"sizes script:{path.name} source_bytes:{sizes['source']} minified_bytes:"
             f"{sizes['minified']} (python-minifier {MINIFIER_VERSION})"]
    lines += [f"sizes wrapper:{m} code_bytes:{sizes[m]}" for m in WRAP_METHODS]
    lines.append(f"sizes smallest:{best} code_bytes:{sizes[best]} reference_bytes:"
                 f"{REFERENCE_CODE_BYTES} over_reference:{sizes[best] - REFERENCE_CODE_BYTES} "
                 "(reference: PR #2135, python-minifier + lzma + base85)")
    return lines


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error:` line (exit status 2), like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help.\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", help="short name, e.g. SP8192_LoopLoRA")
    ap.add_argument("--logs", nargs="+", help="one logs/{RUN_ID}.txt per seed")
    ap.add_argument("--author", default=None, help="default: git config user.name")
    ap.add_argument("--github-id", default="", dest="github_id")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--script", default=str(REPO_ROOT / "train_gpt.py"),
                    help="the readable train_gpt.py the runs ran or were wrapped from (its "
                         "SHA-256 and bytes must be those of each log's script line, or its "
                         "SHA-256 their source_sha256), or the wrapper they ran; default: "
                         "train_gpt.py")
    ap.add_argument("--source", default=None, metavar="PATH",
                    help="with a wrapper as --script: the readable train_gpt.py it was made of "
                         "(default: the repository's train_gpt.py); shipped beside it as "
                         f"{READABLE_NAME}")
    ap.add_argument("--wrap", choices=("none", *WRAP_METHODS), default=None,
                    help="ship --script as is (packaging's default), or the self-extracting "
                         "wrapper of it (minified, compressed; --make-wrapper's default is "
                         f"{RECOMMENDED_WRAP}, the smaller); either way the file shipped must be "
                         "the one the runs ran, or the wrapper of exactly that file")
    ap.add_argument("--out-root", default=None, dest="out_root",
                    help="default: records/track_10min_16mb "
                         "(records/track_non_record_16mb with --non-record)")
    ap.add_argument("--force", action="store_true",
                    help="replace an existing submission folder (only if it holds nothing but "
                         "files the packager writes) or an existing --make-wrapper file")
    ap.add_argument("--non-record", action="store_true", dest="non_record",
                    help="package as track non_record_16mb: allows runs off 8xH100, without the "
                         "600 s clock (MAX_WALLCLOCK_SECONDS=0 or >600) or on part of the "
                         "validation split (submission.json then says full_validation_split: "
                         "false)")
    ap.add_argument("--artifacts", nargs="+", metavar="PTZ",
                    help="each run's artifact, in the order of --logs (default: the path in each "
                         "log's serialize or artifact_loaded line; a relative one is looked for "
                         "from the run's folder, the parent of the log's logs/ folder, then from "
                         "the current directory); its size and SHA-256 must be the logged ones, "
                         "and it is copied into the folder as artifact_seed{SEED}.ptz")
    ap.add_argument("--full-val-tokens", type=_positive_int, metavar="N", dest="full_val_tokens",
                    help="the token count of the whole validation split, for when the "
                         "fineweb_val_*.bin shards of the runs' DATA_PATH are not here (a relative "
                         "DATA_PATH is looked for from the current directory); when they are, "
                         "they give the count and must hold the challenge's 50,000 documents")
    ap.add_argument("--check", metavar="FOLDER",
                    help="re-validate an existing submission folder: logs, submission.json, "
                         "README, script and artifact hashes, curves, validation tokens, "
                         "hardware, and that it holds only files the packager writes")
    ap.add_argument("--rescore", action="store_true",
                    help="also re-run EVAL_ONLY=1 of the folder's train_gpt.py on each of its "
                         "artifacts (the new folder's when packaging) with the run's logged "
                         "hparam settings (a fresh RUN_ID, no checkpoint, export or NLL dump) and "
                         "refuse a stage's val_bpb off the log's by more than the tolerance")
    ap.add_argument("--rescore-env", action="append", default=[], metavar="KEY=VALUE",
                    dest="rescore_env", help="override a logged setting when rescoring "
                                             "(repeatable), e.g. DATA_PATH=/data/sp8192")
    ap.add_argument("--nproc", type=int, default=1,
                    help="processes for rescoring: 1 runs python3 train_gpt.py, more run torchrun "
                         "--standalone --nproc_per_node=N (default 1)")
    ap.add_argument("--rescore-tolerance", type=float, default=RESCORE_TOLERANCE,
                    dest="rescore_tolerance",
                    help=f"largest |val_bpb difference| accepted per stage (default "
                         f"{RESCORE_TOLERANCE:g}: evaluation on one machine is deterministic; "
                         "raise it when rescoring on other GPUs or another world size)")
    ap.add_argument("--make-wrapper", metavar="PATH", dest="make_wrapper",
                    help="only write the wrapper of --script (--wrap lzma or brotli, default "
                         f"{RECOMMENDED_WRAP}) to PATH, then stop; run that file, so the artifact "
                         "line counts the wrapper's bytes. An existing PATH is left alone unless "
                         "it already holds this wrapper or --force is given")
    ap.add_argument("--sizes", action="store_true",
                    help="only print the code bytes of --script as is, minified, and as each "
                         f"wrapper, against the {REFERENCE_CODE_BYTES}-byte reference, then stop")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.rescore_env:
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            ap.error(f"--rescore-env {item!r} is not KEY=VALUE")
        if key in RESCORE_SKIP | {"EVAL_ONLY"}:
            ap.error(f"--rescore-env cannot set {key}: rescoring sets it")
        overrides[key] = value
    if (overrides or args.nproc != 1) and not args.rescore:
        ap.error("--rescore-env and --nproc only apply with --rescore")
    if args.nproc < 1 or not args.rescore_tolerance >= 0:
        ap.error("--nproc must be at least 1 and --rescore-tolerance at least 0")
    if args.check and args.artifacts:
        ap.error("--artifacts is for packaging; --check reads the folder's artifact_seed*.ptz")
    if args.make_wrapper and args.wrap == "none":
        ap.error("--make-wrapper needs --wrap lzma or --wrap brotli")
    if sum(map(bool, (args.make_wrapper, args.sizes, args.check))) > 1:
        ap.error("--make-wrapper, --sizes and --check each do one thing; pass one of them")
    options = Options(args.full_val_tokens, args.rescore, overrides, args.nproc,
                      args.rescore_tolerance)
    try:
        if args.sizes:
            print("\n".join(size_report(Path(args.script))))
            return 0
        if args.make_wrapper:
            script_path, method = Path(args.script), args.wrap or RECOMMENDED_WRAP
            source = _read_script(script_path, "--script")
            if looks_like_wrapper(source):
                raise PackageError(f"--script {script_path} is already a wrapper; pass the "
                                   "readable train_gpt.py.")
            wrapper = make_wrapper(source, method).encode("utf-8")
            done = write_file(Path(args.make_wrapper), wrapper, args.force, protect=script_path)
            print(f"{done} {args.make_wrapper}: {len(source.encode('utf-8'))} source bytes, "
                  f"{len(minify(source).encode('utf-8'))} minified, {len(wrapper)} code bytes "
                  f"({method} wrapper)")
            return 0
        if args.check:
            sub = check_folder(Path(args.check), options=options)
            rescored = ", each artifact rescored" if args.rescore else ""
            print(f"ok: {args.check} matches its {len(sub['seeds'])} logs and artifacts"
                  f"{rescored}, val_bpb {sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}")
            if not args.rescore:
                print(NOT_RESCORED)
            return 0
        if not args.name or not args.logs:
            ap.error("--name and --logs are required unless --check, --make-wrapper or --sizes "
                     "is given")
        folder = package(args, options)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    print(f"wrote {folder}; fill in the README's 'What and why', "
          f"then re-check it with --check {folder}")
    if not args.rescore:
        print(NOT_RESCORED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
