"""Triton kernels for the elementwise part of the Parcae injection, out = Ā ⊙ h + Δ ⊙ u,
with u = e @ bᵀ left to a torch matmul that the model runs once per forward (autograd then
gives de and db from du, summed over the loop steps).

Δ = softplus(dt_bias) and Ā = exp(-Δ·exp(log_a)) are recomputed per tile from the two
[d] vectors instead of being materialised and broadcast. The backward kernel writes
dh = Ā ⊙ g, du = Δ ⊙ g and per-row-block partial sums of g ⊙ h and g ⊙ u; the [d]-sized
chain rule to log_a and dt_bias is finished in torch (negligible work, deterministic
reduction order).

On CPU the kernels run under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from parcae_scaling.kernels.triton_linear_ce import is_interpreted


@triton.jit
def _delta_and_a_bar(log_a_ptr, dt_bias_ptr, cols, col_mask):
    dt_bias = tl.load(dt_bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    log_a = tl.load(log_a_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    # softplus, stable for both signs (F.softplus switches to identity above 20; same value in fp32)
    delta = tl.maximum(dt_bias, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(dt_bias)))
    a_bar = tl.exp(-delta * tl.exp(log_a))
    return delta, a_bar


@triton.jit
def _tile(log_a_ptr, dt_bias_ptr, row_block, n_rows, dim, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's BLOCK_R x BLOCK_D tile of the (n_rows, dim) tensors, and its channels' delta
    and a_bar."""
    rows = row_block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < dim
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    offsets = rows[:, None] * dim + cols[None, :]
    delta, a_bar = _delta_and_a_bar(log_a_ptr, dt_bias_ptr, cols, col_mask)
    return cols, col_mask, offsets, mask, delta, a_bar


@triton.jit
def _forward_kernel(h_ptr, u_ptr, log_a_ptr, dt_bias_ptr, out_ptr, n_rows, dim,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    cols, col_mask, offsets, mask, delta, a_bar = _tile(log_a_ptr, dt_bias_ptr, tl.program_id(0), n_rows, dim,
                                                        BLOCK_R, BLOCK_D)
    h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    out = a_bar[None, :] * h + delta[None, :] * u
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_out_ptr, h_ptr, u_ptr, log_a_ptr, dt_bias_ptr, grad_h_ptr, grad_u_ptr,
                     partial_gh_ptr, partial_gu_ptr, n_rows, dim,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row_block = tl.program_id(0)
    cols, col_mask, offsets, mask, delta, a_bar = _tile(log_a_ptr, dt_bias_ptr, row_block, n_rows, dim,
                                                        BLOCK_R, BLOCK_D)
    grad_out = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_h_ptr + offsets, (a_bar[None, :] * grad_out).to(grad_h_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_u_ptr + offsets, (delta[None, :] * grad_out).to(grad_u_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_gh_ptr + row_block * dim + cols, tl.sum(grad_out * h, axis=0), mask=col_mask)
    tl.store(partial_gu_ptr + row_block * dim + cols, tl.sum(grad_out * u, axis=0), mask=col_mask)


def kernels_interpreted() -> bool:
    """True when this module was imported under TRITON_INTERPRET=1."""
    return is_interpreted(_forward_kernel)


# 32 rows × 128 channels: coalesced loads along d, and few enough row blocks that the
# partial sums stay small.
DEFAULT_BLOCKS = (32, 128)


class _InjectionElementwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, u, log_a, dt_bias, blocks):
        dim = h.shape[-1]
        h_2d, u_2d = h.reshape(-1, dim).contiguous(), u.reshape(-1, dim).contiguous()
        n_rows = h_2d.shape[0]
        block_r, block_d = blocks
        # Same dtype as the reference expression (fp32 params promote a bf16 h).
        out_dtype = torch.promote_types(torch.promote_types(h.dtype, u.dtype),
                                        torch.promote_types(log_a.dtype, dt_bias.dtype))
        out = torch.empty(n_rows, dim, dtype=out_dtype, device=h.device)
        grid = (triton.cdiv(n_rows, block_r), triton.cdiv(dim, block_d))
        _forward_kernel[grid](h_2d, u_2d, log_a.contiguous(), dt_bias.contiguous(), out, n_rows, dim,
                              BLOCK_R=block_r, BLOCK_D=block_d)
        ctx.save_for_backward(h_2d, u_2d, log_a, dt_bias)
        ctx.blocks, ctx.shape = blocks, h.shape
        return out.reshape(h.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h_2d, u_2d, log_a, dt_bias = ctx.saved_tensors
        n_rows, dim = h_2d.shape
        block_r, block_d = ctx.blocks
        grid = (triton.cdiv(n_rows, block_r), triton.cdiv(dim, block_d))
        grad_h = torch.empty_like(h_2d)
        grad_u = torch.empty_like(u_2d)
        partial_gh = torch.empty(grid[0], dim, dtype=torch.float32, device=h_2d.device)
        partial_gu = torch.empty_like(partial_gh)
        _backward_kernel[grid](grad_out.reshape(-1, dim).contiguous(), h_2d, u_2d, log_a.contiguous(),
                               dt_bias.contiguous(), grad_h, grad_u, partial_gh, partial_gu, n_rows, dim,
                               BLOCK_R=block_r, BLOCK_D=block_d)
        # Chain rule over the [d] parameters: Ā = exp(-Δ·exp(log_a)), Δ = softplus(dt_bias).
        dt_bias_fp32, exp_log_a = dt_bias.float(), log_a.float().exp()
        delta = F.softplus(dt_bias_fp32)
        a_bar = torch.exp(-delta * exp_log_a)
        grad_a_bar = partial_gh.sum(0)
        grad_log_a = grad_a_bar * a_bar * (-delta * exp_log_a)
        grad_delta = partial_gu.sum(0) + grad_a_bar * a_bar * (-exp_log_a)
        grad_dt_bias = grad_delta * torch.sigmoid(dt_bias_fp32)
        return (grad_h.reshape(ctx.shape), grad_u.reshape(ctx.shape), grad_log_a.to(log_a.dtype),
                grad_dt_bias.to(dt_bias.dtype), None)


def diagonal_injection_triton(
    h: torch.Tensor,
    u: torch.Tensor,
    log_a: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    blocks: tuple[int, int] = DEFAULT_BLOCKS,
) -> torch.Tensor:
    """Ā ⊙ h + Δ ⊙ u (u = e @ bᵀ, computed once per forward by the caller) in Triton;
    blocks = (BLOCK_R rows, BLOCK_D channels), powers of two."""
    if any(size < 1 or size & (size - 1) for size in blocks):
        raise ValueError(f"blocks must be powers of two, got {blocks}")
    if not kernels_interpreted() and not h.is_cuda:
        raise ValueError(
            "diagonal_injection(impl='triton') needs CUDA tensors; on CPU use impl='reference', "
            "or set TRITON_INTERPRET=1 before importing parcae_scaling.kernels"
        )
    return _InjectionElementwise.apply(h, u, log_a, dt_bias, tuple(blocks))
