#!/usr/bin/env python3
"""Package Parameter Golf run logs into a submission folder, or re-check one.

Usage, from the repository root:

    python3 records/package.py --name ShortName --logs logs/a.txt logs/b.txt logs/c.txt \\
        [--author NAME] [--github-id ID] [--date YYYY-MM-DD] [--script train_gpt.py] \\
        [--wrap none|lzma|brotli] [--out-root records/track_10min_16mb] [--force] [--non-record]
    python3 records/package.py --check records/track_10min_16mb/2026-04-09_ShortName

Packaging writes `{out-root}/{date}_{ShortName}/` with train_gpt.py (as is, or as a small
self-extracting wrapper), one `train_seed{SEED}.log` per run, submission.json, a README.md
skeleton and requirements.txt. Every log is validated before anything is written; a refusal
exits with status 2 and one sentence saying what is wrong and what to do. The new folder is
then re-checked exactly as `--check` does.

Nothing a log states is taken on trust: the score is re-read from the line of the last stage
that ran, the artifact size is code + model bytes, and the code bytes are recomputed from the
logged source. A log whose lines disagree (an edited score, stage or size, a repeated line)
is refused, so a hand-edited log can neither be packaged nor pass `--check`.

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
import json
import lzma
import os
import re
import shlex
import shutil
import statistics
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
ONCE_TAGS = ("artifact", "final_score", *(f"final_{s}" for s in STAGE_ORDER))
# Seeds of one submission may differ only in these; anything else means a different run.
PER_RUN_HPARAMS = {"SEED", "RUN_ID", "DATA_PATH", "TOKENIZER_PATH", "NLL_DUMP_PATH"}
# Always spelled out in the reproduction command when the script's default can't be found.
KEY_HPARAMS = (
    "VOCAB_SIZE NUM_LAYERS MODEL_DIM NUM_HEADS NUM_KV_HEADS MLP_MULT TRAIN_SEQ_LEN "
    "TRAIN_BATCH_TOKENS LOOP_START LOOP_END NUM_LOOPS ENABLE_LOOPING_AT PASS_LORA_RANK "
    "PASS_LORA_TARGETS PASS_EMBED MATRIX_BITS EMBED_BITS COMPRESSOR EVAL_STRIDE TTT_ENABLED "
    "TTT_PARAMS TTT_OPTIMIZER TTT_EPOCHS TTT_LR TTT_CHUNK_TOKENS MAX_WALLCLOCK_SECONDS"
).split()
BPB_TOLERANCE = 5e-9  # values are stored with 8 decimals


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
    # Where the checked lines are: tag -> (line number, line), for ONCE_TAGS and score_withheld.
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


def validate_runs(runs: list[RunLog], non_record: bool) -> None:
    """Refuse anything that must not become a submission; raises PackageError."""
    for run in runs:
        n = run.name
        if run.val_tokens_limit > 0 or run.val_tokens_limit_lines:
            raise PackageError(f"{n} scored only a prefix of the validation split "
                               f"(VAL_TOKENS_LIMIT={run.val_tokens_limit}); rerun with "
                               "VAL_TOKENS_LIMIT=0 to get a submittable score.")
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
        if non_record:
            continue
        if cap is None or not 0 < cap <= TRACK_WALLCLOCK_SECONDS:
            shown = run.hparams.get("MAX_WALLCLOCK_SECONDS", cap)
            raise PackageError(f"{n} ran with MAX_WALLCLOCK_SECONDS={shown}, which is not a "
                               f"{TRACK_WALLCLOCK_SECONDS}s-track run; rerun with MAX_WALLCLOCK_"
                               f"SECONDS<={TRACK_WALLCLOCK_SECONDS} or pass --non-record.")
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


def check_script(script_text: str, script_name: str, runs: list[RunLog]) -> None:
    source = script_source(script_text)
    if not same_source(source, runs[0].source):
        line = _first_difference(runs[0].source, source)
        raise PackageError(f"{script_name} differs from the source recorded in {runs[0].name} "
                           f"(from line {line}); pass --script with the file that produced "
                           "the logs.")


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
            "full_validation_split": all(r.val_tokens_limit == 0 for r in runs),
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
    if "VOCAB_SIZE" in first.hparams:
        data = Path(os.path.relpath(REPO_ROOT, folder.resolve())) / "data"
        vocab = first.hparams["VOCAB_SIZE"]
        env += [f"DATA_PATH={data.as_posix()}/datasets/fineweb10B_sp{vocab}",
                f"TOKENIZER_PATH={data.as_posix()}/tokenizers/fineweb_{vocab}_bpe.model"]
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
            "## Compliance", ""]
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


def check_folder(folder: Path, expected_name: str | None = None) -> dict:
    """Re-validate a submission folder against its own logs; returns submission.json."""
    try:
        sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
        script_text = (folder / "train_gpt.py").read_text(encoding="utf-8")
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
    validate_runs(runs, non_record)
    for path, run in zip(log_paths, runs):
        if path.name != f"train_seed{run.seed}.log":
            raise PackageError(f"{path} holds the run with SEED={run.seed}; "
                               f"rename it to train_seed{run.seed}.log.")
    check_script(script_text, str(folder / "train_gpt.py"), runs)
    check_code_bytes(script_text, str(folder / "train_gpt.py"), runs)
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
    return sub


def _git_user() -> str:
    try:
        out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True,
                             cwd=REPO_ROOT)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def package(args: argparse.Namespace) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise PackageError(f"--name {args.name!r} must be letters, digits, '_', '-' or '.'; "
                           "pick a short name like SP8192_LoopLoRA.")
    try:
        dt.date.fromisoformat(args.date)
    except ValueError:
        raise PackageError(f"--date {args.date!r} is not YYYY-MM-DD; "
                           "pass e.g. --date 2026-04-09.") from None
    runs = [read_log(Path(p)) for p in args.logs]
    validate_runs(runs, args.non_record)
    script_path = Path(args.script)
    try:
        script_text = script_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"cannot read --script {script_path} ({exc}); pass the train_gpt.py "
                           "that produced the logs.") from None
    check_script(script_text, str(script_path), runs)
    shipped = (script_text if args.wrap == "none"
               else make_wrapper(script_source(script_text), args.wrap))
    if not same_source(script_source(shipped), runs[0].source):
        raise PackageError(f"the {args.wrap} wrapper of {script_path} does not unwrap to its "
                           "source; report this bug.")
    check_code_bytes(shipped, f"the train_gpt.py to ship ({args.wrap} wrap)", runs)
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
        (tmp / "train_gpt.py").write_text(shipped, encoding="utf-8")
        for run, path in zip(runs, args.logs):
            shutil.copyfile(path, tmp / f"train_seed{run.seed}.log")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        (tmp / "README.md").write_text(render_readme(sub, runs, folder), encoding="utf-8")
        if (REPO_ROOT / "requirements.txt").is_file():
            shutil.copyfile(REPO_ROOT / "requirements.txt", tmp / "requirements.txt")
        check_folder(tmp, expected_name=folder.name)
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
    ap.add_argument("--script", default=str(REPO_ROOT / "train_gpt.py"))
    ap.add_argument("--wrap", choices=("none", "lzma", "brotli"), default="none")
    ap.add_argument("--out-root", default=None, dest="out_root",
                    help="default: records/track_10min_16mb "
                         "(records/track_non_record_16mb with --non-record)")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
    ap.add_argument("--non-record", action="store_true", dest="non_record",
                    help="allow runs without the 600 s clock (MAX_WALLCLOCK_SECONDS=0 or >600)")
    ap.add_argument("--check", metavar="FOLDER", help="re-validate an existing submission folder")
    ap.add_argument("--make-wrapper", metavar="PATH", dest="make_wrapper",
                    help="only write --script wrapped with --wrap to PATH (run that file, so the "
                         "artifact line counts the wrapper's bytes), then stop")
    args = ap.parse_args(argv)
    try:
        if args.make_wrapper:
            if args.wrap == "none":
                ap.error("--make-wrapper needs --wrap lzma or --wrap brotli")
            source = Path(args.script).read_text(encoding="utf-8")
            Path(args.make_wrapper).write_text(make_wrapper(source, args.wrap), encoding="utf-8")
            print(f"wrote {args.make_wrapper}: {len(source.encode())} -> {Path(args.make_wrapper).stat().st_size} code bytes")
            return 0
        if args.check:
            sub = check_folder(Path(args.check))
            print(f"ok: {args.check} matches its {len(sub['seeds'])} logs, "
                  f"val_bpb {sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}")
            return 0
        if not args.name or not args.logs:
            ap.error("--name and --logs are required unless --check is given")
        folder = package(args)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}; fill in the README's 'What and why', "
          f"then re-check it with --check {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
