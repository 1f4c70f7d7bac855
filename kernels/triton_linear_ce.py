"""Triton linear + cross-entropy for CUDA: logits exist only as [BLOCK_N, BLOCK_V] tiles.

Three kernels, no atomics (deterministic):
- forward, one program per token block: online log-sum-exp over vocabulary tiles,
  writes lse and the per-token loss;
- grad_h, one program per token block: recomputes each logits tile, forms
  dlogits = (softmax - onehot)·scale and accumulates dlogits @ W into its own rows;
- grad_w, one program per vocabulary block: the same tiles, accumulates dlogitsᵀ @ h.
Recomputing the logits in backward (2 extra matmuls) is the price of O(tiles) memory.

On CPU the kernels run under TRITON_INTERPRET=1 (set before this module is imported).
The triton 3.9 interpreter returns garbage from bf16 `tl.dot`, so interpreted runs upcast
the tiles to fp32 before each dot; compiled runs keep bf16 tensor-core dots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # where triton keeps it; only used to tell interpreted kernels apart
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - other triton layouts
    InterpretedFunction = ()


@triton.jit
def _tanh(x):
    # tl has no tanh on every backend; this form saturates cleanly to ±1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, dim, softcap,
                 HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 (capped) logits for rows × cols; padded columns are -inf."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < dim
        h_tile = tl.load(h_ptr + rows[:, None] * dim + ds[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        w_tile = tl.load(w_ptr + cols[:, None] * dim + ds[None, :], mask=col_mask[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            h_tile = h_tile.to(tl.float32)
            w_tile = w_tile.to(tl.float32)
        acc = tl.dot(h_tile, tl.trans(w_tile), acc, input_precision=DOT_PRECISION)
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return tl.where(col_mask[None, :], acc, float("-inf"))


@triton.jit
def _grad_logits_tile(logits, lse, targets, valid, cols, col_mask, scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """dloss/d(raw logits) for one tile: (softmax - onehot)·scale on valid rows, through the cap."""
    probs = tl.exp(logits - lse[:, None])  # padded columns: exp(-inf) = 0
    onehot = (cols[None, :] == targets[:, None]).to(tl.float32)
    grad = (probs - onehot) * tl.where(valid, scale, 0.0)[:, None]
    if HAS_SOFTCAP:
        tanh_scaled = tl.where(col_mask[None, :], logits / softcap, 0.0)
        grad = grad * (1.0 - tanh_scaled * tanh_scaled)
    # Padded rows and columns must contribute nothing to either gradient.
    return tl.where(valid[:, None] & col_mask[None, :], grad, 0.0)


@triton.jit
def _forward_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, loss_ptr, n_tokens, vocab, dim, ignore_index, softcap,
                    HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_tokens
    targets = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
    running_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    target_logit = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < vocab
        logits = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, dim, softcap,
                              HAS_SOFTCAP, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], logits, 0.0), axis=1)
    lse = running_max + tl.log(running_sum)
    valid = row_mask & (targets != ignore_index)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(loss_ptr + rows, tl.where(valid, lse - target_logit, 0.0), mask=row_mask)


@triton.jit
def _grad_h_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, scale_ptr, grad_h_ptr, n_tokens, vocab, dim, ignore_index, softcap,
                   HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_tokens
    targets = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (targets != ignore_index)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(scale_ptr)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < vocab
        logits = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, dim, softcap,
                              HAS_SOFTCAP, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        grad = _grad_logits_tile(logits, lse, targets, valid, cols, col_mask, scale, softcap, HAS_SOFTCAP)
        grad = grad.to(w_ptr.dtype.element_ty)
        if UPCAST:
            grad = grad.to(tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_mask = ds < dim
            w_tile = tl.load(w_ptr + cols[:, None] * dim + ds[None, :],
                             mask=col_mask[:, None] & d_mask[None, :], other=0.0)
            if UPCAST:
                w_tile = w_tile.to(tl.float32)
            out_ptrs = grad_h_ptr + rows[:, None] * dim + ds[None, :]
            out_mask = row_mask[:, None] & d_mask[None, :]
            partial = tl.load(out_ptrs, mask=out_mask, other=0.0)
            tl.store(out_ptrs, tl.dot(grad, w_tile, partial, input_precision=DOT_PRECISION), mask=out_mask)


@triton.jit
def _grad_w_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, scale_ptr, grad_w_ptr, n_tokens, vocab, dim, ignore_index, softcap,
                   HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < vocab
    scale = tl.load(scale_ptr)
    for n0 in range(0, n_tokens, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        row_mask = rows < n_tokens
        targets = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
        valid = row_mask & (targets != ignore_index)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        logits = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, dim, softcap,
                              HAS_SOFTCAP, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        grad = _grad_logits_tile(logits, lse, targets, valid, cols, col_mask, scale, softcap, HAS_SOFTCAP)
        grad_t = tl.trans(grad.to(h_ptr.dtype.element_ty))
        if UPCAST:
            grad_t = grad_t.to(tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_mask = ds < dim
            h_tile = tl.load(h_ptr + rows[:, None] * dim + ds[None, :],
                             mask=row_mask[:, None] & d_mask[None, :], other=0.0)
            if UPCAST:
                h_tile = h_tile.to(tl.float32)
            out_ptrs = grad_w_ptr + cols[:, None] * dim + ds[None, :]
            out_mask = col_mask[:, None] & d_mask[None, :]
            partial = tl.load(out_ptrs, mask=out_mask, other=0.0)
            tl.store(out_ptrs, tl.dot(grad_t, h_tile, partial, input_precision=DOT_PRECISION), mask=out_mask)


def is_interpreted(kernel) -> bool:
    """True when `kernel` was defined under TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


def kernels_interpreted() -> bool:
    """True when this module was imported under TRITON_INTERPRET=1."""
    return is_interpreted(_forward_kernel)


def _check_device(*tensors: torch.Tensor) -> None:
    if not kernels_interpreted() and not all(t.is_cuda for t in tensors):
        raise ValueError(
            "linear_cross_entropy(impl='triton') needs CUDA tensors; on CPU use impl='chunked', "
            "or set TRITON_INTERPRET=1 before importing parcae_scaling.kernels.triton_linear_ce"
        )


class _TritonLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_2d, weight, targets_1d, ignore_index, softcap, blocks):
        n_tokens, dim = h_2d.shape
        vocab = weight.shape[0]
        block_n, block_v, block_d = blocks
        lse = torch.empty(n_tokens, dtype=torch.float32, device=h_2d.device)
        loss_per_token = torch.empty(n_tokens, dtype=torch.float32, device=h_2d.device)
        is_fp32 = h_2d.dtype == torch.float32
        meta = dict(HAS_SOFTCAP=softcap is not None, UPCAST=kernels_interpreted() or is_fp32,
                    # fp32: exact products like the reference (no TF32); bf16: triton's default.
                    DOT_PRECISION="ieee" if is_fp32 else "tf32",
                    BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d)
        _forward_kernel[(triton.cdiv(n_tokens, block_n),)](
            h_2d, weight, targets_1d, lse, loss_per_token, n_tokens, vocab, dim, ignore_index,
            softcap or 1.0, **meta)
        n_valid = (targets_1d != ignore_index).sum().to(torch.float32)
        ctx.save_for_backward(h_2d, weight, targets_1d, lse, n_valid)
        ctx.ignore_index, ctx.softcap, ctx.meta = ignore_index, softcap, meta
        return loss_per_token.sum() / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        h_2d, weight, targets_1d, lse, n_valid = ctx.saved_tensors
        n_tokens, dim = h_2d.shape
        vocab = weight.shape[0]
        meta = ctx.meta
        # Kept on device: no host sync. All-ignored batches have no valid rows, so scale is unused.
        scale = (grad_loss.to(torch.float32) / n_valid.clamp(min=1)).reshape(1)
        args = (targets_1d, lse, scale)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h_fp32 = torch.zeros(n_tokens, dim, dtype=torch.float32, device=h_2d.device)
            _grad_h_kernel[(triton.cdiv(n_tokens, meta["BLOCK_N"]),)](
                h_2d, weight, *args, grad_h_fp32, n_tokens, vocab, dim, ctx.ignore_index, ctx.softcap or 1.0, **meta)
            grad_h = grad_h_fp32.to(h_2d.dtype)
        if ctx.needs_input_grad[1]:
            grad_w_fp32 = torch.zeros(vocab, dim, dtype=torch.float32, device=weight.device)
            _grad_w_kernel[(triton.cdiv(vocab, meta["BLOCK_V"]),)](
                h_2d, weight, *args, grad_w_fp32, n_tokens, vocab, dim, ctx.ignore_index, ctx.softcap or 1.0, **meta)
            grad_w = grad_w_fp32.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


# Tile sizes for CUDA: tl.dot needs every side >= 16; 64×64 logits tiles with 64-wide
# slices of d keep a program's registers within an SM's budget.
DEFAULT_BLOCKS = (64, 64, 64)


def linear_cross_entropy_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    blocks: tuple[int, int, int] = DEFAULT_BLOCKS,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets` with Triton kernels.

    blocks: (BLOCK_N tokens, BLOCK_V vocabulary, BLOCK_D hidden), powers of two >= 16.
    """
    if any(b < 16 or b & (b - 1) for b in blocks):
        raise ValueError(f"blocks must be powers of two >= 16 (tl.dot), got {blocks}")
    _check_device(h, weight, targets)
    h_2d = h.reshape(-1, h.shape[-1]).contiguous()
    if weight.dtype != h_2d.dtype:
        raise ValueError(f"h ({h.dtype}) and weight ({weight.dtype}) must share a dtype for impl='triton'")
    return _TritonLinearCrossEntropy.apply(
        h_2d, weight.contiguous(), targets.reshape(-1).contiguous(), ignore_index, softcap, tuple(blocks)
    )
