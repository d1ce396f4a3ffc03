"""Per-document LoRA TTT (TTT_MODE=docs) and its global SGD phases (TTT_MODE=phased) against
the four conditions for legal test-time training: every target is scored once, before any
update (LoRA or global) that used it; a document's adapters see only its own tokens (and,
through warm-start A and the phases, documents already scored); re-runs and world sizes agree.
Chunked TTT is pinned to the score it gave before the per-document modes existed."""
from __future__ import annotations

import contextlib

import copy
import json
import math

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import same_runner, ROOT, TINY_RUN_ENV, log_lines, run_script
from test_eval import RT, hparams, randomize
from test_eval import small_model as eval_model

BOS = tg.BOS_ID
DOC_ENV = {"EVAL_SEQ_LEN": "32", "TTT_DOC_CHUNK_TOKENS": "8", "TTT_DOC_BATCH": "3", "TTT_LORA_RANK": "4",
           "TTT_LORA_LR": "0.01", "PHASED_TTT_PREFIX_DOCS": "6", "PHASED_TTT_PHASES": "2",
           "GLOBAL_TTT_CHUNK_TOKENS": "64", "GLOBAL_TTT_LR": "0.01", "SEED": "3"}


def doc_hparams(mode: str, **overrides: str) -> tg.Hyperparameters:
    h = hparams(**{**DOC_ENV, "TTT_MODE": mode, **overrides})
    h.validate(1)
    return h


def document_stream(lengths=(50, 7, 33, 12, 90, 3, 41, 26, 64, 18, 9, 55), seed: int = 0, alphabet: int = 510) -> torch.Tensor:
    """Documents of the given lengths (each starting with BOS), random non-BOS tokens inside,
    drawn from `alphabet` tokens (a small one repeats short contexts, for the n-gram tilt)."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for n in lengths:
        doc = torch.randint(2, 2 + alphabet, (n,), generator=gen)
        doc[0] = BOS
        parts.append(doc)
    return torch.cat(parts)


def tables() -> tg.ByteTables:
    ids = torch.arange(512)
    return tg.ByteTables(ids % 5, ids % 3 == 0, ids < 4)


def run_ttt(mode: str, val: torch.Tensor, model_seed: int = 1, audit: list | None = None, **overrides: str):
    """(bpb, recorder) of one TTT stage on a fresh copy of a fixed random model; per-document modes
    append what they do, in order, to `audit` (document_ttt_events)."""
    model = eval_model(model_seed)
    h = doc_hparams(mode, **overrides)
    recorder = tg.NllRecorder(len(val))
    if mode == "chunked":
        _, bpb = tg.score_first_ttt(model, same_runner(model), val, h, tables(), RT, recorder)
    else:
        with document_ttt_events(audit if audit is not None else []):
            _, bpb = tg.score_documents_ttt(model, tg.Runners.eager(model), val, h, tables(), RT, recorder)
    return bpb, recorder


@contextlib.contextmanager
def document_ttt_events(events: list):
    """Record per-document TTT from the outside, in order: ("score", first, last target) of each
    document's chunk as the batch's forward scores it (NllRecorder.add on a fresh recorder), then
    ("train", first, last target) of each document the Adam step after it trains (the chunk the
    documented rule gives: chunk c of every document with chunks after it), and ("train", s + 1,
    s + n) for every document a global phase trains on."""
    batch_fn, phase_fn = tg.score_document_batch, tg.global_sgd_phase

    def batch(score_fn, val, docs, lora, opt, h, tables, meter, rt, order_base, recorder=None, ngram=None):
        C = h.doc_chunk_tokens(max(n for _, n in docs))
        spy = tg.NllRecorder(len(val))
        step, steps = opt.step, [0]

        def add(positions, nll, nbytes, order):
            for start, n in docs:
                mine = positions[(positions > start) & (positions <= start + n)]
                if len(mine):
                    events.append(("score", int(mine.min()), int(mine.max())))
            return tg.NllRecorder.add(spy, positions, nll, nbytes, order)

        def stepped(*args, **kwargs):
            c = steps[0]
            events.extend(("train", s + c * C + 1, s + (c + 1) * C) for s, n in docs if c < -(-n // C) - 1)
            steps[0] += 1
            return step(*args, **kwargs)
        spy.add, opt.step = add, stepped
        batch_fn(score_fn, val, docs, lora, opt, h, tables, meter, rt, order_base, spy, ngram)
        if recorder is not None:  # the caller's recorder gets what the spy saw
            for name in ("nll", "bytes", "count", "order"):
                getattr(recorder, name).add_(getattr(spy, name))

    def phase(model, score_fn, val, docs, h, rt):
        events.extend(("train", s + 1, s + n) for s, n in docs)
        return phase_fn(model, score_fn, val, docs, h, rt)
    tg.score_document_batch, tg.global_sgd_phase = batch, phase
    try:
        yield
    finally:
        tg.score_document_batch, tg.global_sgd_phase = batch_fn, phase_fn


# ---- documents and the plan ----

@pytest.mark.parametrize("stream", [[1, 5, 6, 1, 7, 1, 8, 9, 9], [5, 6, 1, 7, 8], [1, 1, 4, 1], [5, 6, 7]])
def test_documents_cover_every_target_once(stream):
    val = torch.tensor(stream)
    docs = tg.split_documents(val, BOS)
    targets = [t for start, n in docs for t in range(start + 1, start + n + 1)]
    assert targets == list(range(1, len(stream)))
    for start, n in docs:  # a document's inputs hold one BOS at most, at its start
        assert (val[start + 1:start + n] == BOS).sum() == 0


def test_plan_is_fixed_longest_first_and_balanced():
    docs = tg.split_documents(document_stream(), BOS)
    h = doc_hparams("phased")
    plans = [tg.plan_documents(docs, h, world, 2) for world in (1, 2, 3)]
    for plan in plans:
        assert plan.batches == plans[0].batches and plan.phase_ends == [1, 2]  # prefix of 6 documents, 3 a batch
        lengths = [docs[d][1] for batch in plan.batches for d in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert sorted(d for batch in plan.batches for d in batch) == list(range(len(docs)))
    assert plans[1].owner == tg.plan_documents(docs, h, 2, 2).owner  # the same rule every time
    assert set(plans[1].owner) == {0, 1}


# ---- score first ----

@pytest.mark.parametrize("mode", ["docs", "phased"])
def test_every_target_is_scored_before_any_update_that_used_it(mode):
    val = document_stream()
    audit: list = []
    run_ttt(mode, val, audit=audit)
    scored_at: dict[int, int] = {}
    trained = 0
    for step, (kind, first, last) in enumerate(audit):
        for t in range(first, last + 1):
            if kind == "score":
                assert t not in scored_at, f"target {t} scored twice"
                scored_at[t] = step
            else:  # a LoRA step on a chunk, or a global phase over a whole document
                assert scored_at.get(t, step) < step, f"target {t} trained before it was scored"
                trained += 1
    assert sorted(scored_at) == list(range(1, len(val)))
    assert trained > 0


@pytest.mark.parametrize("mode", ["docs", "phased"])
def test_no_document_trains_on_its_last_chunk(mode):
    val = document_stream()
    audit: list = []
    run_ttt(mode, val, audit=audit)
    chunk = int(DOC_ENV["TTT_DOC_CHUNK_TOKENS"])
    per_doc = [e for e in audit if e[0] == "train" and e[2] - e[1] + 1 == chunk]
    for start, n in tg.split_documents(val, BOS):
        chunks = -(-n // chunk)
        trained = sorted(first for _, first, last in per_doc if start < first <= start + n)
        assert trained == [start + c * chunk + 1 for c in range(chunks - 1)], (start, n)


# ---- single pass ----

@pytest.mark.parametrize("mode", ["chunked", "docs", "phased"])
def test_every_target_is_scored_exactly_once_and_bytes_add_up(mode):
    val = document_stream()
    _, recorder = run_ttt(mode, val)
    assert recorder.count[0] == 0 and torch.all(recorder.count[1:] == 1)
    assert torch.equal(recorder.bytes[1:], tables().target_bytes(val[:-1], val[1:]).double())


# ---- what a document's score may depend on ----

def nll_of(recorder: tg.NllRecorder) -> torch.Tensor:
    return recorder.nll.clone()


def perturbed(val: torch.Tensor, start: int, end: int, seed: int = 5) -> torch.Tensor:
    changed = val.clone()
    changed[start:end] = torch.randint(2, 512, (end - start,), generator=torch.Generator().manual_seed(seed))
    return changed


def test_without_warm_start_each_documents_score_depends_on_it_alone():
    val = document_stream()
    docs = tg.split_documents(val, BOS)
    _, base = run_ttt("docs", val, TTT_WARM_START_A="0")
    for victim in (0, 4, 9):  # a short, the longest and a middle document
        start, n = docs[victim]
        _, changed = run_ttt("docs", perturbed(val, start + 1, start + n), TTT_WARM_START_A="0")
        outside = torch.ones(len(val), dtype=torch.bool)
        outside[start + 1:start + n + 1] = False
        torch.testing.assert_close(nll_of(changed)[outside], nll_of(base)[outside], atol=1e-6, rtol=0)
        assert (nll_of(changed) - nll_of(base))[start + 2:start + n].abs().max() > 1e-3


# The n-gram tilt on a stream of 3 tokens, where 4-token contexts recur from the first documents on.
TILT = {"NGRAM_ORDER": "4", "NGRAM_THRESHOLD": "0.5"}


@pytest.mark.parametrize("mode, warm, tilt", [("docs", "1", False), ("phased", "1", False), ("docs", "0", False),
                                              ("docs", "1", True), ("phased", "1", True)])
def test_perturbing_a_documents_second_half_changes_nothing_scored_before_it(mode, warm, tilt):
    val = document_stream(alphabet=3 if tilt else 510)
    docs = tg.split_documents(val, BOS)
    settings = TILT if tilt else {}
    _, base = run_ttt(mode, val, TTT_WARM_START_A=warm, **settings)
    if tilt:  # the tilt acts here, so the test below covers it
        _, untilted = run_ttt(mode, val, TTT_WARM_START_A=warm, NGRAM_TILT="0")
        assert (nll_of(untilted) - nll_of(base)).abs().max() > 1e-3
    order = base.order - 1
    processing = sorted(range(len(docs)), key=lambda d: (order[docs[d][0] + 1].item(), d))
    for victim in (processing[4], processing[9]):  # in the first phase's batches and after it
        start, n = docs[victim]
        middle = start + n // 2
        _, changed = run_ttt(mode, perturbed(val, middle, start + n), TTT_WARM_START_A=warm, **settings)
        diff = (nll_of(changed) - nll_of(base)).abs()
        assert diff[start + 1:middle].max() <= 1e-6  # its own first half (target t is token t)
        victim_key = order[start + 1].item()
        assert diff[(order < victim_key) & (order >= 0)].max() <= 1e-6  # whatever came before it
        assert diff[middle + 1:start + n + 1].max() > 1e-3


@pytest.mark.parametrize("mode, tilt", [("docs", False), ("phased", False), ("docs", True), ("phased", True)])
def test_perturbing_the_last_document_processed_changes_no_other_target(mode, tilt):
    val = document_stream(alphabet=3 if tilt else 510)
    settings = TILT if tilt else {}
    _, base = run_ttt(mode, val, **settings)
    docs = tg.split_documents(val, BOS)
    last = max(range(len(docs)), key=lambda d: (base.order[docs[d][0] + 1].item(), d))
    start, n = docs[last]
    _, changed = run_ttt(mode, perturbed(val, start + 1, start + n), **settings)
    outside = torch.ones(len(val), dtype=torch.bool)
    outside[start + 1:start + n + 1] = False
    torch.testing.assert_close(nll_of(changed)[outside], nll_of(base)[outside], atol=1e-6, rtol=0)


def test_adapters_and_phases_change_the_score():
    val = document_stream()
    untrained, _ = run_ttt("docs", val, TTT_LORA_LR="0")
    docs_bpb, _ = run_ttt("docs", val)
    phased_bpb, _ = run_ttt("phased", val)
    assert docs_bpb != untrained and phased_bpb != docs_bpb
    again, _ = run_ttt("phased", val)
    assert again == phased_bpb  # re-runs are identical


def test_chunked_ttt_is_unchanged_from_before_the_document_modes():
    pinned = json.loads((ROOT / "tests" / "pinned_values.json").read_text())["chunked_ttt"]
    gen = torch.Generator().manual_seed(11)
    val = torch.randint(0, 512, (700,), generator=gen)
    val[::37] = 1
    ids = torch.arange(512)
    old_tables = tg.ByteTables(ids % 5, ids % 3 == 0, ids < 4)
    # The model as it was then: none of this round's switches (ModelConfig's defaults turn them on).
    cfg = tg.ModelConfig(vocab_size=512, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2,
                         rope_dims=8, qk_gain_init=5.0, loop_start=1, loop_end=1, num_loops=1, parallel_residual_start=2,
                         pass_lora_targets=["q", "k", "v", "o", "up", "down"], xsa_last_n=0, ln_scale=False,
                         skip_gates=False, smear_gate=False, attn_gate=False, ortho_init=False, doc_attention=False)
    torch.manual_seed(3)
    model = randomize(tg.GPT(cfg), 3)
    loss, bpb = tg.score_first_ttt(model, same_runner(model), val, hparams(), old_tables, RT)
    assert loss == pytest.approx(pinned["ttt_val_loss"], abs=1e-6)
    assert bpb == pytest.approx(pinned["ttt_val_bpb"], abs=1e-6)


# ---- one process or two ----

@pytest.fixture(scope="module")
def doc_runs(tiny_data, tmp_path_factory):
    """EVAL_ONLY runs of one random tiny artifact in docs mode: warm-start A off on one and two
    processes (twice on one), warm-start A on on one and two, and the n-gram tilt on on one and two."""
    work = tmp_path_factory.mktemp("docs")
    env = {**TINY_RUN_ENV, **tiny_data, "EVAL_ONLY": "1", "ARTIFACT_PATH": str(work / "random.ptz"), "TTT_MODE": "docs",
           "SLIDING_ENABLED": "0", "TTT_DOC_BATCH": "2", "TTT_LORA_LR": "0.01", "VAL_TOKENS_LIMIT": "6000"}
    h = tg.Hyperparameters(environ={**env, "QUANT_METHOD": "rtn", "LQER_RANK": "0"})  # the figures below predate LQER
    torch.manual_seed(0)
    model = randomize(tg.GPT(h.model_config()), 0)
    (work / "random.ptz").write_bytes(tg.serialize_artifact(tg.quantize_model(model, None, h, RT), model.cfg, "brotli",
                                                            h.tokenizer_sha256))
    bpb = {}
    runs = (("cold1", 1, "0", "0"), ("cold1_again", 1, "0", "0"), ("cold2", 2, "0", "0"), ("warm1", 1, "1", "0"),
            ("warm2", 2, "1", "0"), ("tilt1", 1, "0", "1"), ("tilt2", 2, "0", "1"))
    for name, nproc, warm, tilt in runs:
        run_script({**env, "RUN_ID": name, "TTT_WARM_START_A": warm, "NGRAM_TILT": tilt}, work, nproc=nproc)
        (line,) = log_lines(work, name, "final_ttt ")
        bpb[name] = float(line.split("val_bpb:")[1].split()[0])
    (plan,) = log_lines(work, "cold2", "ttt_docs ")
    bpb["tilted_targets"] = [int(log_lines(work, name, "ngram_tilt ")[0].split("tilted:")[1].split()[0]) for name in ("tilt1", "tilt2")]
    return bpb, plan


def test_docs_mode_scores_the_same_on_one_or_two_processes_and_on_reruns(doc_runs):
    bpb, plan = doc_runs
    assert "batches:" in plan and int(plan.split("batches:")[1].split()[0]) >= 2  # the two ranks share the work
    assert bpb["cold1"] == bpb["cold1_again"]
    assert bpb["cold2"] == pytest.approx(bpb["cold1"], abs=1e-6)


def test_warm_start_a_makes_the_score_depend_on_each_ranks_history(doc_runs):
    bpb, _ = doc_runs
    print(f"\nwarm-start A: one process {bpb['warm1']:.6f}, two {bpb['warm2']:.6f} "
          f"(difference {bpb['warm2'] - bpb['warm1']:+.2e}); without it {bpb['cold1']:.6f}")
    # Observed on this random model with a large LoRA learning rate: 5.8355 on one process, 5.8928
    # on two (+0.057), 5.8624 without warm-start A. Each rank's A learns from the batches that
    # rank scored, so world sizes differ by about as much as warm-start A itself moves the score.
    assert bpb["warm1"] != bpb["cold1"] and bpb["warm2"] != bpb["warm1"]
    assert abs(bpb["warm2"] - bpb["cold1"]) < 0.2 and abs(bpb["warm1"] - bpb["cold1"]) < 0.2


def test_the_ngram_tilt_scores_the_same_on_one_or_two_processes(doc_runs):
    bpb, _ = doc_runs
    one, two = bpb["tilted_targets"]
    # Source code repeats itself: some 16-token contexts recur, and the tilt moves the score.
    assert one > 0 and bpb["tilt1"] != bpb["cold1"]
    # Every rank counts in the plan's order, whoever scores a batch.
    assert two == one and bpb["tilt2"] == pytest.approx(bpb["tilt1"], abs=1e-6)


# ---- the TTT changes of PRs #2014 and #2135 ----

def test_short_document_batches_get_short_chunks():
    h = doc_hparams("docs", TTT_DOC_CHUNK_TOKENS="48", EVAL_SEQ_LEN="2048", GLOBAL_TTT_CHUNK_TOKENS="2048",
                    TTT_SHORT_DOC_CHUNKS="1")
    assert [h.doc_chunk_tokens(n) for n in (1, 256, 257, 2000, 2001, 50000)] == [8, 8, 24, 24, 48, 48]
    off = doc_hparams("docs", TTT_DOC_CHUNK_TOKENS="48", EVAL_SEQ_LEN="2048", GLOBAL_TTT_CHUNK_TOKENS="2048",
                      TTT_SHORT_DOC_CHUNKS="0")
    assert {off.doc_chunk_tokens(n) for n in (1, 300, 5000)} == {48}
    small = doc_hparams("docs", TTT_DOC_CHUNK_TOKENS="4", TTT_SHORT_DOC_CHUNKS="1")  # never longer than the long chunk
    assert small.doc_chunk_tokens(10) == 4


def test_each_batch_trains_on_the_chunk_its_longest_document_asks_for_and_scores_first():
    # Batches of 3: (300, 280, 260) take the long 16-token chunk, (50, 30, 12) the short 8.
    lengths = (300, 280, 260, 50, 30, 12)
    val = document_stream(lengths)
    audit: list = []
    run_ttt("docs", val, audit=audit, TTT_DOC_CHUNK_TOKENS="16", TTT_SHORT_DOC_CHUNKS="1")
    docs = tg.split_documents(val, BOS)
    spans: dict[int, set[int]] = {}  # document index -> lengths of the chunks it trained on
    for kind, first, last in audit:
        if kind == "train":
            doc = next(i for i, (s, n) in enumerate(docs) if s < first <= s + n)
            spans.setdefault(doc, set()).add(last - first + 1)
    assert [spans[d] for d in range(6)] == [{16}] * 3 + [{8}] * 3, spans
    scored = set()
    for kind, first, last in audit:  # still score first
        if kind == "score":
            scored.update(range(first, last + 1))
        else:
            assert set(range(first, last + 1)) <= scored


def test_ttt_lora_targets_choose_the_adapted_projections():
    model = eval_model(1)
    lora = tg.TTTLoRA(model, 2, 4, 8.0, ("q", "v", "o", "mlp", "head"))
    assert set(lora.A) == set(lora.B) == {"q", "v", "o", "mlp", "head"}
    assert doc_hparams("docs").ttt_targets() == ("q", "v", "o", "mlp", "head")
    with pytest.raises(tg.ConfigError, match="TTT_LORA_TARGETS='q,x' must name some of q,k,v,o,mlp,head"):
        doc_hparams("docs", TTT_LORA_TARGETS="q,x")
    # Without an MLP or head adapter the forward still runs and only trains what is there.
    for targets in (("o",), ("k", "head")):
        val = document_stream()
        bpb, recorder = run_ttt("docs", val, TTT_LORA_TARGETS=",".join(targets))
        assert math.isfinite(bpb) and torch.all(recorder.count[1:] == 1)


# ---- the n-gram tilt ----

def test_the_tilted_distribution_sums_to_one_over_the_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    nll_all = -torch.log_softmax(logits, -1)  # NLL of every token as the target
    tilt = tg.NgramTilt(torch.tensor([1, 2, 3]), torch.tensor([1, 2]), BOS, 1, 0.8, 2.625)
    for row in range(6):
        h = row * 7 % 50
        hint = torch.full((50,), h)
        tilted = tilt.tilt(nll_all[row], nll_all[row][hint], torch.arange(50) == h, torch.ones(50, dtype=torch.bool))
        assert abs(torch.exp(-tilted.double()).sum().item() - 1) <= 1e-6
        others = torch.arange(50) != h
        assert tilted[h] < nll_all[row][h] and torch.all(tilted[others] > nll_all[row][others])


def counted_one_by_one(val: torch.Tensor, order: torch.Tensor, context: int, threshold: float):
    """The tilt's hints as the plain definition gives them: walk the targets in scoring order,
    hint from the counts so far, then count the target (a tie keeps the earlier leader)."""
    hashes, full = tg.context_hashes(val, BOS, context)
    counts, leader = {}, {}
    hint, confident = torch.zeros(len(val), dtype=torch.long), torch.zeros(len(val), dtype=torch.bool)
    for pos in order.tolist():
        if not full[pos]:
            continue
        key, y = int(hashes[pos]), int(val[pos])
        top = leader.get(key)
        if top is not None and top[1] >= threshold * top[2]:
            hint[pos], confident[pos] = top[0], True
        seen = counts.setdefault(key, {})
        seen[y] = seen.get(y, 0) + 1
        token, top_count, total = leader.get(key, (y, 0, 0))
        leader[key] = (y, seen[y], total + 1) if seen[y] > top_count else (token, top_count, total + 1)
    return hint, confident


@pytest.mark.parametrize("trial", range(8))
def test_sorted_counting_equals_counting_target_by_target(trial):
    gen = torch.Generator().manual_seed(trial)
    lengths = torch.randint(2, 80, (5 + 3 * trial,), generator=gen).tolist()
    val = document_stream(lengths, seed=trial, alphabet=[3, 4, 6, 50][trial % 4])
    docs = tg.split_documents(val, BOS)
    by_length = sorted(range(len(docs)), key=lambda d: (-docs[d][1], d))
    batches = [by_length[i:i + 3] for i in range(0, len(by_length), 3)]
    order = tg.scoring_order(docs, batches, [[8, 4, 16][b % 3] for b in range(len(batches))], "cpu")
    assert sorted(order.tolist()) == list(range(1, len(val)))  # every target once
    for context, threshold in ((2, 0.5), (3, 0.8), (1, 0.34)):
        tilt = tg.NgramTilt(val, order, BOS, context, threshold, 2.625)
        hint, confident = counted_one_by_one(val, order, context, threshold)
        assert torch.equal(tilt.confident, confident) and torch.equal(tilt.hint, hint)
        assert confident.any()


def test_the_scoring_order_is_the_order_ttt_scores_in():
    val = document_stream()
    _, recorder = run_ttt("docs", val, **TILT)
    h = doc_hparams("docs", **TILT)
    docs = tg.split_documents(val, BOS)
    plan = tg.plan_documents(docs, h, 1, 0)
    order = tg.scoring_order(docs, plan.batches, [h.doc_chunk_tokens(docs[b[0]][1]) for b in plan.batches], "cpu")
    keys = recorder.order[order]  # the batch and chunk each target was scored in
    assert torch.all(keys[1:] >= keys[:-1])


def test_hints_come_only_from_targets_before_them_and_never_cross_a_document():
    #                   0  1  2  3  4  5  6  7  8  9 10 11 12
    val = torch.tensor([1, 5, 6, 7, 5, 6, 7, 5, 6, 1, 5, 6, 7])
    # A target needs 2 tokens of its own document (its BOS included) before it: not 10, whose
    # context would reach back past the BOS at 9 into the document before.
    _, full = tg.context_hashes(val, BOS, 2)
    assert [t for t in range(13) if full[t]] == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    # Scored in this order: 3 (context (5, 6) -> 7) first, then 12, 6, 9, then the rest.
    order = torch.tensor([3, 12, 6, 9, 1, 2, 4, 5, 7, 8, 10, 11])
    tilt = tg.NgramTilt(val, order, BOS, 2, 0.8, 2.625)
    assert not tilt.confident[3]  # nothing counted before it
    assert tilt.confident[12] and tilt.confident[6] and tilt.hint[12] == tilt.hint[6] == 7  # either document
    assert tilt.confident[9] and tilt.hint[9] == 7  # 3 of 3 so far said 7; 9 itself is a BOS
    assert tilt.confident[7] and tilt.hint[7] == 5  # (6, 7) -> 5 at 4, scored before 7
    assert not tilt.confident[4] and not tilt.confident[2]  # the first of their contexts in this order


def test_a_stream_shorter_than_the_context_gives_no_hints():
    val = torch.tensor([1, 5, 6, 1, 7])
    tilt = tg.NgramTilt(val, torch.tensor([1, 2, 3, 4]), BOS, 16, 0.8, 2.625)
    assert not tilt.confident.any()
