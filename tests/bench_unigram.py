"""Bits per byte of a unigram model, the floor any trained model must clearly beat.

    python3 tests/bench_unigram.py data/datasets/local_sp1024 data/tokenizers/local_1024_bpe.model 65536

Token frequencies come from the training shards (add-one smoothed); the score uses the same
validation prefix, byte tables and target set as train_gpt.py. Not collected by pytest.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def unigram_bpb(data_path: str, tokenizer_path: str, val_tokens_limit: int) -> tuple[float, float]:
    """(val_loss in nats per token, val_bpb) of the smoothed training unigram distribution."""
    vocab = _vocab_size(tokenizer_path)
    sp = tg.load_tokenizer(tokenizer_path, vocab)
    counts = np.ones(vocab, dtype=np.float64)
    for shard in tg.shard_files(data_path, "train"):
        counts += np.bincount(np.asarray(tg.load_data_shard(shard)), minlength=vocab)[:vocab]
    nll_table = torch.from_numpy(-np.log(counts / counts.sum()))
    val = tg.load_validation_tokens(data_path, val_tokens_limit)
    tables = tg.build_byte_tables(sp, vocab)
    meter = tg.BpbMeter(torch.device("cpu"))
    meter.add(nll_table[val[1:]], tables.target_bytes(val[:-1], val[1:]))
    return meter.result()


def _vocab_size(tokenizer_path: str) -> int:
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=tokenizer_path).vocab_size()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.split("\n\n")[1])
    loss, bpb = unigram_bpb(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0)
    print(f"unigram val_loss:{loss:.4f} val_bpb:{bpb:.4f}")
