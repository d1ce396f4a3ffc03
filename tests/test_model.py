"""The MODEL and OPTIMIZERS sections of train_gpt.py: the virtual layer schedule, the per-pass
adapters (LoRA factors and pass embeddings) and which optimizer owns each parameter, plus a
smoke test that the script imports without side effects and builds its default model."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from conftest import ROOT, forward_logits

# Five layers with 1..3 looped twice: the loop covers a sequential block (1, 2) and a parallel-
# residual one (3), and there are two repeated passes, so an adapter indexed by the wrong pass
# or layer shows up. Every LoRA target is switched on.
SMALL = {
    "VOCAB_SIZE": "64", "NUM_LAYERS": "5", "MODEL_DIM": "32", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
    "MLP_MULT": "2", "ROPE_DIMS": "4", "LOOP_START": "1", "LOOP_END": "3", "NUM_LOOPS": "2",
    "PARALLEL_RESIDUAL_START": "3", "PASS_LORA_RANK": "1", "PASS_LORA_TARGETS": "q,k,v,o,up,down",
}
ADAPTER_PREFIXES = ("lora_A.", "lora_B.", "pass_embed")


def small_hparams(**overrides: str) -> tg.Hyperparameters:
    return tg.Hyperparameters(environ={**SMALL, **overrides})


def small_model(seed: int = 0, **overrides: str) -> tg.GPT:
    torch.manual_seed(seed)
    return tg.GPT(small_hparams(**overrides).model_config())


@torch.no_grad()
def give_shared_weights_structure(model: tg.GPT, seed: int = 1) -> None:
    """Make the shared (non-adapter) weights look trained. At initialisation the output
    projections are zero, so every block is the identity and an adapter on q, k, v or the MLP
    input could not change anything; random shared weights make each projection matter."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith(ADAPTER_PREFIXES):
            continue
        if name.endswith("_bank"):
            p.copy_(torch.randn(p.shape, generator=gen) * p.size(-1) ** -0.5)
        elif name == "tok_emb.weight":
            p.copy_(torch.randn(p.shape, generator=gen))
        else:  # scales, mixes, gains and skip weights: near their initial values, not exactly
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen)).add_(0.05 * torch.randn(p.shape, generator=gen))


def tokens(batch: int = 2, length: int = 12, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_of(model: tg.GPT, ids: torch.Tensor, looping: bool) -> torch.Tensor:
    model.looping = looping
    return forward_logits(model, ids)


def adapter_names(model: tg.GPT) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(ADAPTER_PREFIXES)]


# ---- virtual layer schedule ----

@pytest.mark.parametrize("num_layers, start, end, loops, looping, expected", [
    (6, 2, 3, 0, True, [(i, 0) for i in range(6)]),
    (6, 2, 3, 1, True, [(0, 0), (1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (4, 0), (5, 0)]),
    (11, 3, 5, 2, True, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (3, 1), (4, 1), (5, 1),
                         (3, 2), (4, 2), (5, 2), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)]),
    (11, 3, 5, 2, False, [(i, 0) for i in range(11)]),
    (4, 0, 3, 1, True, [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)]),
], ids=["no-loop", "span-looped-once", "record-11-layers-3..5-twice", "looping-off", "whole-stack-once"])
def test_virtual_layers_repeat_the_span_with_pass_indices(num_layers, start, end, loops, looping, expected):
    assert tg.virtual_layers(num_layers, start, end, loops, looping) == expected


def test_record_schedule_reads_as_documented():
    order = tg.virtual_layers(11, 3, 5, 2, True)
    assert " ".join(str(layer) for layer, _ in order) == "0 1 2 3 4 5 3 4 5 3 4 5 6 7 8 9 10"


def test_model_schedule_follows_its_looping_switch():
    model = small_model()
    model.looping = False
    assert [layer for layer, _ in model.schedule()] == [0, 1, 2, 3, 4]
    model.looping = True
    assert [layer for layer, _ in model.schedule()] == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4]


# ---- adapters change what they should and nothing else ----

@pytest.mark.parametrize("rank", [1, 2])
def test_zero_adapters_give_exactly_the_shared_weight_model(rank):
    adapted = small_model(PASS_LORA_RANK=str(rank))
    give_shared_weights_structure(adapted)
    plain = small_model(PASS_LORA_RANK="0", PASS_EMBED="0")
    assert adapter_names(plain) == []
    result = plain.load_state_dict(adapted.state_dict(), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(adapter_names(adapted))
    # Fresh adapters: B and the pass embeddings start at zero, A does not.
    assert all(not p.any() for n, p in adapted.named_parameters() if n.startswith(("lora_B.", "pass_embed")))
    assert all(p.abs().min() > 0 for n, p in adapted.named_parameters() if n.startswith("lora_A."))
    ids = tokens()
    for looping in (True, False):
        torch.testing.assert_close(logits_of(adapted, ids, looping), logits_of(plain, ids, looping), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["lora_B.q", "lora_B.k", "lora_B.v", "lora_B.o", "lora_B.up", "lora_B.down", "pass_embed"])
def test_nonzero_adapter_changes_looped_output_only(name):
    model = small_model()
    give_shared_weights_structure(model)
    ids = tokens()
    looped, unlooped = logits_of(model, ids, True), logits_of(model, ids, False)
    param = dict(model.named_parameters())[name]
    with torch.no_grad():
        param.copy_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    assert (logits_of(model, ids, True) - looped).abs().max() > 1e-3
    assert torch.equal(logits_of(model, ids, False), unlooped)


@pytest.mark.parametrize("name", ["lora_B.q", "pass_embed"])
def test_every_pass_and_layer_has_its_own_adapter_slot(name):
    # Changing any one (pass, layer) slot changes the looped output: no slot is shared or unused.
    model = small_model()
    give_shared_weights_structure(model)
    ids = tokens()
    base = logits_of(model, ids, True)
    param = dict(model.named_parameters())[name]
    passes, span = param.shape[:2]
    assert (passes, span) == (2, 3)
    for p in range(passes):
        for j in range(span):
            with torch.no_grad():
                saved = param[p, j].clone()
                param[p, j] = 0.1
            assert (logits_of(model, ids, True) - base).abs().max() > 1e-4, (p, j)
            with torch.no_grad():
                param[p, j] = saved


@pytest.mark.parametrize("overrides", [
    {"PASS_LORA_RANK": "0", "PASS_EMBED": "0", "NUM_LOOPS": "0"},
    {"NUM_LOOPS": "0"},  # adapters requested, but without repeated passes there is nothing to adapt
], ids=["adapters-off", "no-loops"])
def test_without_loops_the_model_is_a_plain_unet_gpt(overrides):
    model = small_model(**overrides)
    assert model.adapter_parameters() == [] and model.pass_embed is None
    assert sorted(n for n, _ in model.named_parameters()) == sorted([
        "tok_emb.weight", "qo_bank", "kv_bank", "up_bank", "down_bank",
        "attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "skip_gates",
        "smear_gate", "smear_lambda", "attn_gate", "lane_post", "lane_resid"])
    assert model.skip_weights.shape[0] == 5 // 2  # one U-Net skip per encoder layer
    give_shared_weights_structure(model)
    ids = tokens()
    assert torch.equal(logits_of(model, ids, True), logits_of(model, ids, False))


@pytest.mark.parametrize("rank", [1, 2])
def test_project_adds_the_low_rank_delta(rank):
    model = small_model(PASS_LORA_RANK=str(rank))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    for target in tg.LORA_TARGETS:
        out_dim, in_dim = model._target_shape(target)
        x = torch.randn(2, 5, in_dim, generator=gen, dtype=torch.float32)
        weight = torch.randn(out_dim, in_dim, generator=gen)
        with torch.no_grad():
            assert torch.equal(model.project(x, weight, target, 2, 0, 0), F.linear(x, weight))  # first pass: no delta
            for pass_idx in (1, 2):
                for layer in (1, 2, 3):
                    a = model.lora_A[target][pass_idx - 1, layer - 1]
                    b = model.lora_B[target][pass_idx - 1, layer - 1]
                    assert a.shape == (rank, in_dim) and b.shape == (out_dim, rank)
                    expected = x @ (weight + b @ a).T
                    got = model.project(x, weight, target, layer, pass_idx, 0)
                    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
                    assert (got - F.linear(x, weight)).abs().max() > 1e-2


# ---- optimizers ----

def test_adapters_train_with_adamw_b_first_then_a():
    h = small_hparams()
    torch.manual_seed(0)
    model = tg.GPT(h.model_config())
    give_shared_weights_structure(model)
    model.looping = True
    opt = tg.Optimizers(model, h, 0, 1)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    ids = tokens(4, 17)

    def train_step() -> None:
        model(ids[:, :-1], ids[:, 1:]).backward()
        opt.step()
        opt.zero_grad()

    def moved(name: str) -> list[tuple[int, int]]:
        """The (pass, layer) slots of an adapter that changed since `before`."""
        delta = (params[name].detach() - before[name]).flatten(2).abs().amax(-1)
        return [tuple(ix) for ix in (delta > 0).nonzero().tolist()]

    every_slot = [(p, j) for p in range(2) for j in range(3)]
    lora_a = [n for n in params if n.startswith("lora_A.")]
    lora_b = [n for n in params if n.startswith("lora_B.")]
    assert len(lora_a) == len(lora_b) == 6

    model(ids[:, :-1], ids[:, 1:]).backward()
    # With B = 0 the delta x A^T B^T does not depend on A, so A gets no gradient on step one.
    for name in lora_a:
        assert params[name].grad is None or not params[name].grad.any(), name
    for name in lora_b + ["pass_embed"]:
        assert params[name].grad is not None and params[name].grad.abs().amax() > 0, name
    opt.step()
    opt.zero_grad()
    for name in lora_b + ["pass_embed"]:
        assert moved(name) == every_slot, name
    for name in lora_a:
        assert torch.equal(params[name], before[name]), name

    before = {n: p.detach().clone() for n, p in params.items()}
    train_step()
    for name in lora_a + lora_b + ["pass_embed"]:
        assert moved(name) == every_slot, name


def test_every_parameter_has_exactly_one_optimizer_and_adapters_their_own_group():
    h = small_hparams(PASS_LORA_RANK="2")
    model = tg.GPT(h.model_config())
    opt = tg.Optimizers(model, h, 0, 1)
    owners: dict[int, list[str]] = {}
    for p in opt.muon.banks:
        owners.setdefault(id(p), []).append("muon")
    for group in opt.adam.param_groups:
        for p in group["params"]:
            owners.setdefault(id(p), []).append(group["name"])
    named = dict(model.named_parameters())
    assert {n: owners.get(id(p)) for n, p in named.items() if n.endswith("_bank")} == {
        "qo_bank": ["muon"], "kv_bank": ["muon"], "up_bank": ["muon"], "down_bank": ["muon"]}
    for name, p in named.items():
        assert len(owners.get(id(p), [])) == 1, (name, owners.get(id(p)))
        if name.startswith(ADAPTER_PREFIXES):
            assert owners[id(p)] == ["adapters"], name
        elif not name.endswith("_bank"):
            assert owners[id(p)][0] in ("embed", "scalars"), name
    assert len(owners) == len(named)  # nothing outside the model is optimized
    adapters = next(g for g in opt.adam.param_groups if g["name"] == "adapters")
    assert adapters["weight_decay"] == 0.0 and adapters["lr"] == h.adapter_lr
    assert len(adapters["params"]) == 6 * 2 + 1


# ---- smoke ----

def test_import_does_no_work_and_touches_no_data(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    missing = tmp_path / "nowhere"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_PATH": str(missing), "TOKENIZER_PATH": str(missing / "t.model"),
           "RUN_ID": "import_smoke", "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import train_gpt, torch.distributed as d; assert not d.is_initialized(); print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "imported\n"  # nothing printed, logged or started
    assert list(cwd.iterdir()) == [] and not missing.exists()


def test_default_model_builds_and_runs_a_forward_on_cpu():
    h = tg.Hyperparameters(environ={})
    h.validate(8)
    cfg = h.model_config()
    torch.manual_seed(0)
    model = tg.GPT(cfg)
    model.looping = True
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        logits = forward_logits(model, ids[:, :-1])
        loss = model(ids[:, :-1], ids[:, 1:])
    assert logits.shape == (1, 8, cfg.vocab_size) and torch.isfinite(logits).all()
    # The tied embedding starts tiny, so the first prediction is close to uniform.
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.05
    params = sum(p.numel() for p in model.parameters())
    adapter_params = sum(p.numel() for p in model.adapter_parameters())
    code_bytes = (ROOT / "train_gpt.py").stat().st_size
    layers = " ".join(str(layer) for layer, _ in model.schedule())
    print(f"\ndefault model: vocab {cfg.vocab_size}, {cfg.num_layers} layers x {cfg.model_dim} "
          f"({cfg.num_heads} heads, {cfg.num_kv_heads} kv, head_dim {cfg.head_dim}, mlp {cfg.mlp_dim}), "
          f"virtual layers {layers}\nparameters {params:,} (adapters {adapter_params:,}), "
          f"train_gpt.py code bytes {code_bytes:,}")
    assert adapter_params > 0 and params > 10 * 2**20


