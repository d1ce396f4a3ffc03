"""The CUDA path's contracts, checked on the CPU (tests/cuda_contracts.py): stand-ins of every
attention kernel the script can pick on a GPU refuse what the real kernels refuse, and the whole
model, forward and backward, eager and compiled, runs through each of them under bf16 autocast
with CUDA's autocast policy (norms and reductions in float32) for every stage's layout:
training, evaluation, GPTQ calibration, per-document TTT and the global TTT phases."""
from __future__ import annotations

import functools
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import cuda_contracts as cc
import train_gpt as tg
from conftest import TINY_MODEL_ENV

CPU = torch.device("cpu")
BOS = tg.BOS_ID


def qkv(dtype=torch.bfloat16, B=2, T=24, H=4, KV=2, D=16, layout="bthd"):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, n, D, generator=g).to(dtype) for n in (H, KV, KV))
    return [t.transpose(1, 2) for t in (q, k, v)] if layout == "bhtd" else [q, k, v]


def documents_ids(B=2, T=24):
    ids = torch.randint(2, 100, (B, T), generator=torch.Generator().manual_seed(1))
    ids[:, ::7] = BOS
    return ids


def call(kernel: str, q, k, v, ids, cu_dtype=torch.int32):
    """Run one stand-in the way train_gpt.py calls the real kernel."""
    B, T, H, D = q.shape
    if kernel == "fa3_dense":
        return cc.flash_attn_func(q, k, v, causal=True)[0]
    if kernel == "flex":
        mask = tg.document_block_mask(ids, BOS)
        return cc.flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                                 enable_gqa=True).transpose(1, 2)
    cu = tg.packed_segments(ids, BOS, T).to(cu_dtype)
    packed = [t.reshape(B * T, -1, D) for t in (q, k, v)]
    if kernel == "fa3_varlen":
        out = cc.flash_attn_varlen_func(*packed, cu, cu, T, T, causal=True)
    elif kernel == "varlen_2_10":
        out = tg.torch_varlen(cc.varlen_attn_2_10)(*packed, cu, T)
    else:
        out = tg.torch_varlen(cc.varlen_attn_2_12)(*packed, cu, T)
    return out.view(B, T, H, D)


STANDINS = ["fa3_dense", "fa3_varlen", "varlen_2_10", "varlen_2_12", "flex"]
REFUSALS = {  # input -> (how it is made, the kernels that refuse it, a fragment of the refusal)
    "mixed_dtypes": (lambda q, k, v: (q.float(), k, v), STANDINS, "same dtype"),
    "all_fp32": (lambda q, k, v: (q.float(), k.float(), v.float()), [s for s in STANDINS if s != "flex"], "supported"),
    "last_dim_not_contiguous": (lambda q, k, v: (q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v), STANDINS,
                                "contiguous last dimension"),
    "head_dim_12": (lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12]), STANDINS, "head dimension"),
}


@pytest.mark.parametrize("kernel", STANDINS)
@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_stand_in_refuses_what_its_kernel_refuses(kernel, case):
    make, refusing, fragment = REFUSALS[case]
    q, k, v = make(*qkv())
    if kernel in refusing:
        with pytest.raises(cc.KernelRefused, match=fragment):
            call(kernel, q, k, v, documents_ids())
    else:
        call(kernel, q, k, v, documents_ids())


@pytest.mark.parametrize("kernel", ["fa3_varlen", "varlen_2_10", "varlen_2_12"])
def test_varlen_stand_ins_refuse_int64_segment_tables(kernel):
    with pytest.raises(cc.KernelRefused, match="torch.int32"):
        call(kernel, *qkv(), documents_ids(), cu_dtype=torch.int64)


@pytest.mark.parametrize("kernel", STANDINS)
def test_each_stand_in_computes_document_attention_on_what_it_accepts(kernel):
    q, k, v = qkv()
    ids = documents_ids() if kernel != "fa3_dense" else torch.full((2, 24), 5)  # dense: one document a row
    groups = q.size(2) // k.size(2)
    want = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().repeat_interleave(groups, 2).transpose(1, 2),
        v.float().repeat_interleave(groups, 2).transpose(1, 2), attn_mask=tg.document_mask(ids, BOS)).transpose(1, 2)
    got = call(kernel, q, k, v, ids)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=0)


# ---- the model through them, under CUDA's autocast policy ----

@pytest.fixture
def kernels(monkeypatch):
    """AttentionKernels for one stand-in, with FlashAttention-3's dense stand-in for per-document TTT."""
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func, module.flash_attn_varlen_func = cc.flash_attn_func, cc.flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    import torch.nn.attention.flex_attention as flex_module
    monkeypatch.setattr(flex_module, "flex_attention", cc.flex_attention)

    def make(name: str) -> tg.AttentionKernels:
        fa3 = tg.fa3_kernels()
        if name == "flex":
            return tg.AttentionKernels("flex", "flex", "fa3_causal", dense_fn=fa3["fa3_causal"])
        fn = {"fa3_varlen": fa3["fa3_varlen"], "varlen_2_10": tg.torch_varlen(cc.varlen_attn_2_10),
              "varlen_2_12": tg.torch_varlen(cc.varlen_attn_2_12)}[name]
        kind = "fa3_varlen" if name == "fa3_varlen" else "torch_varlen"
        return tg.AttentionKernels(kind, kind, "fa3_causal", fn, fa3["fa3_causal"])
    return make


def run_every_stage(model: tg.GPT, runners: tg.Runners, h: tg.Hyperparameters) -> dict[str, float]:
    """One forward and backward (or forward only) of each stage, as the script lays it out."""
    ids = torch.randint(2, 512, (4, 65), generator=torch.Generator().manual_seed(2))
    ids[:, ::11] = BOS
    losses = {}
    with torch.autocast("cpu", dtype=torch.bfloat16), cc.cuda_autocast_policy():
        model.train()
        for stage, rows in (("training", ids[:2]), ("global_phase", ids[2:])):
            loss = runners.train(rows[:, :-1], rows[:, 1:])
            loss.backward()
            losses[stage] = float(loss.detach())
        model.eval()
        with torch.no_grad():
            losses["evaluation"] = float(runners.score(ids[:, :-1], ids[:, 1:], reduction="none").float().mean())
            model.hessians = model.hessian_buffers()
            runners.calibrate(ids[:, :-1])
            losses["calibration"] = float(model.hessians[("final", 0)].trace())
            model.hessians = None
        lora = tg.TTTLoRA(model, 4, 4, 8.0, h.ttt_targets())
        lora.reset(True, torch.Generator().manual_seed(0))
        model.ttt_lora, model.rows_are_documents = lora, True
        try:
            docs = ids[:, 1:].clone()  # one document a row, as per-document TTT reads them
            docs[:, 0] = BOS
            wanted = torch.stack([docs[:, 1:], torch.randint_like(docs[:, 1:], 2, 512)], dim=-1)  # target, n-gram hint
            nll = runners.documents(docs[:, :-1], wanted, reduction="none")
            nll.float()[..., 0].mean().backward()
            losses["documents"] = float(nll.float()[..., 0].mean())
        finally:
            model.ttt_lora, model.rows_are_documents = None, False
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert model.qo_bank.grad is not None and lora.B["q"].grad is not None
    return losses


# Compiled (dynamo and AOTAutograd, no code generation): one packed-varlen kernel and flex's BlockMask
# cover both layouts a graph can take; the varlen_attn signatures differ only outside the graph.
@pytest.mark.parametrize("kernel, compiled", [(k, False) for k in ("fa3_varlen", "varlen_2_10", "varlen_2_12", "flex")]
                         + [("fa3_varlen", True), ("flex", True)])
def test_the_model_runs_every_stage_through_each_kernel_under_cuda_autocast(kernels, kernel, compiled, monkeypatch):
    if compiled:
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
        torch._dynamo.reset()
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": str(int(compiled))})
    rt = tg.Runtime(0, 1, 0, CPU, kernels=kernels(kernel))
    torch.manual_seed(0)
    model = tg.GPT(h.model_config())
    with torch.no_grad():  # zero-initialised parts random, so every path shapes the output
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    model.looping = True
    got = run_every_stage(model, tg.prepare_model(model, h, rt), h)
    # The same stages eagerly through SDPA with dense masks: the kernels compute the same thing.
    reference = tg.GPT(h.model_config())
    reference.load_state_dict(model.state_dict())
    reference.looping = True
    want = run_every_stage(reference, tg.Runners.eager(reference), h)
    for stage in want:
        assert got[stage] == pytest.approx(want[stage], rel=2e-2), stage


# ---- the start-up check goes through the model, under the run's autocast ----

def test_the_start_up_check_catches_a_model_that_hands_a_kernel_mixed_dtypes(kernels, monkeypatch):
    """The check runs the model's own attention block under the run's autocast: with rms_norm as
    it was before this fix (float32 out under CUDA's 2.12 policy), every strict kernel is rejected
    for mixed dtypes at start; with today's rms_norm each passes."""
    monkeypatch.setattr(tg.Runtime, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    offered = {"fa3_varlen": tg.fa3_kernels()["fa3_varlen"], "torch_varlen": tg.torch_varlen(cc.varlen_attn_2_12),
               "fa3_causal": tg.fa3_kernels()["fa3_causal"]}
    monkeypatch.setattr(tg, "kernel_functions", lambda device: offered)
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": "1"})
    rt = tg.Runtime(0, 1, 0, CPU)
    with cc.cuda_autocast_policy():
        kernels_now = tg.pick_attention_kernels(h, rt)
        monkeypatch.setattr(tg, "rms_norm", lambda x: F.rms_norm(x, (x.size(-1),)))
        lines = []
        kernels_before = tg.pick_attention_kernels(h, rt, lines.append)
    assert (kernels_now.train, kernels_now.dense, kernels_now.check) == (
        "fa3_varlen", "fa3_causal", "fa3_varlen=passed,fa3_causal=passed")
    assert (kernels_before.train, kernels_before.dense) == ("sdpa_mask", "sdpa_causal")  # flex is not offered here
    assert kernels_before.check == "fa3_varlen=rejected,torch_varlen=rejected,fa3_causal=rejected"
    assert all("same dtype, got torch.float32, torch.float32, torch.bfloat16" in line for line in lines)
