"""What each model switch costs in one training micro-step, measured side by side.

    OMP_NUM_THREADS=1 python3 tests/bench_step_cost.py --base PRESET=cpu TRAIN_SEQ_LEN=128 \
        --variant no_xsa XSA_LAST_N=0 --variant no_doc_attention DOC_ATTENTION=0 --rounds 30

Builds the default model of the --base settings and one model per variant, then times forward
+ backward on the same batch of validation tokens (TRAIN_BATCH_TOKENS / TRAIN_SEQ_LEN rows,
looping on), visiting the models round-robin so that drift in the machine's speed falls on all
of them alike. Prints each variant's median time and its ratio to the default. Optimizer work
is not included (no switch changes it: both Newton-Schulz methods run the same matmuls).
Not collected by pytest.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench_sweep import parse_pairs  # noqa: E402


def build(settings: dict[str, str]) -> tuple[tg.GPT, torch.Tensor, torch.Tensor]:
    h = tg.Hyperparameters(settings)
    torch.manual_seed(h.seed)
    model = tg.GPT(h.model_config())
    model.looping = h.num_loops > 0
    rows = h.train_batch_tokens // h.train_seq_len
    tokens = tg.load_validation_tokens(h.data_path, rows * h.train_seq_len + 1).long()
    return model, tokens[:-1].view(rows, -1), tokens[1:].view(rows, -1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings of the default model")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a name then the settings it changes; repeat for each variant")
    p.add_argument("--rounds", type=int, default=30, help="timed steps per model (the first two are dropped)")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (the first two rounds are warm-up)")
    base = parse_pairs(args.base)
    runs = {"default": build(base)}
    for name, *settings in args.variant:
        runs[name] = build({**base, **parse_pairs(settings)})
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, inputs, targets) in runs.items():
            start = time.perf_counter()
            model(inputs, targets).backward()
            seconds[name].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    reference = statistics.median(seconds["default"][2:])
    print(f"forward + backward of {runs['default'][1].numel():,} tokens, median of {args.rounds - 2} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| variant | ms | × default |\n|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times[2:])
        print(f"| {name} | {median * 1000:.1f} | {median / reference:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
