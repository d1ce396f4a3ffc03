"""The EVALUATION section of train_gpt.py against the four conditions for legal evaluation and
test-time training (challenge issues #402, #677, #1017): causality, single pass, score before update, and the
same score for any number of processes.

Most tests run in-process on a small model with random (non-trivial) weights over the tiny
dataset's validation tokens; two script runs (one and two processes on gloo) check the
distributed path and the NLL dump.
"""
from __future__ import annotations

import contextlib

import copy
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import same_runner, TINY_RUN_ENV, log_lines, run_script, forward_logits

CPU = torch.device("cpu")
RT = tg.Runtime(0, 1, 0, CPU)
SEQ_LEN, STRIDE, CHUNK = 64, 16, 256
EVAL_ENV = {"EVAL_SEQ_LEN": str(SEQ_LEN), "EVAL_STRIDE": str(STRIDE), "EVAL_BATCH_SEQS": "5",
            "TTT_CHUNK_TOKENS": str(CHUNK), "TTT_EPOCHS": "1", "TTT_BATCH_SEQS": "3", "TTT_LR": "0.02"}


@pytest.fixture(scope="module")
def stream(tiny_data):
    """The first 1,000 validation tokens and the tokenizer's byte tables."""
    vocab = int(tiny_data["VOCAB_SIZE"])
    tables = tg.build_byte_tables(tg.load_tokenizer(tiny_data["TOKENIZER_PATH"], vocab), vocab)
    return SimpleNamespace(val=tg.load_validation_tokens(tiny_data["DATA_PATH"], 1000), tables=tables, vocab=vocab)


def hparams(**overrides: str) -> tg.Hyperparameters:
    return tg.Hyperparameters(environ={**EVAL_ENV, **overrides})


def randomize(model: tg.GPT, seed: int) -> tg.GPT:
    """Give the zero-initialised parts (output projections, LoRA B, pass embeddings) random
    values so every path, adapters included, shapes the predictions."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p is not model.q_gain:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.looping = True
    return model


def small_model(seed: int = 0) -> tg.GPT:
    cfg = tg.ModelConfig(vocab_size=512, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2,
                         rope_dims=8, loop_start=1, loop_end=1, num_loops=1, parallel_residual_start=2,
                         pass_lora_targets=["q", "k", "v", "o", "up", "down"])
    torch.manual_seed(seed)
    return randomize(tg.GPT(cfg), seed)


def target_windows(num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """For every target index 0..N-1 (0 unused): the start of the window scoring it, and that
    window's TTT chunk."""
    w = tg.sliding_windows(num_tokens, SEQ_LEN, STRIDE)
    k = np.searchsorted(w.ends, np.arange(num_tokens))  # first window whose end reaches t
    k[0] = 0
    return w.starts[k], w.score_from[k] // CHUNK


# ---- windows ----

def test_sliding_windows_score_every_target_once_with_enough_context():
    grid = itertools.product([2, 3, 17, 64, 65, 66, 200, 1001], [(1, 1), (8, 1), (8, 3), (8, 8), (64, 16), (64, 63), (64, 64)])
    for num_tokens, (seq_len, stride) in grid:
        case = f"N={num_tokens} seq_len={seq_len} stride={stride}"
        w = tg.sliding_windows(num_tokens, seq_len, stride)
        assert np.all(w.score_from < w.ends), case
        scored = np.concatenate([np.arange(a + 1, b + 1) for a, b in zip(w.score_from, w.ends)])
        assert np.array_equal(scored, np.arange(1, num_tokens)), case  # 1..N-1, each once, in order
        assert np.all(w.starts >= 0) and np.all(w.ends - w.starts == min(seq_len, num_tokens - 1)), case
        # A target t is predicted from inputs start..t-1; after the first window the least
        # context any scored target gets is seq_len - stride + 1 tokens.
        first_scored = w.score_from[1:] + 1
        assert np.all(first_scored - w.starts[1:] >= seq_len - stride + 1), case


# ---- single pass ----

def test_sliding_and_ttt_count_the_same_tokens_and_bytes_as_full_eval(stream, monkeypatch):
    meters = []

    class RecordingMeter(tg.BpbMeter):
        def __init__(self, device):
            super().__init__(device)
            meters.append(self)

    monkeypatch.setattr(tg, "BpbMeter", RecordingMeter)
    val, tables, n = stream.val, stream.tables, len(stream.val)
    model, h = small_model(), hparams()
    recorders = [tg.NllRecorder(n) for _ in range(3)]
    tg.evaluate_windows(model, val, SEQ_LEN, SEQ_LEN, h, tables, RT, recorders[0])
    tg.evaluate_windows(model, val, SEQ_LEN, STRIDE, h, tables, RT, recorders[1])
    tg.score_first_ttt(model, same_runner(model), val, h, tables, RT, recorders[2])
    assert len(meters) == 3
    target_bytes = tables.target_bytes(val[:-1], val[1:]).double()
    for meter, recorder in zip(meters, recorders):
        assert meter.tokens.item() == n - 1
        assert meter.bytes.item() == target_bytes.sum().item()
        assert recorder.count[0] == 0 and torch.all(recorder.count[1:] == 1)
        assert torch.equal(recorder.bytes[1:], target_bytes)


# ---- causality ----

def fingerprint_scorer(model: tg.GPT, seed: int = 0):
    """Scores each target by a fixed random projection of the predicted log-distribution,
    blind to the target itself; training (gradients on) still uses the real loss."""
    weights = torch.randn(model.cfg.vocab_size, generator=torch.Generator().manual_seed(seed))

    def score(inputs, targets, reduction="none"):
        if torch.is_grad_enabled():
            return model(inputs, targets, reduction=reduction)
        return torch.log_softmax(forward_logits(model, inputs), dim=-1) @ weights

    return score


@pytest.mark.parametrize("stage", ["sliding", "ttt"])
@pytest.mark.parametrize("p", [600, 770])  # mid-chunk, and just past a chunk boundary (768)
def test_changing_token_p_never_changes_what_was_predicted_before_it(stream, stage, p):
    val, n = stream.val, len(stream.val)
    changed_val = val.clone()
    changed_val[p] = (val[p] + 1) % stream.vocab
    h = hparams()

    def per_target(tokens: torch.Tensor, fingerprint: bool) -> torch.Tensor:
        model = small_model()
        score_fn = fingerprint_scorer(model) if fingerprint else model
        recorder = tg.NllRecorder(n)
        if stage == "sliding":
            tg.evaluate_windows(score_fn, tokens, SEQ_LEN, STRIDE, h, stream.tables, RT, recorder)
        else:
            tg.score_first_ttt(model, same_runner(score_fn), tokens, h, stream.tables, RT, recorder)
        return recorder.nll

    starts, chunks = target_windows(n)
    t = np.arange(n)
    # val[p] first enters the weights when TTT trains on the chunk whose targets include p,
    # after that chunk's windows were scored; every target before p is scored by then.
    first_chunk_trained_on_p = (p - 1) // CHUNK
    weights_differ = (chunks > first_chunk_trained_on_p) if stage == "ttt" else np.zeros(n, bool)
    weights_differ[0] = False
    for fingerprint in (False, True):
        before, after = per_target(val, fingerprint), per_target(changed_val, fingerprint)
        # The loss at p itself changes with its token; the distribution predicting it must not.
        sees_p = (starts <= p) & ((p < t) if fingerprint else (p <= t))
        expected_changed = sees_p | weights_differ
        changed = (before != after).numpy()
        unchanged_until = p + 1 if fingerprint else p
        assert torch.equal(before[:unchanged_until], after[:unchanged_until])
        assert not np.any(changed & ~expected_changed), np.nonzero(changed & ~expected_changed)[0][:10]
        # Sensitivity: the effects that are allowed do show (a float32 loss may coincide now
        # and then, so "nearly all" rather than all).
        assert changed[sees_p].mean() > 0.95
        if weights_differ.any():
            assert changed[weights_differ].mean() > 0.95
    if stage == "ttt" and p == 600:
        assert weights_differ.sum() > 100, "later chunks are scored by weights trained on p"


# ---- score before update ----

@contextlib.contextmanager
def chunked_ttt_events(events: list):
    """Record what chunked TTT does, in order, from the outside: ("score", first, last target) for
    each chunk's windows (score_windows) and ("train", first, last target) for each update
    (train_on_tokens)."""
    score, train = tg.score_windows, tg.train_on_tokens

    def scoring(score_fn, val, windows, *args, **kwargs):
        if len(windows):
            events.append(("score", int(windows.score_from[0]) + 1, int(windows.ends[-1])))
        return score(score_fn, val, windows, *args, **kwargs)

    def training(score_fn, stream, chunk_start, chunk_end, *args, **kwargs):
        events.append(("train", chunk_start + 1, chunk_end))
        return train(score_fn, stream, chunk_start, chunk_end, *args, **kwargs)
    tg.score_windows, tg.train_on_tokens = scoring, training
    try:
        yield
    finally:
        tg.score_windows, tg.train_on_tokens = score, train



@pytest.mark.parametrize("num_tokens,chunk,stride,num_chunks", [(1025, 256, 16, 4), (1000, 200, 16, 5), (700, 48, 32, 15)])
def test_every_trained_token_was_scored_before_and_last_chunk_is_never_trained(stream, num_tokens, chunk, stride, num_chunks):
    # Random tokens, so each training row can be located in the stream by its contents.
    val = torch.randint(0, stream.vocab, (num_tokens,), generator=torch.Generator().manual_seed(1))
    h = hparams(TTT_CHUNK_TOKENS=str(chunk), EVAL_STRIDE=str(stride))
    model = small_model()
    events: list[tuple[str, int, int]] = []
    where: dict[int, dict[bytes, int]] = {}

    def spy(inputs, targets, reduction="none"):
        if torch.is_grad_enabled():
            rows = torch.cat([inputs, targets[:, -1:]], dim=1)
            length = inputs.size(1)
            if length not in where:
                where[length] = {val[s:s + length + 1].numpy().tobytes(): s for s in range(num_tokens - length)}
                assert len(where[length]) == num_tokens - length
            for row in rows:
                start = where[length][row.numpy().tobytes()]
                events.append(("fed", start, start + length))  # every token the update reads
        return model(inputs, targets, reduction=reduction)

    with chunked_ttt_events(events):
        tg.score_first_ttt(model, same_runner(spy), val, h, stream.tables, RT)
    scored_until = 0
    for kind, first, last in events:
        if kind == "score":
            assert first == scored_until + 1, "windows score the stream in order, once"
            scored_until = last
        else:  # "fed" and "train": the update may only read tokens already scored
            assert last <= scored_until, (kind, first, last, scored_until)
    assert scored_until == num_tokens - 1
    trains = [(a, b) for kind, a, b in events if kind == "train"]
    assert trains == [(c * chunk + 1, (c + 1) * chunk) for c in range(num_chunks - 1)]
    last_score = max(i for i, e in enumerate(events) if e[0] == "score")
    assert not events[last_score + 1:], "nothing is trained after the last chunk is scored"
    assert any(kind == "fed" for kind, _, _ in events)
    if num_tokens == 1025:
        assert [(a, b) for kind, a, b in events if kind == "score"] == [(c * chunk + 1, (c + 1) * chunk) for c in range(4)]


def test_ttt_without_epochs_is_exactly_sliding_evaluation(stream):
    h = hparams(TTT_EPOCHS="0")
    model = small_model()
    weights = copy.deepcopy(model.state_dict())
    sliding_rec, ttt_rec = tg.NllRecorder(len(stream.val)), tg.NllRecorder(len(stream.val))
    sliding = tg.evaluate_windows(model, stream.val, SEQ_LEN, STRIDE, h, stream.tables, RT, sliding_rec)
    ttt = tg.score_first_ttt(model, same_runner(model), stream.val, h, stream.tables, RT, ttt_rec)
    assert torch.equal(ttt_rec.nll, sliding_rec.nll)
    assert ttt == pytest.approx(sliding, rel=1e-13, abs=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


# ---- which parameters TTT adapts ----

def ttt_changes(stream, **overrides: str) -> tuple[set[str], tuple[float, float]]:
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = tg.score_first_ttt(model, same_runner(model), stream.val, hparams(**overrides), stream.tables, RT)
    assert all(p.requires_grad for p in model.parameters()), "TTT must hand the model back trainable"
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}, result


def test_chunked_ttt_trains_every_weight_and_hands_the_model_back_trainable(stream):
    changed, result = ttt_changes(stream)
    assert {"qo_bank", "kv_bank", "up_bank", "down_bank", "tok_emb.weight", "attn_scale", "q_gain"} <= changed
    assert all(math.isfinite(v) for v in result)


# ---- two processes ----

@pytest.fixture(scope="module")
def script_runs(tiny_data, tmp_path_factory):
    """EVAL_ONLY runs of one artifact (a random tiny model, RTN) with one and two processes,
    each dumping the TTT stage's per-token NLL."""
    work = tmp_path_factory.mktemp("eval")
    env = {**TINY_RUN_ENV, **tiny_data, "EVAL_ONLY": "1", "ARTIFACT_PATH": str(work / "random.ptz"), "TTT_MODE": "chunked",
           "TTT_EPOCHS": "2", "TTT_BATCH_SEQS": "3", "EVAL_BATCH_SEQS": "5", "TTT_LR": "0.02",
           # No clipping: a clipped step hides a wrong gradient scale, which is what differs by world size.
           "TTT_GRAD_CLIP": "0"}
    h = tg.Hyperparameters(environ={**env, "QUANT_METHOD": "rtn"})
    torch.manual_seed(0)
    model = randomize(tg.GPT(h.model_config()), 0)
    Path(env["ARTIFACT_PATH"]).write_bytes(tg.serialize_artifact(tg.quantize_model(model, None, h, RT), model.cfg, "brotli",
                                                                 h.tokenizer_sha256))
    for nproc in (1, 2):
        run_script({**env, "RUN_ID": f"np{nproc}", "NLL_DUMP_PATH": str(work / f"np{nproc}.npz")}, work, nproc=nproc)
    return SimpleNamespace(dir=work, val_tokens=int(env["VAL_TOKENS_LIMIT"]))


def bpb(runs, nproc: int, stage: str) -> float:
    (line,) = log_lines(runs.dir, f"np{nproc}", f"final_{stage} ")
    return float(line.split("val_bpb:")[1].split()[0])


def test_two_processes_score_like_one(script_runs):
    for stage in ("roundtrip", "sliding", "ttt"):
        assert bpb(script_runs, 2, stage) == pytest.approx(bpb(script_runs, 1, stage), abs=1e-6), stage
    assert abs(bpb(script_runs, 1, "ttt") - bpb(script_runs, 1, "sliding")) > 1e-3, "TTT must have changed something"


def test_nll_dump_holds_every_target_once(script_runs):
    dumps = [np.load(script_runs.dir / f"np{nproc}.npz") for nproc in (1, 2)]
    for nproc, dump in zip((1, 2), dumps):
        assert np.array_equal(dump["pos"], np.arange(1, script_runs.val_tokens))
        assert np.all(dump["times_scored"] == 1)
        (line,) = log_lines(script_runs.dir, f"np{nproc}", "final_ttt ")
        assert dump["nll"].sum() / len(dump["nll"]) == pytest.approx(float(line.split("val_loss:")[1].split()[0]), abs=1e-8)
        assert dump["nll"].sum() / math.log(2) / dump["bytes"].sum() == pytest.approx(bpb(script_runs, nproc, "ttt"), abs=1e-8)
        assert log_lines(script_runs.dir, f"np{nproc}", "nll_dump stage:ttt")
    assert np.array_equal(dumps[0]["bytes"], dumps[1]["bytes"])
    assert np.allclose(dumps[0]["nll"], dumps[1]["nll"], atol=1e-4)
