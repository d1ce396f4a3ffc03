"""The compiled path, proven on the CPU: every graph the script compiles (training steps with
looping off and on, evaluation windows (GPTQ calibration stays eager), chunked and
per-document TTT, the global phases) compiles whole (fullgraph=True: a graph break is an error) and matches eager;
a whole run compiles exactly the graphs the README describes (How it runs), so a change that adds a
recompile inside the timed budget fails here; and FlashAttention-3 is chosen when it imports.

Most tests compile with the `aot_eager` backend (dynamo's tracing and AOTAutograd's forward
and backward graphs, run without code generation: fast); two use inductor itself, the backend
the GPU uses: the training step, and calibration into fresh accumulators after its warm-up."""
from __future__ import annotations

import functools
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from conftest import TINY_MODEL_ENV, TINY_RUN_ENV, forward_logits

CPU = torch.device("cpu")
RT = tg.Runtime(0, 1, 0, CPU)


@pytest.fixture
def backend(monkeypatch):
    """Make the script's torch.compile calls use a given backend; counts the graphs built."""
    original = torch.compile

    def use(name: str):
        monkeypatch.setattr(torch, "compile", functools.partial(original, backend=name))
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    return use


def tiny_model(**overrides: str) -> tuple[tg.GPT, tg.Hyperparameters]:
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": "1", **overrides})
    torch.manual_seed(0)
    model = tg.GPT(h.model_config())
    with torch.no_grad():  # zero-initialised parts random, so every path shapes the output
        for name, p in model.named_parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model, h


def documents(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(2, 512, (batch, length + 1), generator=torch.Generator().manual_seed(seed))
    ids[:, ::13] = tg.BOS_ID
    return ids


def grads(params) -> list[torch.Tensor]:
    params = list(params)
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return out


def assert_same(compiled: list[torch.Tensor], eager: list[torch.Tensor], atol: float) -> None:
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def loss_and_grads(forward, ids: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """One training step's loss and gradients (cleared afterwards) through `forward`."""
    loss = forward(ids[:, :-1], ids[:, 1:])
    loss.backward()
    return [loss.detach()] + grads(params)


# ---- every path compiles whole and matches eager ----

def test_training_and_evaluation_compile_whole_and_match_eager_and_calibration_stays_eager(backend):
    backend("aot_eager")
    model, h = tiny_model()
    assert model.cfg.doc_attention and model.smear_gate is not None and model.attn_gate is not None
    runners = tg.prepare_model(model, h, RT)
    ids = documents(4, 64)
    params = list(model.parameters())
    for looping in (False, True):
        model.looping = looping
        assert_same(loss_and_grads(runners.train, ids, params), loss_and_grads(model, ids, params), atol=1e-6)
    with torch.no_grad():
        assert_same([runners.score(ids[:, :-1], ids[:, 1:], reduction="none")],
                    [model(ids[:, :-1], ids[:, 1:], reduction="none")], atol=1e-6)
        model.hessians = model.hessian_buffers()
        runners.calibrate(ids[:, :-1])
        compiled, model.hessians = model.hessians, model.hessian_buffers()
        forward_logits(model, ids[:, :-1])
        eager, model.hessians = model.hessians, None
    assert_same([compiled[k] for k in sorted(compiled)], [eager[k] for k in sorted(eager)], atol=1e-4)
    # Chunked TTT and the global phases train through the same runner with per-token losses.
    nll = runners.train(ids[:, :-1], ids[:, 1:], reduction="none")
    nll.mean().backward()
    compiled = grads(params)
    model(ids[:, :-1], ids[:, 1:], reduction="none").mean().backward()
    assert_same(compiled, grads(params), atol=1e-6)
    assert runners.calibrate.fn == model.hidden_states  # eager: compiled, it faulted on the first GPU run
    assert tg.graphs_compiled() == 4  # looping off, looping on, evaluation, per-token training


def test_per_document_ttt_compiles_one_graph_for_every_window_width(backend):
    backend("aot_eager")
    model, h = tiny_model()
    model.looping = True
    runners = tg.prepare_model(model, h, RT)
    for p in model.parameters():
        p.requires_grad_(False)
    lora = tg.TTTLoRA(model, 3, 4, 144.0)
    lora.reset(True, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for b in lora.B.values():
            b.normal_(0, 0.1)
    model.ttt_lora, model.rows_are_documents = lora, True
    ids = documents(3, 64)
    ids[:, 1:] = torch.where(ids[:, 1:] == tg.BOS_ID, 7, ids[:, 1:])  # one document per row
    for width in (16, 64, 40):  # the chunk, the full window, and one in between
        x, y = ids[:, :width], ids[:, 1:width + 1]
        nll = runners.documents(x, y, reduction="none")
        nll.sum().backward()
        compiled = [nll.detach()] + grads(lora.parameters())
        nll = model(x, y, reduction="none")
        nll.sum().backward()
        assert_same(compiled, [nll.detach()] + grads(lora.parameters()), atol=1e-5)
    assert tg.graphs_compiled() == 1
    # Rows that are whole documents need no document mask: the result is the same with it.
    model.rows_are_documents = False
    with torch.no_grad():
        masked = model(ids[:, :-1], ids[:, 1:], reduction="none")
        model.rows_are_documents = True
        torch.testing.assert_close(model(ids[:, :-1], ids[:, 1:], reduction="none"), masked, atol=1e-6, rtol=0)


def test_inductor_compiles_the_training_step_and_matches_eager():
    # The GPU's backend, generating C++ here: about a minute per graph on two cores.
    torch._dynamo.reset()
    model, h = tiny_model()
    model.looping = True
    runners = tg.prepare_model(model, h, RT)
    ids = documents(4, 64)
    params = list(model.parameters())
    # Measured: loss equal to 1e-7, gradients to about 1e-6 (fused kernels sum in another order).
    assert_same(loss_and_grads(runners.train, ids, params), loss_and_grads(model, ids, params), atol=2e-5)


# ---- the recompilation audit ----

AUDIT_ENV = {**TINY_RUN_ENV, "COMPILE": "1", "ITERATIONS": "8", "WARMUP_STEPS": "2", "ENABLE_LOOPING_AT": "0.5",
             "VAL_TOKENS_LIMIT": "2500", "EVAL_BATCH_SEQS": "8", "RUN_ID": "audit", "CHECKPOINT_PATH": ""}


def compiled_by_stage(folder) -> dict[str, int]:
    text = (folder / "logs" / "audit.txt").read_text().split("=" * 100 + "\n", 1)[1]
    stages = {}
    for line in text.splitlines():
        if line.startswith("compiled_graphs "):
            fields = dict(item.split(":", 1) for item in line.split()[1:])
            stages[fields["stage"]] = int(fields["new"])
    return stages


@pytest.mark.parametrize("mode, context, expected", [
    ("phased", "", {"warmup": 2, "training": 0, "gptq": 0, "prequant": 1, "roundtrip": 0, "sliding": 0,
                    "ttt_warmup": 3, "ttt": 0}),
    ("chunked", "", {"warmup": 2, "training": 0, "gptq": 0, "prequant": 1, "roundtrip": 0, "sliding": 0,
                     "ttt_warmup": 1, "ttt": 0}),
    # Rows of 32 until 25 %, then 64: three training graphs (32 unlooped, 64 unlooped, 64 looped).
    ("phased", "32:0.25", {"warmup": 3, "training": 0, "gptq": 0, "prequant": 1, "roundtrip": 0, "sliding": 0,
                           "ttt_warmup": 3, "ttt": 0}),
], ids=["phased", "chunked", "progressive-context"])
def test_a_whole_run_compiles_exactly_the_listed_graphs(backend, tiny_data, tmp_path, monkeypatch, mode, context, expected):
    """Warm-up (each row length and looping state) before the clock;
    nothing new when looping or the context switches mid-run, in GPTQ, for the last partial
    evaluation batch, on the artifact's fresh model, for TTT chunks of unequal width or after a phase."""
    backend("eager")  # dynamo alone decides what is recompiled; no code is generated
    monkeypatch.chdir(tmp_path)
    env = {**AUDIT_ENV, **tiny_data, "TTT_MODE": mode, "PROGRESSIVE_CONTEXT": context,
           "ARTIFACT_PATH": str(tmp_path / "m.ptz")}
    h = tg.Hyperparameters(environ=env)
    val = tg.load_validation_tokens(tiny_data["DATA_PATH"], h.val_tokens_limit)
    assert (len(val) - 1) // h.eval_seq_len % h.eval_batch_seqs != 0  # a partial last batch is exercised
    tg.run(h, RT)
    assert compiled_by_stage(tmp_path) == expected


# ---- FlashAttention-3 where it imports, never required ----

def flash_attention_stand_in(calls: list, returns_lse: bool):
    """FlashAttention-3's interface (flash_attn_interface.flash_attn_func): (B, T, H, D) layout,
    grouped KV heads, causal flag. It computes real attention with PyTorch, so the model's result
    through it must match the SDPA path; it records the shapes it was called with."""
    def flash_attn_func(q, k, v, causal=False):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        groups = q.size(2) // k.size(2)
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        out = out.transpose(1, 2)
        return (out, torch.zeros(q.shape[:3])) if returns_lse else out
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, None
    return module


def test_flash_attention_3_is_chosen_for_document_rows_when_it_imports_and_passes(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # importing it fails
    assert tg.fa3_kernels() == {}
    monkeypatch.setitem(sys.modules, "flash_attn_interface", flash_attention_stand_in([], False))
    offered = {"fa3_causal": tg.fa3_kernels()["fa3_causal"]}
    monkeypatch.setattr(tg, "kernel_functions", lambda device: offered)  # as a CUDA machine offers it
    h = tg.Hyperparameters(environ={**TINY_MODEL_ENV, "COMPILE": "0"})
    kernels = tg.pick_attention_kernels(h, RT)
    assert (kernels.dense, kernels.dense_fn, kernels.check) == ("fa3_causal", offered["fa3_causal"], "fa3_causal=passed")
    model, _ = tiny_model(DOC_ATTENTION="0")
    tg.prepare_model(model, h, tg.Runtime(0, 1, 0, CPU, kernels=kernels))
    assert model.dense is offered["fa3_causal"]
    monkeypatch.undo()  # the CPU again: it offers no kernel
    tg.prepare_model(model, h, RT)
    assert model.dense is None  # a CPU run never calls it


@pytest.mark.parametrize("returns_lse", [False, True])
def test_the_flash_attention_3_path_gives_the_sdpa_result(monkeypatch, returns_lse):
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn_interface", flash_attention_stand_in(calls, returns_lse))
    dense = tg.fa3_kernels()["fa3_causal"]
    model, h = tiny_model(DOC_ATTENTION="0")
    model.looping = True
    ids = documents(2, 32)
    with torch.no_grad():
        reference = forward_logits(model, ids[:, :-1])
        model.dense = dense
        through_fa3 = forward_logits(model, ids[:, :-1])
    torch.testing.assert_close(through_fa3, reference, atol=1e-5, rtol=1e-5)
    cfg = model.cfg
    assert calls == [((2, 32, cfg.num_heads, cfg.head_dim), (2, 32, cfg.num_kv_heads, cfg.head_dim), True)] * len(model.schedule())
    # Document attention never goes to the dense kernel: packed or masked layouts take other kernels.
    calls.clear()
    doc_model, _ = tiny_model()
    doc_model.dense = dense
    with torch.no_grad():
        forward_logits(doc_model, ids[:, :-1])
    assert calls == []
