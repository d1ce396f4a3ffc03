#!/usr/bin/env python3
"""Package Parameter Golf run logs into a submission folder, or re-check one.

Usage, from the repository root (where each run's DATA_PATH is):

    python3 records/package.py --name ShortName --logs logs/a.txt logs/b.txt logs/c.txt \\
        [--artifacts a.ptz b.ptz c.ptz] [--author NAME] [--github-id ID] [--date YYYY-MM-DD] \\
        [--script train_gpt.py] [--wrap none|lzma|brotli] [--out-root records/track_10min_16mb] \\
        [--force] [--non-record] [--full-val-tokens N] [--rescore [--nproc N] \\
        [--rescore-env KEY=VALUE ...] [--rescore-tolerance 1e-6]]
    python3 records/package.py --check records/track_10min_16mb/2026-04-09_ShortName [--rescore ...]

Packaging writes `{out-root}/{date}_{ShortName}/` with train_gpt.py (as is, or as a small
self-extracting wrapper), one `train_seed{SEED}.log` and `artifact_seed{SEED}.ptz` per run,
submission.json, a README.md skeleton and requirements.txt. Every log and file is validated
before anything is written; a refusal exits with status 2 and one sentence saying what is wrong
and what to do. The new folder is then re-checked exactly as `--check` does.

Nothing a log states is taken on trust: the score is re-read from the line of the last stage
that ran, the artifact size is code + model bytes, and the code bytes are recomputed from the
logged source. A log whose lines disagree (an edited score, stage or size, a repeated line, a
stage its settings enable but no line for, a val_bpb/val_loss ratio unlike the other stages')
is refused, so a hand-edited log can neither be packaged nor pass `--check`.

The files are the evidence: each run's artifact must have the size and SHA-256 its serialize
(or artifact_loaded) line recorded, and the train_gpt.py shipped the SHA-256 and bytes of its
`script` line (or be a wrapper holding exactly that file). Two seeds may not share a training
curve or an artifact. A record must score the challenge's whole validation split: its `data
val_tokens:` must equal the token count of the fineweb_val_*.bin shards in its DATA_PATH (found
from the current directory), which must hold the challenge's 50,000 documents; where those
shards are absent, --full-val-tokens N gives the count. A record must also run on 8xH100 with
the 600 s clock; --non-record lifts that and the submission says so. `--rescore` re-runs
`EVAL_ONLY=1` of the shipped train_gpt.py on each shipped artifact with the run's own logged
settings and refuses a score that differs from the log's by more than --rescore-tolerance, and
rebuilds each run's initial model from its logged SEED to check its init_probe line. Without
--rescore nothing is run, so a log edited consistently throughout passes; no check retrains.

A wrapper is three lines that set `_WRAPPED_SOURCE` to the original source and exec it with
the wrapper's own `__file__`, so train_gpt.py logs the same readable source either way and
counts the wrapper's bytes as code. `unwrap` recovers the source without executing anything.
"""
from __future__ import annotations

import argparse
import ast
import base64
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
    "TTT_PARAMS TTT_OPTIMIZER TTT_EPOCHS TTT_LR TTT_CHUNK_TOKENS MAX_WALLCLOCK_SECONDS"
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
    script: dict | None = None  # the script line: path (file name), bytes, sha256
    artifact_file: dict | None = None  # serialize or artifact_loaded: tag, path, bytes, sha256
    val_tokens: int | None = None  # the data line: validation tokens loaded and scored
    byte_count: str = "tables"  # the data line: what bits per byte divided by (tables or sidecar)
    caseops: bool = False  # the data line: a CaseOps tokenizer
    data_path: str | None = None
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
    """tag, path, bytes and sha256 of a script, serialize or artifact_loaded line; None when it
    has no path and sha256 (an older train_gpt.py wrote it)."""
    p = _pairs(rest)
    if "sha256" not in p or "path" not in p:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", p["sha256"]):
        raise ValueError(f"sha256:{p['sha256']} is not 64 hex digits")
    return {"tag": tag, "path": p["path"], "bytes": int(p["bytes"]), "sha256": p["sha256"]}


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


def make_wrapper(source: str, method: str) -> str:
    """A tiny script that runs `source` with the wrapper's globals and `__file__`."""
    if method == "none":
        return source
    if method == "lzma":
        blob = lzma.compress(source.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
    elif method == "brotli":
        import brotli
        blob = brotli.compress(source.encode("utf-8"), quality=11)
    else:
        raise ValueError(f"unknown wrap method {method!r}; use none, lzma or brotli")
    # base85 never uses '"' or '\', so the blob sits in a plain string literal.
    text = base64.b85encode(blob).decode("ascii")
    return (f"import {method} as L,base64 as B\n"
            f'_WRAPPED_SOURCE=L.decompress(B.b85decode("{text}")).decode()\n'
            'exec(compile(_WRAPPED_SOURCE,__file__,"exec"))\n')


def _wrapper_parts(text: str) -> tuple[str, str] | None:
    """(method, base85 literal) if `text` is a wrapper made by make_wrapper, else None."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    method = literal = None
    for node in tree.body:
        if isinstance(node, ast.Import):
            method = next((a.name for a in node.names if a.name in ("lzma", "brotli")), method)
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], "id", None) == "_WRAPPED_SOURCE"):
            strings = [n.value for n in ast.walk(node.value)
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            literal = strings[0] if len(strings) == 1 else None
    return (method, literal) if method and literal is not None else None


def is_wrapper(text: str) -> bool:
    return _wrapper_parts(text) is not None


def unwrap(text: str) -> str:
    """The source inside a wrapper, found by parsing (never executing) it."""
    parts = _wrapper_parts(text)
    if parts is None:
        raise ValueError("not a self-extracting wrapper: no `import lzma|brotli` and "
                         "`_WRAPPED_SOURCE=...b85decode(\"...\")` assignment found")
    method, literal = parts
    blob = base64.b85decode(literal)
    if method == "lzma":
        return lzma.decompress(blob).decode("utf-8")
    import brotli
    return brotli.decompress(blob).decode("utf-8")


def script_source(text: str) -> str:
    return unwrap(text) if is_wrapper(text) else text


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


def check_script(script_text: str, script_name: str, runs: list[RunLog]) -> None:
    source = script_source(script_text)
    if not same_source(source, runs[0].source):
        line = _first_difference(runs[0].source, source)
        raise PackageError(f"{script_name} differs from the source recorded in {runs[0].name} "
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


def check_init_probes(runs: list[RunLog], rebuild: bool) -> None:
    """A log's SEED must be the seed its model was initialised with: its init_probe line must
    name that seed and, with `rebuild` (--rescore: it runs the logged source, as rescoring runs
    the shipped script), equal the values the logged SEED and settings give on the CPU here.
    Nothing to check for a script that logs no init_probe."""
    source = runs[0].source
    if not re.search(r"^\s+def init_probe\(self", source, flags=re.M):  # an older or another script
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
def _wrapper_bytes(source: str, method: str) -> int | None:
    """Size of make_wrapper(source, method); None where that compressor is not installed."""
    try:
        return len(make_wrapper(source, method).encode("utf-8"))
    except ImportError:
        return None


def counted_script(run: RunLog, shipped: str) -> str:
    """Which script the run's `artifact code_bytes` counted, recomputed from the logged source:
    'plain' (the source itself), 'lzma' or 'brotli' (the wrapper make_wrapper makes of it, as
    --make-wrapper wrote it), or 'shipped' (the train_gpt.py shipped, when it runs the logged
    source: covers a wrapper made by another compressor version). Refuses anything else."""
    code = run.artifact["code_bytes"]
    # train_gpt.py adds a newline before the separator when its file lacks one, so the file
    # that ran may be one byte shorter than the logged source.
    sources = [run.source] + ([run.source[:-1]] if run.source.endswith("\n") else [])
    if any(len(s.encode("utf-8")) == code for s in sources):
        return "plain"
    if len(shipped.encode("utf-8")) == code and same_source(script_source(shipped), run.source):
        return "shipped"
    for method in ("lzma", "brotli"):
        if any(_wrapper_bytes(s, method) == code for s in sources):
            return method
    sizes = {m: _wrapper_bytes(run.source, m) or f"unknown ({m} not installed)"
             for m in ("lzma", "brotli")}
    raise PackageError(f"{run.line('artifact')} counts code_bytes:{code}, but the logged source "
                       f"is {len(run.source.encode('utf-8'))} bytes and its lzma and brotli "
                       f"wrappers {sizes['lzma']} and {sizes['brotli']} bytes, so the log was "
                       "edited or the file run was neither train_gpt.py nor its --make-wrapper "
                       "wrapper; package an unedited log of such a run.")


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


def check_shipped_script(shipped: str, script_name: str, runs: list[RunLog]) -> None:
    """The train_gpt.py shipped must be the file each run ran (the SHA-256 and bytes of its
    script line), or a wrapper made of exactly that file (the run ran the plain script)."""
    data = shipped.encode("utf-8")
    found = [(hashlib.sha256(data).hexdigest(), len(data))]
    if is_wrapper(shipped):
        inner = script_source(shipped).encode("utf-8")
        found.append((hashlib.sha256(inner).hexdigest(), len(inner)))
    for run in runs:
        if (run.script["sha256"], run.script["bytes"]) not in found:
            what = " and the source it wraps is not either" if len(found) > 1 else ""
            raise PackageError(f"{script_name} ({len(data)} bytes, sha256 {found[0][0]}) is not "
                               f"the script seed {run.seed} ran ({run.line('script')}){what}; pass "
                               "--script with the very file the runs ran.")


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
    formats = {"TTT_OPTIMIZER": "{}", "TTT_PARAMS": "{} params", "TTT_EPOCHS": "{} epochs",
               "TTT_LR": "lr {}", "TTT_CHUNK_TOKENS": "{}-token chunks"}
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


def reproduction_commands(run_list: list[RunLog], folder: Path) -> list[str]:
    """One command per seed, to run from inside the submission folder."""
    first = run_list[0]
    defaults = _source_defaults(first.source)
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


def render_readme(sub: dict, runs: list[RunLog], folder: Path) -> str:
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
            "", "```", *reproduction_commands(runs, folder), "```", "",
            "Logs: " + ", ".join(f"`train_seed{r.seed}.log`" for r in runs) + ".", "",
            "## Artifacts", "",
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


def check_folder(folder: Path, expected_name: str | None = None,
                 options: Options | None = None) -> dict:
    """Re-validate a submission folder against its own logs and files (and re-evaluate its
    artifacts with options.rescore); returns submission.json."""
    options = options or Options()
    try:
        sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
        script_text = (folder / "train_gpt.py").read_bytes().decode("utf-8")
        readme = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise PackageError(f"{folder} is incomplete or unreadable ({exc}); "
                           "re-run the packager with --force.") from None
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
    check_script(script_text, str(folder / "train_gpt.py"), runs)
    check_code_bytes(script_text, str(folder / "train_gpt.py"), runs)
    check_shipped_script(script_text, str(folder / "train_gpt.py"), runs)
    check_init_probes(runs, rebuild=options.rescore)
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
    script_path = Path(args.script)
    try:
        # Bytes, not text mode: the file's SHA-256 is checked, so no newline may be translated.
        script_text = script_path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"cannot read --script {script_path} ({exc}); pass the train_gpt.py "
                           "that produced the logs.") from None
    check_script(script_text, str(script_path), runs)
    shipped = (script_text if args.wrap == "none"
               else make_wrapper(script_source(script_text), args.wrap))
    if not same_source(script_source(shipped), runs[0].source):
        raise PackageError(f"the {args.wrap} wrapper of {script_path} does not unwrap to its "
                           "source; report this bug.")
    shipped_name = f"the train_gpt.py to ship ({args.wrap} wrap)"
    check_code_bytes(shipped, shipped_name, runs)
    check_shipped_script(shipped, shipped_name if args.wrap != "none" else str(script_path), runs)
    artifacts = find_artifacts(runs, args.logs, args.artifacts)
    for run, artifact in zip(runs, artifacts):
        check_artifact(run, artifact)
    track = NON_RECORD_TRACK if args.non_record else TRACK
    out_root = Path(args.out_root or REPO_ROOT / "records" / f"track_{track}")
    folder = out_root / f"{args.date}_{args.name}"
    if folder.exists() and not args.force:
        raise PackageError(f"{folder} already exists; pass --force to replace it or choose "
                           "another --name.")

    sub = build_submission(runs, args.author or _git_user(), args.github_id, args.name,
                           args.date, args.non_record)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out_root))
    try:
        (tmp / "train_gpt.py").write_bytes(shipped.encode("utf-8"))
        for run, path, artifact in zip(runs, args.logs, artifacts):
            shutil.copyfile(path, tmp / f"train_seed{run.seed}.log")
            shutil.copyfile(artifact, tmp / artifact_name(run.seed))
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        (tmp / "README.md").write_text(render_readme(sub, runs, folder), encoding="utf-8")
        if (REPO_ROOT / "requirements.txt").is_file():
            shutil.copyfile(REPO_ROOT / "requirements.txt", tmp / "requirements.txt")
        check_folder(tmp, expected_name=folder.name, options=options)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", help="short name, e.g. SP8192_LoopLoRA")
    ap.add_argument("--logs", nargs="+", help="one logs/{RUN_ID}.txt per seed")
    ap.add_argument("--author", default=None, help="default: git config user.name")
    ap.add_argument("--github-id", default="", dest="github_id")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--script", default=str(REPO_ROOT / "train_gpt.py"),
                    help="the file the runs ran (its SHA-256 and bytes must be those of each "
                         "log's script line), or the plain source of the wrapper they ran; "
                         "default: train_gpt.py")
    ap.add_argument("--wrap", choices=("none", "lzma", "brotli"), default="none",
                    help="ship --script as is, or a self-extracting wrapper made of it; either "
                         "way the file shipped must be the one the runs ran, or a wrapper holding "
                         "exactly that file")
    ap.add_argument("--out-root", default=None, dest="out_root",
                    help="default: records/track_10min_16mb "
                         "(records/track_non_record_16mb with --non-record)")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
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
    ap.add_argument("--full-val-tokens", type=int, metavar="N", dest="full_val_tokens",
                    help="the token count of the whole validation split, for when the "
                         "fineweb_val_*.bin shards of the runs' DATA_PATH are not here (a relative "
                         "DATA_PATH is looked for from the current directory); when they are, "
                         "they give the count and must hold the challenge's 50,000 documents")
    ap.add_argument("--check", metavar="FOLDER",
                    help="re-validate an existing submission folder: logs, submission.json, "
                         "README, script and artifact hashes, curves, validation tokens, hardware")
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
                    help="only write --script wrapped with --wrap to PATH (run that file, so the "
                         "artifact line counts the wrapper's bytes), then stop")
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
    options = Options(args.full_val_tokens, args.rescore, overrides, args.nproc,
                      args.rescore_tolerance)
    try:
        if args.make_wrapper:
            if args.wrap == "none":
                ap.error("--make-wrapper needs --wrap lzma or --wrap brotli")
            source = Path(args.script).read_bytes().decode("utf-8")
            Path(args.make_wrapper).write_text(make_wrapper(source, args.wrap), encoding="utf-8")
            print(f"wrote {args.make_wrapper}: {len(source.encode())} -> {Path(args.make_wrapper).stat().st_size} code bytes")
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
            ap.error("--name and --logs are required unless --check is given")
        folder = package(args, options)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}; fill in the README's 'What and why', "
          f"then re-check it with --check {folder}")
    if not args.rescore:
        print(NOT_RESCORED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
