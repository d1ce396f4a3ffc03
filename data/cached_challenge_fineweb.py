"""Download the official challenge shards and tokenizer from Hugging Face.

    python3 data/cached_challenge_fineweb.py --variant sp1024                  # 80 train shards
    python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 1  # smoke test
    MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf \
        python3 data/cached_challenge_fineweb.py --variant sp8192
    python3 data/cached_challenge_fineweb.py --variant sp8192_caseops             # CaseOps records' data

Writes `data/datasets/fineweb10B_{variant}/fineweb_{val,train}_*.bin` (all val shards, the first
N train shards) and the tokenizer files into `data/tokenizers/`. The source is the Hugging Face
dataset repo `$MATCHED_FINEWEB_REPO_ID` (default willdepueoai/parameter-golf, which holds sp1024
only), files under `$MATCHED_FINEWEB_REMOTE_ROOT_PREFIX` (default `datasets`).

`--variant sp8192_caseops` fetches the lossless-case (CaseOps, data/caseops.py) export of the
public records (PR #1729) from `romeerp/parameter-golf-caseops-v1` (unless $MATCHED_FINEWEB_REPO_ID
says otherwise): its dataset `fineweb10B_sp8192_lossless_caps_caseops_v1_reserved` with the
official 50,000-document validation split and one byte sidecar per val shard. It lands under
names train_gpt.py can default to:
    data/datasets/fineweb10B_sp8192_caseops/fineweb_train_NNNNNN.bin, fineweb_val_NNNNNN.bin
    data/datasets/fineweb10B_sp8192_caseops/fineweb_val_bytes_NNNNNN.bin   (original bytes per token)
    data/tokenizers/fineweb_8192_caseops.model (and .vocab)
and every sidecar is checked against its val shard (same token count, 0 on BOS) after download.

Manifest format (as written by the official export and read by the official downloader):
`{root}/manifest.json` holds `datasets: [{name, tokenizer_name, stats: {files_train, files_val}}]`
and `tokenizers: [{name, model_path, vocab_path}]`, tokenizer paths relative to `{root}`.
Shards are `{root}/datasets/{name}/fineweb_{split}_{i:06d}.bin`, numbered from 0. The manifest is
fetched fresh on every run, so switching repos never reads a stale one. Files already present
with the expected size are skipped; needs `pip install huggingface-hub`. Each file is downloaded
into `{output-root}/.download_staging/` and renamed into place when complete, so an interrupted
download never leaves a partial file under a shard's name.

exit status: 0 done; 2 a bad option or option value (an unknown --variant, a negative
--train-shards or more than the repo holds, a variant the repo does not publish); 3 the manifest
or a downloaded file is malformed (not JSON, unsafe paths, a sidecar that does not fit its
shard); 4 the --output-root is a file or not writable, or a write failed; 5 the download failed
(no huggingface_hub, the network, access to the repo); 130 interrupted. Every refusal is one
line on stderr starting "error:".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # data/caseops.py checks the sidecars

VARIANTS = ("sp1024", "sp4096", "sp8192", "sp8192_caseops")
REPO_ENV, ROOT_ENV = "MATCHED_FINEWEB_REPO_ID", "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
DEFAULT_REPO, DEFAULT_ROOT = "willdepueoai/parameter-golf", "datasets"
OTHER_VARIANTS_REPO = "kevclark/parameter-golf"  # sp4096 and sp8192 exports used by the records
CASEOPS_REPO = "romeerp/parameter-golf-caseops-v1"
# CaseOps variants: the dataset's name in that export; locally it becomes fineweb10B_{variant}.
CASEOPS_DATASETS = {"sp8192_caseops": "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"}
TOKENIZER_KEYS = ("model_path", "vocab_path", "path")

# The data tools' exit statuses (as in make_local_dataset.py, which this file does not import:
# planning a download needs neither numpy nor sentencepiece), plus one for a failed download.
EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 2, 3, 4, 5, 130


class DataToolError(SystemExit):
    """A refusal: str() is the one-line reason, .code the exit status of its cause."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.code = status


def fail(message: str, status: int) -> NoReturn:
    raise DataToolError(message, status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line errors are one `error:` line with EXIT_USAGE, not usage text."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help.", EXIT_USAGE)


# ---- MANIFEST AND PLAN (pure, no network) ----

def remote_dataset_name(variant: str) -> str:
    return CASEOPS_DATASETS.get(variant, f"fineweb10B_{variant}")


def default_repo(variant: str) -> str:
    return CASEOPS_REPO if variant in CASEOPS_DATASETS else DEFAULT_REPO


def vocab_size_of(variant: str) -> str:
    return variant.removeprefix("sp").split("_")[0]


def check_manifest(manifest: object, repo_id: str) -> None:
    """The manifest must be an object whose `datasets` and `tokenizers` are lists of objects."""
    lists = isinstance(manifest, dict) and all(
        isinstance(manifest.get(key, []), list) and all(isinstance(e, dict) for e in manifest.get(key, []))
        for key in ("datasets", "tokenizers"))
    if not lists:
        fail(f"the manifest of {repo_id} is not in the export's format (an object whose datasets and "
             f"tokenizers are lists of objects); set {REPO_ENV} to a copy of the official export.", EXIT_INPUT)


def dataset_entry(manifest: dict, variant: str, repo_id: str) -> dict:
    name = remote_dataset_name(variant)
    for entry in manifest.get("datasets", []):
        if entry.get("name") == name:
            return entry
    listed = ", ".join(str(e.get("name")) for e in manifest.get("datasets", [])) or "nothing"
    hint = (f"the CaseOps export is {CASEOPS_REPO}: unset {REPO_ENV} or set it to that"
            if variant in CASEOPS_DATASETS else
            f"{DEFAULT_REPO} publishes sp1024 only; for sp4096/sp8192 set {REPO_ENV}={OTHER_VARIANTS_REPO}")
    fail(f"{name} is not in the manifest of {repo_id} (it lists {listed}); {hint}.", EXIT_USAGE)


def shard_counts(entry: dict) -> tuple[int, int]:
    """(train, val) shard counts from `stats`, or from the entry itself in a flatter manifest."""
    stats = entry.get("stats") or entry
    try:
        return int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        fail(f"manifest entry {entry.get('name')} has no stats.files_train / stats.files_val counts; "
             f"set {REPO_ENV} to a copy of the official export.", EXIT_INPUT)


def tokenizer_paths(manifest: dict, entry: dict) -> list[str]:
    name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == name), None)
    paths = list(dict.fromkeys(str(tok[k]) for k in TOKENIZER_KEYS if tok and tok.get(k)))
    if not paths:
        fail(f"manifest has no downloadable tokenizer {name!r} for {entry.get('name')}; "
             f"set {REPO_ENV} to a copy of the official export.", EXIT_INPUT)
    return paths


def local_path(relative: str, output_root: Path) -> Path:
    """Where a file at `{root}/{relative}` lands: datasets/... and tokenizers/... under output_root."""
    parts = PurePosixPath(relative).parts
    if not parts or ".." in parts or PurePosixPath(relative).is_absolute():
        fail(f"manifest path {relative!r} is not a plain relative path; refusing to write outside "
             f"--output-root (set {REPO_ENV} to a trusted copy of the export).", EXIT_INPUT)
    return output_root.joinpath(*parts)


def local_caseops_path(relative: str, variant: str, output_root: Path) -> Path:
    """A CaseOps file under short local names: datasets/fineweb10B_{variant}/, tokenizers/fineweb_{V}_caseops.*"""
    path = local_path(relative, output_root)  # refuses unsafe paths first
    parts = PurePosixPath(relative).parts
    if parts[:2] == ("datasets", remote_dataset_name(variant)):
        return output_root.joinpath("datasets", f"fineweb10B_{variant}", *parts[2:])
    if parts[:1] == ("tokenizers",):
        return output_root / "tokenizers" / f"fineweb_{vocab_size_of(variant)}_caseops{path.suffix}"
    return path


def plan_downloads(manifest: dict, variant: str, train_shards: int, output_root: Path,
                   remote_root: str = DEFAULT_ROOT, repo_id: str = DEFAULT_REPO) -> list[tuple[str, Path]]:
    """(remote path in the repo, local path) for every file to fetch, val shards first."""
    check_manifest(manifest, repo_id)
    entry = dataset_entry(manifest, variant, repo_id)
    max_train, num_val = shard_counts(entry)
    if not 0 <= train_shards <= max_train:
        fail(f"--train-shards {train_shards} is not available: {entry['name']} on {repo_id} "
             f"has {max_train} train shards; ask for at most {max_train}.", EXIT_USAGE)
    sidecars = variant in CASEOPS_DATASETS or "val_bytes_glob" in entry
    shards = [f"fineweb_val_{i:06d}.bin" for i in range(num_val)]
    shards += [f"fineweb_val_bytes_{i:06d}.bin" for i in range(num_val) if sidecars]
    shards += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    relatives = [f"datasets/{entry['name']}/{s}" for s in shards] + tokenizer_paths(manifest, entry)
    prefix = f"{remote_root.strip('/')}/" if remote_root.strip("/") else ""
    if variant in CASEOPS_DATASETS:
        return [(prefix + r, local_caseops_path(r, variant, output_root)) for r in relatives]
    return [(prefix + r, local_path(r, output_root)) for r in relatives]


def check_sidecars(plan: list[tuple[str, Path]]) -> None:
    """Every downloaded byte sidecar must fit its val shard, or bits-per-byte would be wrong."""
    sidecars = [p for _, p in plan if p.name.startswith("fineweb_val_bytes_")]
    if not sidecars:
        return
    import caseops  # imported here: numpy is only needed where sidecars exist

    for sidecar in sidecars:
        val = sidecar.with_name(sidecar.name.replace("fineweb_val_bytes_", "fineweb_val_"))
        problem = caseops.sidecar_problem(val, sidecar)
        if problem:
            fail(problem, EXIT_INPUT)


def is_complete(path: Path, expected_size: int | None) -> bool:
    """Present with the remote size; without one, a shard must match its own header's count."""
    if not path.is_file():
        return False
    size = path.stat().st_size
    if expected_size is not None:
        return size == expected_size
    if path.suffix == ".bin":
        with path.open("rb") as f:
            header = f.read(12)
        return len(header) == 12 and size == 1024 + 2 * int.from_bytes(header[8:12], "little")
    return size > 0


# ---- DOWNLOAD ----

def hub_error(repo_id: str, what: str, exc: Exception) -> NoReturn:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the hub printed
    fail(f"could not fetch {what} from Hugging Face dataset {repo_id} ({reason}). "
         f"Check the network (or `huggingface-cli login` for a gated repo), or set {REPO_ENV} / "
         f"{ROOT_ENV} to another copy of the export.", EXIT_DOWNLOAD)


def fetch(hub, repo_id: str, remote: str, destination: Path, staging: Path) -> None:
    """Download into a staging folder on the same disk, then rename into place atomically."""
    try:
        staged = hub.hf_hub_download(repo_id=repo_id, filename=remote, repo_type="dataset",
                                     local_dir=staging)
    except Exception as exc:  # huggingface_hub raises many HTTP / offline error types
        hub_error(repo_id, remote, exc)
    staged = Path(staged)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        if staged.is_symlink():  # huggingface-hub < 0.23 links big files into its cache instead
            shutil.copyfile(staged.resolve(), staged.with_name(staged.name + ".copy"))
            staged.unlink()
            staged = staged.with_name(staged.name + ".copy")
        os.replace(staged, destination)
    except OSError as exc:
        fail(f"could not write {exc.filename or destination} ({exc.strerror or exc}); free some space or "
             "choose another --output-root.", EXIT_OUTPUT)


def remote_sizes(hub, repo_id: str, remotes: list[str]) -> dict[str, int]:
    """Sizes published on the Hub; empty if the listing fails (then shards self-check)."""
    try:
        infos = hub.HfApi().get_paths_info(repo_id, remotes, repo_type="dataset")
        return {info.path: info.size for info in infos if getattr(info, "size", None) is not None}
    except Exception:
        return {}


def download(variant: str, train_shards: int, output_root: Path) -> None:
    try:
        import huggingface_hub as hub  # only this path needs it; planning and tests do not
    except ImportError:
        fail("the huggingface_hub package is missing: pip install huggingface-hub", EXIT_DOWNLOAD)
    repo_id = os.environ.get(REPO_ENV, default_repo(variant))
    remote_root = os.environ.get(ROOT_ENV, DEFAULT_ROOT).strip("/")
    staging = output_root / ".download_staging"
    manifest_remote = f"{remote_root}/manifest.json" if remote_root else "manifest.json"
    fetch(hub, repo_id, manifest_remote, output_root / "manifest.json", staging)
    try:
        manifest = json.loads((output_root / "manifest.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        fail(f"the manifest of {repo_id} ({manifest_remote}) is not JSON ({exc}); set {REPO_ENV} / "
             f"{ROOT_ENV} to a copy of the official export.", EXIT_INPUT)

    plan = plan_downloads(manifest, variant, train_shards, output_root, remote_root, repo_id)
    sizes = remote_sizes(hub, repo_id, [remote for remote, _ in plan])
    todo = [(r, p) for r, p in plan if not is_complete(p, sizes.get(r))]
    print(f"{repo_id}: {len(plan)} files for {variant}, {len(plan) - len(todo)} already present")
    for i, (remote, destination) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {remote} -> {destination}", flush=True)
        fetch(hub, repo_id, remote, destination, staging)
    shutil.rmtree(staging, ignore_errors=True)
    check_sidecars(plan)
    tokenizer = next((p for _, p in plan if p.suffix == ".model"), plan[-1][1])
    print(f"DATA_PATH={output_root / 'datasets' / f'fineweb10B_{variant}'} "
          f"TOKENIZER_PATH={tokenizer} VOCAB_SIZE={vocab_size_of(variant)}")


def check_output_root(root: Path) -> None:
    """Refuse, before any download, an --output-root that is a file or takes no new file.

    A missing folder is judged by its nearest existing parent, tried with a temporary file
    (permission bits do not stop root).
    """
    if root.exists() and not root.is_dir():
        fail(f"--output-root {root} is a file, not a folder; pass a folder (it is created if missing).", EXIT_OUTPUT)
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        fail(f"--output-root {root} cannot be created: {existing} is a file, not a folder; "
             "move it away or choose another --output-root.", EXIT_OUTPUT)
    try:
        handle, probe = tempfile.mkstemp(prefix=".write_test_", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        fail(f"--output-root {root} is not writable ({existing}: {exc.strerror}); "
             "choose a folder you can write to.", EXIT_OUTPUT)


def run(argv: list[str] | None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.rsplit("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, default="sp1024",
                   help="sp8192_caseops: the CaseOps records' data into datasets/fineweb10B_sp8192_caseops/ "
                        "(with fineweb_val_bytes_NNNNNN.bin sidecars) and tokenizers/fineweb_8192_caseops.model")
    p.add_argument("--train-shards", type=int, default=80, help="first N train shards (100M tokens each)")
    p.add_argument("--output-root", default=str(Path(__file__).resolve().parent),
                   help="folder that receives datasets/ and tokenizers/ (default: this data/ folder)")
    args = p.parse_args(argv)
    if args.train_shards < 0:
        fail(f"--train-shards {args.train_shards} is negative; ask for 0 (validation only) or more.", EXIT_USAGE)
    if not args.output_root:
        fail("--output-root is empty; pass the folder that should receive datasets/ and tokenizers/.", EXIT_USAGE)
    check_output_root(Path(args.output_root))
    download(args.variant, args.train_shards, Path(args.output_root))


def main(argv: list[str] | None = None) -> None:
    """run(), with a refusal or Ctrl-C ending as one `error:` line on stderr and its exit status."""
    try:
        run(argv)
    except DataToolError as exc:
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # one line, whatever the cause
        raise
    except KeyboardInterrupt:
        print("error: interrupted; files already downloaded are complete and kept, run it again to resume.",
              file=sys.stderr)
        raise DataToolError("interrupted", EXIT_INTERRUPTED) from None


if __name__ == "__main__":
    main()
