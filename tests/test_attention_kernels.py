"""Document attention through packed varlen kernels, proven on the CPU with plain-PyTorch
stand-ins of the real kernels' signatures: the packing (one stream cut at every BOS and row
start, a fixed-length segment table) gives exactly the masked-SDPA result, forward and
backward, for documents of every shape; each version of PyTorch's varlen_attn signature is
detected, never guessed; the start-up check rejects a wrong kernel and stops on a device fault;
and ATTENTION_KERNEL picks what the README says on each kind of machine."""
from __future__ import annotations

import functools
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from conftest import TINY_MODEL_ENV, nonzero_model, forward_logits

CPU = torch.device("cpu")
BOS = tg.BOS_ID


def reference_varlen(q, k, v, cu_seqlens, max_len):
    """The definition: every segment [cu[i], cu[i+1]) of the packed stream is its own causal
    sequence (SDPA per segment); grouped KV heads shared by their query heads."""
    groups = q.size(1) // k.size(1)
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert hi - lo <= max_len, "a segment longer than max_len would overrun a real kernel"
        if hi > lo:
            qs, ks, vs = (t[lo:hi].transpose(0, 1) for t in (q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)))
            out[lo:hi] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
    return out


def traceable_varlen(q, k, v, cu_seqlens, max_len):
    """The same function written without host loops, so torch.compile traces it whole: each
    position's segment is found in cu_seqlens and attention is masked to causal-and-same-segment."""
    pos = torch.arange(q.size(0), device=q.device)
    segment = torch.searchsorted(cu_seqlens, pos.to(cu_seqlens.dtype), right=True)
    mask = (segment[:, None] == segment[None, :]) & (pos[:, None] >= pos[None, :])
    groups = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask)
    return out[0].transpose(0, 1)


def ids_with(kind: str, B: int = 3, T: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 200, (B, T), generator=g)
    if kind == "bos_first_and_last":
        ids[:, 0], ids[:, T - 1] = BOS, BOS
    elif kind == "every_5":
        ids[:, ::5] = BOS
    elif kind == "every_token":
        ids[:] = BOS
    elif kind == "random_short":
        ids[torch.rand(B, T, generator=g) < 0.2] = BOS
    elif kind == "long_document":  # one document running across rows, longer than any row
        ids[0, 3] = BOS
    return ids  # "no_bos": none at all


KINDS = ["no_bos", "bos_first_and_last", "every_5", "every_token", "random_short", "long_document"]


def attention_inputs(B: int, T: int, H: int = 4, KV: int = 2, D: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, n, D, generator=g, dtype=torch.float64).float().requires_grad_() for n in (H, KV, KV)]


def masked_sdpa(q, k, v, ids):
    groups = q.size(2) // k.size(2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(groups, 2).transpose(1, 2),
                                         v.repeat_interleave(groups, 2).transpose(1, 2), attn_mask=tg.document_mask(ids, BOS))
    return out.transpose(1, 2)


def packed(fn, q, k, v, ids, slots):
    B, T, H, D = q.shape
    cu = tg.packed_segments(ids, BOS, slots)
    return fn(q.reshape(B * T, H, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D), cu, T).view(B, T, H, D)


# ---- the packing ----

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fn", [reference_varlen, traceable_varlen], ids=["per_segment", "traceable"])
def test_packed_varlen_equals_masked_sdpa_forward_and_backward(kind, fn):
    ids = ids_with(kind)
    B, T = ids.shape
    results = []
    for attend in (lambda q, k, v: masked_sdpa(q, k, v, ids), lambda q, k, v: packed(fn, q, k, v, ids, slots=T)):
        q, k, v = attention_inputs(B, T)
        out = attend(q, k, v)
        out.square().sum().backward()
        results.append([out.detach(), q.grad, k.grad, v.grad])
    # fp32, relative to the largest value: with one token per document dq is zero by definition,
    # and masked SDPA leaves rounding noise there.
    scale = max(t.abs().max().item() for t in results[0])
    for want, got in zip(*results):
        assert (got - want).abs().max().item() <= 1e-6 * scale


def test_segment_table_has_a_fixed_length_and_covers_every_row():
    ids = ids_with("random_short", B=4, T=64)
    cu = tg.packed_segments(ids, BOS, slots=tg.segment_slots(64))
    assert cu.dtype == torch.int32 and cu.shape == (4 * (64 // tg.SEGMENT_TOKENS + 1) + 1,)
    assert cu[0] == 0 and cu[-1] == 4 * 64 and bool((cu[1:] >= cu[:-1]).all())
    row_starts = set(range(0, 4 * 64, 64))
    assert row_starts <= set(cu.tolist())  # no segment crosses a row
    assert int((cu[1:] - cu[:-1]).max()) <= 64
    assert tg.packed_segments(ids_with("every_token", B=4, T=64), BOS, 2).shape == cu.shape  # shape never depends on data


def test_a_row_with_more_documents_than_slots_merges_its_last_ones_inside_the_row():
    ids = ids_with("every_5", B=2, T=40)  # 8 documents a row, 3 slots
    cu = tg.packed_segments(ids, BOS, slots=3)
    assert cu.tolist() == [0, 5, 10, 40, 45, 50, 80]
    # The merged tail attends across its documents, exactly as one document would.
    merged = ids.clone()
    merged[:, 15::5] = 7
    q, k, v = attention_inputs(2, 40)
    torch.testing.assert_close(packed(reference_varlen, q, k, v, ids, slots=3), masked_sdpa(q, k, v, merged), atol=1e-6, rtol=0)


# ---- the model through a packed layout ----

def tiny_model(**overrides):
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, **overrides})
    return nonzero_model(h), h


def stand_in_kernels(fn=reference_varlen) -> tg.AttentionKernels:
    return tg.AttentionKernels("torch_varlen", "torch_varlen", "sdpa_causal", fn, "passed")


@pytest.mark.parametrize("kind", ["every_5", "random_short", "bos_first_and_last"])
def test_the_model_through_a_varlen_runner_equals_the_dense_mask(kind, monkeypatch):
    monkeypatch.setattr(tg, "SEGMENT_TOKENS", 1)  # a slot for every token: no merging, exact
    model, h = tiny_model(COMPILE="0")
    rt = tg.Runtime(0, 1, 0, CPU, kernels=stand_in_kernels())
    runners = tg.prepare_model(model, h, rt)
    assert model.varlen is reference_varlen and runners.train.kernel == "torch_varlen"
    ids = ids_with(kind, B=2, T=33)
    params = list(model.parameters())
    results = []
    for forward in (runners.train, model):
        loss = forward(ids[:, :-1], ids[:, 1:])
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in params])
        model.zero_grad(set_to_none=True)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_compiled_varlen_graph_is_whole_and_keeps_one_shape(monkeypatch):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    model, h = tiny_model(COMPILE="1")
    runners = tg.prepare_model(model, h, tg.Runtime(0, 1, 0, CPU, kernels=stand_in_kernels(traceable_varlen)))
    for kind in ("every_5", "random_short", "no_bos"):  # different documents, the same shapes
        ids = ids_with(kind, B=2, T=65)
        compiled = runners.train(ids[:, :-1], ids[:, 1:])
        torch.testing.assert_close(compiled, model(ids[:, :-1], ids[:, 1:], layout=runners.train.model.attention_layout(
            ids[:, :-1], "torch_varlen")), atol=1e-6, rtol=0)
    assert tg.graphs_compiled() == 1


def test_flex_block_mask_is_built_outside_the_compiled_graph(monkeypatch):
    # CPU flex_attention runs forward only here; new documents must not recompile (the mask's
    # closure holds a new tensor each call).
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    model, h = tiny_model(COMPILE="1")
    kernels = tg.AttentionKernels("flex", "flex", "sdpa_causal")
    runners = tg.prepare_model(model, h, tg.Runtime(0, 1, 0, CPU, kernels=kernels))
    with torch.no_grad():
        for seed in (0, 1):
            ids = ids_with("random_short", B=2, T=129, seed=seed)
            flex = runners.score(ids[:, :-1], ids[:, 1:], reduction="none")
            torch.testing.assert_close(flex, model(ids[:, :-1], ids[:, 1:], reduction="none"), atol=2e-5, rtol=1e-5)
    assert tg.graphs_compiled() == 1


# ---- PyTorch's varlen_attn: each signature detected ----

def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert is_causal and query.size(1) == key.size(1), "2.10 has no GQA flag: heads must be repeated"
    return reference_varlen(query, key, value, cu_seq_q, max_q)


def varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
    assert window_size == (-1, 0) and query.size(1) == key.size(1)
    return reference_varlen(query, key, value, cu_seq_q, max_q)


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert window_size == (-1, 0) and enable_gqa == (query.size(1) != key.size(1))
    return reference_varlen(query, key, value, cu_seq_q, max_q)


@pytest.mark.parametrize("version", [varlen_2_10, varlen_2_11, varlen_2_12])
def test_each_varlen_attn_signature_is_called_as_it_expects(version):
    run = tg.torch_varlen(version)
    ids = ids_with("random_short", B=2, T=32)
    q, k, v = attention_inputs(2, 32)
    torch.testing.assert_close(packed(run, q, k, v, ids, 32), masked_sdpa(q, k, v, ids), atol=1e-6, rtol=0)


def test_an_unknown_varlen_signature_is_not_guessed():
    assert tg.torch_varlen(lambda query, key, value, cu, cu_k, max_q, max_k, causal_mode=None: None) is None


def test_the_installed_varlen_attn_signature_is_recognised():
    pytest.importorskip("torch.nn.attention.varlen")
    assert tg.torch_varlen() is not None


def test_fa3_kernels_are_called_with_their_own_signatures(monkeypatch):
    calls = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False):
        calls.append(causal)
        assert cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
        return reference_varlen(q, k, v, cu_seqlens_q, max_seqlen_q), torch.zeros(1)  # with its LSE

    def flash_attn_func(q, k, v, causal=False):
        calls.append(causal)
        return masked_sdpa(q, k, v, torch.full(q.shape[:2], 7))  # one document a row: plain causal
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    kernels = tg.fa3_kernels()
    ids = ids_with("random_short", B=2, T=32)
    q, k, v = attention_inputs(2, 32)
    torch.testing.assert_close(packed(kernels["fa3_varlen"], q, k, v, ids, 32), masked_sdpa(q, k, v, ids), atol=1e-6, rtol=0)
    assert kernels["fa3_causal"](q, k, v).shape == q.shape and calls == [True, True]
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # importing it fails
    assert tg.fa3_kernels() == {}


# ---- choosing the kernel: every candidate checked through the model at start ----

def wrong_kernel(q, k, v, cu_seqlens, max_len):
    """Plain causal attention over the whole stream: crosses documents and rows."""
    return traceable_varlen(q, k, v, torch.tensor([0, q.size(0)], dtype=torch.int32), q.size(0))


def pick(monkeypatch, offered: dict, setting: str = "auto", compile_: str = "0", lines: list | None = None):
    monkeypatch.setattr(tg, "kernel_functions", lambda device: offered)
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "ATTENTION_KERNEL": setting, "COMPILE": compile_})
    return tg.pick_attention_kernels(h, tg.Runtime(0, 1, 0, CPU), (lines if lines is not None else []).append)


def test_auto_takes_the_first_kernel_that_passes_its_check(monkeypatch):
    lines = []
    kernels = pick(monkeypatch, {"fa3_varlen": wrong_kernel, "torch_varlen": traceable_varlen}, lines=lines)
    assert (kernels.train, kernels.nograd, kernels.varlen) == ("torch_varlen", "torch_varlen", traceable_varlen)
    assert len(lines) == 1 and lines[0].startswith("attention_kernel_rejected kernel:fa3_varlen reason:its output differs")
    assert kernels.line() == ("attention_kernels train:torch_varlen eval:torch_varlen calibration:torch_varlen "
                              "documents:sdpa_causal check:fa3_varlen=rejected,torch_varlen=passed")


def test_a_kernel_that_breaks_the_compiled_graph_is_rejected_at_start(monkeypatch):
    # reference_varlen reads cu_seqlens on the host (.tolist()): a graph break under fullgraph.
    lines = []
    assert pick(monkeypatch, {"torch_varlen": reference_varlen}, lines=lines).train == "sdpa_mask"
    assert lines[0].startswith("attention_kernel_rejected kernel:torch_varlen reason:it does not trace whole under "
                               "torch.compile")


def test_a_kernel_that_raises_falls_back_and_a_named_one_that_fails_is_an_error(monkeypatch):
    def raises(*args):
        raise NotImplementedError("head dim 8 unsupported")
    assert pick(monkeypatch, {"fa3_varlen": raises}).train == "sdpa_mask"
    with pytest.raises(tg.ConfigError, match="ATTENTION_KERNEL=fa3: fa3_varlen failed its start-up check "
                                             r"\(NotImplementedError.*use ATTENTION_KERNEL=sdpa"):
        pick(monkeypatch, {"fa3_varlen": raises}, "fa3")
    with pytest.raises(tg.ConfigError, match="ATTENTION_KERNEL=varlen: torch_varlen is not available"):
        pick(monkeypatch, {"fa3_varlen": raises}, "varlen")


def test_a_device_fault_in_the_check_stops_the_run_naming_the_kernel_and_the_way_around(monkeypatch):
    def faults(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")
    with pytest.raises(tg.KernelFault, match="torch_varlen crashed the GPU .* run with ATTENTION_KERNEL=sdpa"):
        pick(monkeypatch, {"torch_varlen": faults})


def test_without_a_varlen_kernel_cuda_trains_with_flex_and_scores_with_sdpa(monkeypatch):
    monkeypatch.setattr(tg, "check_attention", lambda *args: None)  # every kernel passes: the choice alone
    compiled = pick(monkeypatch, {"flex": "flex"}, compile_="1")
    assert (compiled.train, compiled.nograd, compiled.dense) == ("flex", "sdpa_mask", "sdpa_causal")
    assert pick(monkeypatch, {"flex": "flex"}).train == "sdpa_mask"  # eager flex is a slow reference
    assert pick(monkeypatch, {"flex": "flex"}, "flex", "1").nograd == "flex"  # asked for by name
    dense = object()
    kernels = pick(monkeypatch, {"flex": "flex", "fa3_causal": dense}, compile_="1")
    assert (kernels.dense, kernels.dense_fn) == ("fa3_causal", dense)


@pytest.mark.parametrize("compile_", ["0", "1"])
def test_cpu_defaults_to_dense_masks_and_refuses_kernels_it_cannot_run(compile_):
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": compile_})
    kernels = tg.pick_attention_kernels(h, tg.Runtime(0, 1, 0, CPU))
    assert (kernels.train, kernels.nograd, kernels.dense, kernels.check) == ("sdpa_mask", "sdpa_mask", "sdpa_causal", "not needed")
    for setting in ("flex", "fa3", "varlen"):
        h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": compile_, "ATTENTION_KERNEL": setting})
        with pytest.raises(tg.ConfigError, match=f"ATTENTION_KERNEL={setting}: .* is not available on this cpu machine"):
            tg.pick_attention_kernels(h, tg.Runtime(0, 1, 0, CPU))
    with pytest.raises(tg.ConfigError, match="is not a setting|must be one of"):
        tg.Hyperparameters(environ={"ATTENTION_KERNEL": "flash"}).validate(1)


# ---- the loss and calibration, on fewer bytes ----

def test_softcapped_nll_equals_cross_entropy_of_the_capped_logits():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 50, generator=g) * 40).requires_grad_()
    targets = torch.randint(0, 50, (3, 7), generator=g)
    fused = tg.softcapped_nll(logits, targets, 30.0)
    reference = F.cross_entropy((30.0 * torch.tanh(logits / 30.0)).reshape(-1, 50), targets.reshape(-1), reduction="none").view(3, 7)
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-6)
    (g_fused,) = torch.autograd.grad(fused.sum(), logits)
    (g_ref,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=0)
    plain = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), reduction="none").view(3, 7)
    torch.testing.assert_close(tg.softcapped_nll(logits, targets, 0.0), plain, atol=1e-5, rtol=0)


@torch.no_grad()
def test_calibration_through_the_hidden_states_collects_the_same_hessians():
    model, _ = tiny_model()
    model.eval()
    ids = ids_with("random_short", B=4, T=64)
    collected = []
    for forward in (model.hidden_states, lambda ids: forward_logits(model, ids)):  # today's path, and the old one
        model.hessians = model.hessian_buffers()
        forward(ids)
        collected.append(model.hessians)
    model.hessians = None
    for key in collected[0]:
        a, b = collected[0][key], collected[1][key]
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-6, key
