#!/usr/bin/env bash
# Prepare this repository for a bare GPU machine (no network there), on a networked one:
#   1. the local SP8192 dataset, built from the standard library (data/datasets/local_sp8192,
#      data/tokenizers/local_8192_bpe.*), which tests/gpu_acceptance.py uses;
#   2. the brotli and zstandard wheels for CPython 3.12 on manylinux x86_64 in .whl/, which
#      tests/gpu_acceptance.py installs with pip --no-index when they do not import there.
# Then it prints the size of what has to travel: the repository's files (tracked, or untracked
# and not ignored), the dataset and the wheels, which must stay under 64 MiB together. Everything it writes is git-ignored.
#
#   bash tests/prepare_gpu_carry.sh                  # then copy the repository with data/ and .whl/
#   PYTHON_VERSION=3.11 bash tests/prepare_gpu_carry.sh   # wheels for another CPython on the GPU box
#   MAX_BYTES=20000000 bash tests/prepare_gpu_carry.sh    # a smaller dataset (make_local_dataset --max-bytes)
set -euo pipefail
cd "$(dirname "$0")/.."

python_version="${PYTHON_VERSION:-3.12}"
limit=$((64 * 1024 * 1024))

dataset=data/datasets/local_sp8192
tokenizer=data/tokenizers/local_8192_bpe.model
if [[ -f "$tokenizer" ]] && compgen -G "$dataset/fineweb_val_*.bin" >/dev/null; then
    echo "dataset: $dataset is already built"
else
    python3 data/make_local_dataset.py --vocab-size 8192 ${MAX_BYTES:+--max-bytes "$MAX_BYTES"}
fi

mkdir -p .whl
python3 -m pip download --only-binary=:all: --python-version "$python_version" --platform manylinux2014_x86_64 \
    --no-deps -d .whl brotli zstandard sentencepiece

tracked=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb -- 2>/dev/null | tail -1 | cut -f1)
data_bytes=$(du -cb "$dataset" data/tokenizers/local_8192_bpe.* | tail -1 | cut -f1)
wheel_bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
total=$((tracked + data_bytes + wheel_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "carry: repository $(mib "$tracked") + dataset $(mib "$data_bytes") + wheels $(mib "$wheel_bytes") = $(mib "$total") (limit 64 MiB)"
ls -1 .whl/*.whl
if (( total > limit )); then
    echo "over 64 MiB: rebuild the dataset smaller, e.g. rm -r $dataset && MAX_BYTES=20000000 bash $0" >&2
    exit 1
fi
echo "next, on the GPU machine: python3 tests/gpu_acceptance.py"
