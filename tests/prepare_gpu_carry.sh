#!/usr/bin/env bash
# Build, on a networked machine, everything a bare GPU machine (no network) needs for
# tests/gpu_acceptance.py, all of it git-ignored:
#   1. the acceptance data set: SP8192 shards and tokenizer built from the standard library,
#      small (6.1 MiB with its tokenizer) but with 160 validation documents for the per-document TTT batches:
#        data/datasets/acceptance_sp8192/   data/tokenizers/acceptance_8192_bpe.model (and .vocab)
#   2. .whl/: brotli (>= 1.2) and zstandard wheels for CPython 3.12, manylinux x86_64 (the GPU
#      image has neither; it has sentencepiece);
# then checks that the carry, with the repository's own files, stays under the 64 MiB a lent
# machine takes, and prints the carry list and the one-call command for the GPU machine.
#
#   bash tests/prepare_gpu_carry.sh
#   bash tests/prepare_gpu_carry.sh --data-only           # the data set alone (gpu_acceptance.py's fallback)
#   PYTHON_VERSION=3.11 bash tests/prepare_gpu_carry.sh   # wheels for another CPython on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."

python_version="${PYTHON_VERSION:-3.12}"
limit=$((64 * 1024 * 1024))
dataset=data/datasets/acceptance_sp8192
tokenizer=data/tokenizers/acceptance_8192_bpe.model

if [[ -f "$tokenizer" ]] && compgen -G "$dataset/fineweb_val_*.bin" >/dev/null; then
    echo "dataset: $dataset is already built"
else
    # 12 MB of text: ~2.4M training tokens (three 786,432-token steps before the loader wraps) and
    # 160 validation documents (the acceptance run's subset takes 126 of them, cut to 512 tokens).
    python3 data/make_local_dataset.py --vocab-size 8192 --name acceptance --max-bytes 12000000 --val-docs 160
fi
[[ "${1:-}" == "--data-only" ]] && exit 0

# One version of each, fresh: two versions of a package in .whl/ stop pip --no-index.
rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl 'brotli>=1.2' zstandard

tracked=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb -- 2>/dev/null | tail -1 | cut -f1)
data_bytes=$(du -cb "$dataset" "$tokenizer" | tail -1 | cut -f1)
wheel_bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
total=$((tracked + data_bytes + wheel_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "carry: repository $(mib "$tracked") + dataset $(mib "$data_bytes") + wheels $(mib "$wheel_bytes") = $(mib "$total") (limit 64 MiB)"
ls -1 .whl/
if (( total > limit )); then
    echo "over 64 MiB: remove other untracked files from the working tree, or rebuild the data set smaller" >&2
    exit 1
fi
cat <<EOF
carry: [".whl", "$dataset", "$tokenizer"]
command (one call on a bare GPU machine, from the repository root):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && python3 tests/gpu_acceptance.py --report-dir "\$OUT"
EOF
