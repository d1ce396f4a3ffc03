"""Paired A/B comparison of training variants, document by document (meant to resolve ~0.002 bpb).

    python3 tests/bench_ab.py --base PRESET=cpu ITERATIONS=150 --stage sliding \
        --variant base --variant no_xsa XSA_LAST_N=0 --seeds 1 2 3

One run's val_bpb carries the luck of which documents the validation set holds; two runs scored on
the same documents share that luck, so it cancels in their difference. Every variant runs with the
same SEED (same init, same data order), each run dumps the NLL of every validation target
(NLL_DUMP_PATH), and B is compared with A document by document: per seed,
delta = (sum nll_B - sum nll_A) / ln 2 / sum bytes, in bits per byte. A percentile bootstrap over
documents (the same resampled documents for every seed and variant) gives each seed's 95% interval.
That interval knows nothing of seed noise: another seed trains another model, which can be better on
these documents for real (at tiny scale an A/A pair's document interval of the mean of seeds 1-5 was
[+0.017, +0.089]). So the mean over seeds gets a seed+document interval (resample the seeds, then the
documents, the same draws for every variant) and, from 2 seeds, a Student-t interval of the per-seed
deltas. The A/A row (--aa, on by default) is the first variant rerun at SEED+1000.

The verdict says better or worse only when the seed+document and t intervals exclude 0 and |mean
delta| exceeds the A/A row's: with few seeds the bootstrap has only a handful of seeds to draw from
and runs short (in simulated A/A pairs dominated by seed noise it covered 0 in 60% of cases at 2
seeds, 72% at 3 and 80% at 5, the t interval in 92-93%; see tests/test_bench_ab.py), and at one seed no
interval holds seed noise at all, which the A/A delta then stands in for. Anything else is "not
resolved", with the reason.

The dump holds the last evaluation stage a run does (evaluate_artifact in train_gpt.py: roundtrip,
then sliding if SLIDING_ENABLED=1, then ttt if TTT_ENABLED=1; prequant is never dumped). --stage
sets those switches so that stage comes last and checks every run's nll_dump line. Documents are
cut at BOS as train_gpt.split_documents cuts them, from the validation tokens each run logs it
scored (its data line), so PRESET and VAL_TOKENS_LIMIT count exactly as the run resolved them.
Setting values may name {seed} and {variant}; --json writes every number. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_sweep import parse_pairs

ROOT = Path(__file__).resolve().parents[1]
BOS_ID = 1  # train_gpt.BOS_ID: the challenge's tokenizers put BOS at 1
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_WORDS = 20240520, 1, 256
AA_SEED_OFFSET = 1000
# The switches that make a stage the last one train_gpt.py evaluates, hence the one it dumps.
STAGE_SWITCHES = {
    "roundtrip": {"SLIDING_ENABLED": "0", "TTT_ENABLED": "0"},
    "sliding": {"SLIDING_ENABLED": "1", "TTT_ENABLED": "0"},
    "ttt": {"TTT_ENABLED": "1"},
}
SET_BY_TOOL = ("SEED", "RUN_ID", "NLL_DUMP_PATH")


# ---- statistics: pure functions on arrays ----

def read_validation_tokens(data_path: Path, count: int) -> np.ndarray:
    """The first `count` tokens of the sorted fineweb_val_[0-9]*.bin shards, as train_gpt.py loads them."""
    files = sorted(data_path.glob("fineweb_val_[0-9]*.bin"))  # [0-9]: not the fineweb_val_bytes_* sidecars
    parts, have = [], 0
    for path in files:
        if have >= count:
            break
        header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_WORDS)
        if len(header) < SHARD_HEADER_WORDS or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
            raise SystemExit(f"{path}: not a version-{SHARD_VERSION} challenge shard (magic {SHARD_MAGIC}).")
        parts.append(np.fromfile(path, dtype="<u2", count=int(header[2]), offset=4 * SHARD_HEADER_WORDS))
        have += len(parts[-1])
    if have < count:
        raise SystemExit(f"the validation shards in {data_path} hold {have} tokens, but the runs scored {count}.")
    return np.concatenate(parts)[:count]


def document_ids(tokens: np.ndarray, bos: int = BOS_ID) -> np.ndarray:
    """Per target position, the index of its document. A document's targets run from just after its
    BOS up to and including the next BOS (predicting the end of the document, as split_documents has
    it); targets before the first BOS form document 0. Position 0 is never a target."""
    bos_before = np.cumsum(np.asarray(tokens) == bos)[:-1]  # BOS tokens at positions < p, for p >= 1
    ids = np.concatenate([[0], bos_before])
    if len(tokens) and tokens[0] == bos:
        ids = np.maximum(ids - 1, 0)
    return ids


def per_document(dump, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of NLL (nats) and of bytes over each document's scored targets (zeros for the unscored)."""
    docs, num_docs = doc_ids[dump["pos"]], int(doc_ids.max()) + 1
    return (np.bincount(docs, weights=dump["nll"], minlength=num_docs),
            np.bincount(docs, weights=dump["bytes"], minlength=num_docs))


def paired_delta(nll_a: np.ndarray, nll_b: np.ndarray, nbytes: np.ndarray) -> float:
    """B's bits per byte minus A's on the same targets (or documents): byte-weighted, not a mean of ratios."""
    return float((np.sum(nll_b) - np.sum(nll_a)) / math.log(2) / np.sum(nbytes))


def resampled_deltas(diffs: np.ndarray, nbytes: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """paired_delta of every seed with documents resampled with replacement: (resamples, seeds).

    diffs: (docs,) or (docs, seeds) per-document NLL differences B - A in nats; nbytes: (docs,). Every
    seed (and, given the same number of documents, every call) draws the same resamples, so seeds and
    variants are judged on the same documents."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    docs = len(nbytes)
    columns = np.column_stack([np.asarray(diffs, dtype=np.float64).reshape(docs, -1), nbytes])
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // docs)  # resamples per matrix product: a few million counts in memory
    deltas = []
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        picks = rng.integers(0, docs, size=(n, docs)) + docs * np.arange(n)[:, None]
        counts = np.bincount(picks.ravel(), minlength=n * docs).reshape(n, docs).astype(np.float64)
        sums = counts @ columns  # the seeds score the same bytes
        deltas.append(sums[:, :-1] / math.log(2) / sums[:, -1:])
    return np.concatenate(deltas)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, [tail, 100 - tail], axis=0).T


def bootstrap_ci(diffs: np.ndarray, nbytes: np.ndarray, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> np.ndarray:
    """Percentile intervals of paired_delta with documents resampled: (seeds + 1, 2), each seed's
    interval, then that of the mean over seeds. They leave seed noise out (see the module docstring)."""
    deltas = resampled_deltas(diffs, nbytes, resamples, seed)
    return percentile_interval(np.column_stack([deltas, deltas.mean(axis=1)]), level)


def seed_document_ci(diffs: np.ndarray, nbytes: np.ndarray, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> np.ndarray:
    """Percentile interval of the mean delta over seeds with seeds resampled with replacement, then
    documents (one document resample shared by the drawn seeds, since every seed scores the same
    documents). The draws depend only on the numbers of seeds and documents, so every variant gets
    the same ones; the documents are those of bootstrap_ci, so at one seed the two intervals agree."""
    deltas = resampled_deltas(diffs, nbytes, resamples, seed)
    n, seeds = deltas.shape
    picks = np.random.default_rng([seed, 1]).integers(0, seeds, size=(n, seeds)) + seeds * np.arange(n)[:, None]
    weights = np.bincount(picks.ravel(), minlength=n * seeds).reshape(n, seeds) / seeds
    return percentile_interval((deltas * weights).sum(axis=1), level)


# Student-t 0.975 quantiles for 1..30 degrees of freedom (mpmath); beyond, the Cornish-Fisher series
# in 1/df, within 1e-4 of the quantile from df 30 on.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: list[float]) -> list[float] | None:
    """Student-t 95% interval of the mean of the per-seed deltas (None for one seed): each seed's
    delta already holds its document noise, so their spread holds both kinds."""
    if len(values) < 2:
        return None
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    mean = statistics.mean(values)
    return [mean - half, mean + half]


def verdict(mean_delta: float, seed_document: list[float], t_ci: list[float] | None,
            aa_mean_delta: float | None) -> str:
    """better / worse (lower bpb is better) only when both intervals exclude 0 on the side of the
    mean and the mean moves more than the A/A row's does; otherwise not resolved, and why."""
    def clear_of_zero(ci):
        return (ci[1] < 0 and mean_delta < 0) or (ci[0] > 0 and mean_delta > 0)
    if not clear_of_zero(seed_document):
        return "not resolved (interval covers 0)"
    if t_ci is not None and not clear_of_zero(t_ci):
        return "not resolved (t-interval covers 0)"
    if aa_mean_delta is None:
        return "not resolved (no A/A row)"
    if abs(mean_delta) <= abs(aa_mean_delta):
        return "not resolved (within A/A)"
    return "better" if mean_delta < 0 else "worse"


def compare(ref_nll: list[np.ndarray], row_nll: list[np.ndarray], doc_bytes: np.ndarray, resamples: int) -> dict:
    """Per-document NLL sums of A and of B at each seed (same documents) -> B's deltas with their
    document intervals per seed, and for the mean over seeds its document, seed+document and t intervals."""
    deltas = [paired_delta(a, b, doc_bytes) for a, b in zip(ref_nll, row_nll)]
    diffs = np.column_stack([b - a for a, b in zip(ref_nll, row_nll)])
    cis = bootstrap_ci(diffs, doc_bytes, resamples).tolist()
    return {"delta": deltas, "delta_ci": cis[:-1], "mean_delta": statistics.mean(deltas),
            "mean_delta_ci_documents": cis[-1],
            "mean_delta_ci_seed_document": seed_document_ci(diffs, doc_bytes, resamples).tolist(),
            "mean_delta_ci_t": t_interval(deltas),
            "std_delta": statistics.stdev(deltas) if len(deltas) > 1 else None}


def check_same_targets(ref: dict, ref_label: str, dump: dict, label: str) -> None:
    """Refuse to pair runs that scored different validation targets (or counted their bytes differently)."""
    if not np.array_equal(ref["pos"], dump["pos"]):
        raise SystemExit(
            f"bench_ab: {label} scored {len(dump['pos'])} validation targets and {ref_label} {len(ref['pos'])}, "
            f"not the same positions; paired runs must score the same tokens (keep DATA_PATH, VAL_TOKENS_LIMIT, "
            f"EVAL_SEQ_LEN and the stage settings the same in every variant).")
    if not np.array_equal(ref["bytes"], dump["bytes"]):
        raise SystemExit(f"bench_ab: {label} counted other bytes than {ref_label} for the same targets; "
                         f"paired runs must use the same tokenizer, byte sidecars and validation data.")


# ---- running the variants ----

def run_settings(base: dict[str, str], settings: dict[str, str], name: str, stage: str) -> dict[str, str]:
    merged = {**base, **settings}
    for key in SET_BY_TOOL:
        if key in merged:
            raise SystemExit(f"bench_ab: {name} sets {key}; the tool sets it for every run (use --seeds for SEED).")
    for key, value in STAGE_SWITCHES[stage].items():
        if merged.get(key, value) != value:
            raise SystemExit(f"bench_ab: --stage {stage} needs {key}={value}, but {name} sets {key}={merged[key]}; "
                             f"drop the setting or choose the stage it makes last.")
    return {**merged, **STAGE_SWITCHES[stage]}


def run_once(env: dict[str, str], workdir: Path, script: Path, nproc: int) -> tuple[str, str]:
    """Run the script; return its data line (the validation tokens it scored) and its dumped stage."""
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full.update(env)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, str(script)], cwd=workdir, env=full,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        log = workdir / "logs" / f"{env['RUN_ID']}.txt"
        raise SystemExit(f"run {env['RUN_ID']} failed (log: {log}):\n{proc.stderr[-3000:]}")
    data = re.search(r"^data (val_tokens:\d+ tokenizer:\S+ (?:tokenizer_sha256:\w+ )?data_path:\S+)", proc.stdout, re.M)
    dumped = re.search(r"^nll_dump stage:(\w+)", proc.stdout, re.M)
    if not data or not dumped:
        raise SystemExit(f"run {env['RUN_ID']}: no data or nll_dump line in its output; is {script} a train_gpt.py?")
    return data[1], dumped[1]


def signed(x: float) -> str:
    return f"{x:+.4f}"


def spread(values: list[float], fmt=signed) -> str:
    return fmt(values[0]) if len(values) == 1 else f"{fmt(statistics.mean(values))} ± {statistics.stdev(values):.4f}"


def interval(ci) -> str:
    return f"[{signed(ci[0])}, {signed(ci[1])}]"


class Documents:
    """The validation documents of the first run; every later run must have scored the same targets."""

    def __init__(self, data_line: str, workdir: Path, dump: dict, tag: str):
        fields = dict(item.split(":", 1) for item in data_line.split())
        data_path = Path(fields["data_path"])
        tokens = read_validation_tokens(data_path if data_path.is_absolute() else workdir / data_path,
                                        int(fields["val_tokens"]))
        self.data_line, self.tag, self.dump = data_line, tag, dump
        self.ids = document_ids(tokens, BOS_ID)
        self.scored = np.unique(self.ids[dump["pos"]])  # documents without a scored target take no part
        self.nbytes = per_document(dump, self.ids)[1][self.scored]

    def nll(self, data_line: str, dump: dict, tag: str) -> np.ndarray:
        """Per-document NLL sums of a run, once it is shown to pair with the first."""
        if data_line != self.data_line:
            raise SystemExit(f"bench_ab: {tag} scored other validation data ({data_line}) than {self.tag} "
                             f"({self.data_line}); keep DATA_PATH, TOKENIZER_PATH and VAL_TOKENS_LIMIT the same.")
        check_same_targets(self.dump, self.tag, dump, tag)
        return per_document(dump, self.ids)[0][self.scored]

    def bpb(self, nll: np.ndarray) -> float:
        return float(nll.sum() / math.log(2) / self.nbytes.sum())


def print_table(results: dict[str, dict], ref: str, seeds: list[int]) -> None:
    if len(seeds) == 1:
        header = ["variant", "bpb", "Δ", "95% CI of Δ, documents only (1 seed: seed noise not covered, "
                                        "only the A/A row shows it)", "verdict"]
    else:
        header = ["variant", "bpb", "Δ (mean ± std over seeds)", "95% CI of mean Δ, seed+document",
                  "95% t-CI of mean Δ over seeds", "verdict"] + [f"seed {s}: Δ [document CI]" for s in seeds]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row, r in results.items():
        cells = [f"{row} (A)" if row == ref else row, spread(r["bpb"], lambda x: f"{x:.4f}")]
        if row == ref:
            cells += ["–"] * (len(header) - 2)
        else:
            cells += [spread(r["delta"]), interval(r["mean_delta_ci_seed_document"])]
            if len(seeds) > 1:
                cells.append(interval(r["mean_delta_ci_t"]))
            cells.append(r["verdict"])
            if len(seeds) > 1:
                cells += [f"{signed(d)} {interval(ci)}" for d, ci in zip(r["delta"], r["delta_ci"])]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings shared by every run")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a name then its settings; repeat, two or more; the first is the reference A")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--stage", choices=list(STAGE_SWITCHES), default="ttt", help="the evaluation stage compared")
    p.add_argument("--workdir", type=Path, default=ROOT)
    p.add_argument("--script", type=Path, default=ROOT / "train_gpt.py", help="the training script to run")
    p.add_argument("--torchrun", type=int, default=1, metavar="N", help="processes per run (torchrun when > 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at once; each gets OMP_NUM_THREADS=cores/N unless it is set")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples of the documents")
    p.add_argument("--aa", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also run A with SEED+{AA_SEED_OFFSET} for an A/A row")
    p.add_argument("--json", type=Path, help="write every number here")
    args = p.parse_args(argv)
    names = [name for name, *_ in args.variant]
    if len(names) < 2 or len(set(names)) != len(names) or not all(re.fullmatch(r"[\w.-]+", n) for n in names):
        raise SystemExit("bench_ab: give two or more --variant NAME ..., with distinct names made of letters, "
                         "digits, '.', '-' and '_'.")
    if args.jobs < 1:
        raise SystemExit("bench_ab: --jobs must be 1 or more.")
    base, ref = parse_pairs(args.base), names[0]
    rows = {name: parse_pairs(settings) for name, *settings in args.variant}
    aa_row = f"A/A: {ref} seed+{AA_SEED_OFFSET}"
    if args.aa:
        rows[aa_row] = rows[ref]
    # (row, variant, seed of the comparison, seed of the run); the A/A row is A at another seed.
    runs = [(row, ref if row == aa_row else row, seed, seed + AA_SEED_OFFSET * (row == aa_row))
            for seed in args.seeds for row in rows]
    workdir, script = args.workdir.resolve(), args.script.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    tags = {(row, seed): f"ab_{name}{'_aa' * (row == aa_row)}_s{run_seed}" for row, name, seed, run_seed in runs}
    for tag in tags.values():
        if (workdir / "logs" / f"{tag}.txt").exists():
            raise SystemExit(f"bench_ab: {workdir}/logs/{tag}.txt exists from an earlier comparison; "
                             f"remove the ab_* logs or choose another --workdir.")

    def launch(run):
        row, name, seed, run_seed = run
        tag = tags[row, seed]
        env = {k: v.replace("{seed}", str(run_seed)).replace("{variant}", name)
               for k, v in run_settings(base, rows[row], name, args.stage).items()}
        dump_path = workdir / "logs" / f"{tag}.npz"
        env.update(SEED=str(run_seed), RUN_ID=tag, NLL_DUMP_PATH=str(dump_path))
        env.setdefault("ARTIFACT_PATH", str(workdir / "logs" / f"{tag}.ptz"))
        env.setdefault("CHECKPOINT_PATH", "")  # the comparison needs no checkpoint; set one to keep it
        if args.jobs > 1 and "OMP_NUM_THREADS" not in env and "OMP_NUM_THREADS" not in os.environ:
            # runs side by side each on all cores slow each other down several times over
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
        t0 = time.perf_counter()
        data_line, dumped = run_once(env, workdir, script, args.torchrun)
        if dumped != args.stage:
            raise SystemExit(f"bench_ab: {tag} dumped its {dumped} stage, not {args.stage}; is {script} a train_gpt.py "
                             f"whose last stage follows SLIDING_ENABLED / TTT_ENABLED?")
        print(f"{tag}: done ({time.perf_counter() - t0:.0f}s)", flush=True)
        with np.load(dump_path) as f:
            return data_line, {key: f[key] for key in ("pos", "nll", "bytes")}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(launch, run) for run in runs]
        try:
            finished = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # runs not yet started; those running finish their subprocess
            raise
    nll: dict[tuple[str, int], np.ndarray] = {}
    docs = None
    for (row, name, seed, run_seed), (data_line, dump) in zip(runs, finished):
        tag = tags[row, seed]
        docs = docs or Documents(data_line, workdir, dump, tag)
        nll[row, seed] = docs.nll(data_line, dump, tag)
        print(f"{name} seed {run_seed}: {args.stage} bpb={docs.bpb(nll[row, seed]):.4f}", flush=True)

    results = {}
    for row in rows:
        results[row] = {"settings": rows[row], "seeds": [s + AA_SEED_OFFSET * (row == aa_row) for s in args.seeds],
                        "bpb": [docs.bpb(nll[row, s]) for s in args.seeds]}
        if row != ref:
            results[row].update(compare([nll[ref, s] for s in args.seeds], [nll[row, s] for s in args.seeds],
                                        docs.nbytes, args.bootstrap))
    aa_mean_delta = results[aa_row]["mean_delta"] if args.aa else None
    for row, r in results.items():
        if row == aa_row:  # the yardstick; its interval should cover 0, and the row says when it does not
            low, high = r["mean_delta_ci_seed_document"]
            r["verdict"] = "A/A: interval covers 0" if low <= 0 <= high else "A/A: interval excludes 0, misses noise"
        elif row != ref:
            r["verdict"] = verdict(r["mean_delta"], r["mean_delta_ci_seed_document"], r["mean_delta_ci_t"],
                                   aa_mean_delta)
    print(f"\n{args.stage} stage: {len(docs.nbytes)} documents, {len(docs.dump['pos']):,} targets, "
          f"{int(docs.nbytes.sum()):,} bytes; Δ = bpb - bpb of {ref} at the same seed; "
          f"95% intervals from {args.bootstrap} resamples of the documents (seed+document: of the seeds, "
          f"then the documents)")
    print_table(results, ref, args.seeds)
    if args.json:
        args.json.write_text(json.dumps({
            "stage": args.stage, "reference": ref, "seeds": args.seeds, "bootstrap": args.bootstrap,
            "documents": len(docs.nbytes), "targets": len(docs.dump["pos"]), "bytes": int(docs.nbytes.sum()),
            "base": base, "data": docs.data_line, "variants": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
