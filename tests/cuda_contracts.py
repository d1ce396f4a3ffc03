"""CUDA-only contracts, made checkable on the CPU.

Stand-ins for the attention kernels train_gpt.py can pick on a GPU, as strict as the real ones
about what they accept (FlashAttention-3's `flash_attn_func` / `flash_attn_varlen_func`, PyTorch's
`varlen_attn` in its 2.10 and 2.12 signatures, `flex_attention`): the same signatures; q, k and v
of one dtype, fp16 or bf16 (flex also takes fp32); int32 `cu_seqlens`; a contiguous last
dimension; head dims a multiple of 8 up to 256; query heads a multiple of the KV heads. Each
computes the exact result with SDPA in float32 and returns it in the input dtype.

And `cuda_autocast_policy()`: under CPU autocast, the ops CUDA autocast runs in float32 (its
`AT_FORALL_FP32` list: rms_norm from PyTorch 2.12 on, layer_norm, and the reductions of its
set-optional-dtype list: softmax, log_softmax, logsumexp, norm) return float32 here too, as
they do on a GPU. CPU autocast keeps them in bf16, which is why a CPU run cannot otherwise see
a float32 q meeting a bf16 v at the attention kernel.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class KernelRefused(RuntimeError):
    """What the real kernel raises for inputs it does not take."""


def _check(q, k, v, *, fp32_ok: bool = False, heads_dim: int) -> None:
    if not (q.dtype == k.dtype == v.dtype):
        raise KernelRefused(f"query, key and value must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if fp32_ok else ())
    if q.dtype not in allowed:
        raise KernelRefused(f"only {', '.join(map(str, allowed))} are supported, got {q.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise KernelRefused(f"{name} must have contiguous last dimension")
    D = q.size(-1)
    if D % 8 or D > 256 or k.size(-1) != D or v.size(-1) != D:
        raise KernelRefused(f"head dimension {D} is not supported (a multiple of 8, at most 256, equal for q, k, v)")
    if q.size(heads_dim) % k.size(heads_dim) or k.size(heads_dim) != v.size(heads_dim):
        raise KernelRefused("number of query heads must be a multiple of the number of key/value heads")


def _check_cu(cu: torch.Tensor, name: str) -> None:
    if cu.dtype != torch.int32:
        raise KernelRefused(f"{name} must have dtype torch.int32, got {cu.dtype}")
    if cu.dim() != 1 or not cu.is_contiguous():
        raise KernelRefused(f"{name} must be a contiguous 1-D tensor")


def _attend(q, k, v, mask) -> torch.Tensor:
    """(B, H, T, D) float32 attention with grouped KV heads; mask (B|1, 1, T, T) boolean."""
    groups = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


def _segment_mask(cu: torch.Tensor, total: int) -> torch.Tensor:
    pos = torch.arange(total, device=cu.device)
    segment = torch.searchsorted(cu, pos.to(cu.dtype), right=True)
    return (segment[:, None] == segment[None, :]) & (pos[:, None] >= pos[None, :])


def _varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal: bool) -> torch.Tensor:
    _check(q, k, v, heads_dim=1)
    _check_cu(cu_q, "cu_seqlens_q")
    _check_cu(cu_k, "cu_seqlens_k")
    if q.dim() != 3:
        raise KernelRefused("varlen attention takes packed (total_tokens, heads, head_dim) tensors")
    if not causal:
        raise KernelRefused("these stand-ins only model causal attention")
    mask = _segment_mask(cu_q, q.size(0))[None, None]
    out = _attend(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask)
    return out[0].transpose(0, 1).to(q.dtype)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, *args, **kwargs):
    """FlashAttention-3's dense kernel: (B, T, H, D) in and out; returns (out, lse) like its older builds."""
    _check(q, k, v, heads_dim=2)
    if q.dim() != 4:
        raise KernelRefused("flash_attn_func takes (batch, seqlen, heads, head_dim) tensors")
    T = q.size(1)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if causal else None
    out = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2).to(q.dtype)
    return out, torch.zeros(q.size(0), q.size(2), T, device=q.device)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                           causal=False, *args, **kwargs):
    """FlashAttention-3's varlen kernel."""
    return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal)


def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None):
    """torch.nn.attention.varlen.varlen_attn as PyTorch 2.10 declares it (no grouped heads)."""
    if query.size(1) != key.size(1):
        raise KernelRefused("varlen_attn (2.10) needs as many key/value heads as query heads")
    return _varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal)


def varlen_attn_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False):
    """varlen_attn from PyTorch 2.12: causal as window_size=(-1, 0), grouped heads behind enable_gqa."""
    if query.size(1) != key.size(1) and not enable_gqa:
        raise KernelRefused("grouped key/value heads need enable_gqa=True")
    return _varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, tuple(window_size) == (-1, 0))


def flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False, **kwargs):
    """flex_attention: (B, H, T, D); fp32 allowed, mixed dtypes refused; the BlockMask's mask_mod evaluated densely."""
    _check(query, key, value, fp32_ok=True, heads_dim=1)
    if query.size(1) != key.size(1) and not enable_gqa:
        raise KernelRefused("grouped key/value heads need enable_gqa=True")
    from torch.nn.attention.flex_attention import create_mask
    B, _, T, _ = query.shape
    mask = create_mask(block_mask.mask_mod, B, None, T, T, device=query.device)
    return _attend(query, key, value, mask).to(query.dtype)


FP32_UNDER_CUDA_AUTOCAST = ("rms_norm", "layer_norm", "softmax", "log_softmax", "normalize")


@contextlib.contextmanager
def cuda_autocast_policy():
    """Under CPU autocast, the ops above return float32 (their inputs cast up), as on CUDA."""
    originals = {name: getattr(F, name) for name in FP32_UNDER_CUDA_AUTOCAST}
    originals_torch = {"logsumexp": torch.logsumexp}

    def fp32(fn):
        def run(x, *args, **kwargs):
            if torch.is_autocast_enabled("cpu") and x.is_floating_point():
                with torch.autocast("cpu", enabled=False):
                    return fn(x.float(), *args, **kwargs)
            return fn(x, *args, **kwargs)
        return run

    try:
        for name, fn in originals.items():
            setattr(F, name, fp32(fn))
        torch.logsumexp = fp32(originals_torch["logsumexp"])
        yield
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)
        torch.logsumexp = originals_torch["logsumexp"]
