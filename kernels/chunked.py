"""Chunked linear + cross-entropy in plain PyTorch: never holds more than one
[chunk_tokens, vocab] block of logits.

The gradients for `h` and `weight` are computed during the forward pass, chunk by
chunk, while each block of logits is still at hand (the trick of Liger-Kernel's
fused linear-CE). That costs the same three matmuls as the plain path (logits,
dlogits @ W, dlogitsᵀ @ h) and needs no recomputation in backward; backward only
scales the stored gradients by the incoming scalar.

Peak extra memory ≈ a few × chunk_tokens × vocab × 4 bytes + an fp32 [vocab, d]
gradient accumulator, instead of ~3 × n_tokens × vocab × 4 bytes for the plain path.
"""

from __future__ import annotations

import torch

# A [chunk, vocab] fp32 block of this many bytes keeps the matmuls large enough to run
# at full speed on CPU while the peak stays far below the plain path's.
DEFAULT_CHUNK_BYTES = 32 * 2**20


def chunk_tokens_for_budget(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one fp32 [chunk, vocab] block fits in `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab_size))


def _softcapped(logits_fp32: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (capped logits, tanh(logits / softcap) or None); the tanh feeds the backward."""
    if softcap is None:
        return logits_fp32, None
    tanh_scaled = torch.tanh(logits_fp32 / softcap)
    return tanh_scaled * softcap, tanh_scaled


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_2d, weight, targets_1d, ignore_index, softcap, chunk_tokens, want_grads):
        n_tokens = h_2d.shape[0]
        valid = targets_1d != ignore_index
        n_valid = valid.sum()
        # Gradient of the mean: 1 / n_valid per valid token (clamped: all-ignored gives loss nan, grads 0).
        grad_scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        want_h, want_w = want_grads
        grad_h = torch.empty_like(h_2d) if want_h else None
        grad_w_fp32 = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=h_2d.device)

        for start in range(0, n_tokens, chunk_tokens):
            stop = min(start + chunk_tokens, n_tokens)
            h_chunk, valid_chunk = h_2d[start:stop], valid[start:stop]
            safe_targets = torch.where(valid_chunk, targets_1d[start:stop], 0).unsqueeze(1)
            # Same rounding as the reference: matmul in the input dtype, then fp32.
            logits, tanh_scaled = _softcapped((h_chunk @ weight.t()).float(), softcap)
            target_logit = logits.gather(1, safe_targets).squeeze(1)
            # Softmax in place, in four passes over the block and no [chunk, vocab] temporary
            # (torch.logsumexp allocates two): the block stays in cache for the matmuls below.
            row_max = logits.amax(dim=1, keepdim=True)
            exp_shifted = logits.sub_(row_max).exp_()
            row_sum = exp_shifted.sum(dim=1, keepdim=True)
            lse = (row_max + row_sum.log()).squeeze(1)
            loss_sum += torch.where(valid_chunk, lse - target_logit, 0.0).sum()
            if not (want_h or want_w):
                continue
            # dloss/dlogits = (softmax - onehot) / n_valid on valid rows, built in place.
            valid_fp32 = valid_chunk.to(torch.float32).unsqueeze(1)
            grad_logits = exp_shifted.mul_(valid_fp32 * grad_scale / row_sum)
            grad_logits.scatter_add_(1, safe_targets, -valid_fp32 * grad_scale)
            if tanh_scaled is not None:  # d(c·tanh(z/c))/dz = 1 - tanh²
                grad_logits.mul_(tanh_scaled.mul_(tanh_scaled).neg_().add_(1.0))
                del tanh_scaled
            grad_logits = grad_logits.to(h_2d.dtype)
            if want_h:
                torch.matmul(grad_logits, weight.to(h_2d.dtype), out=grad_h[start:stop])
            if want_w:
                if h_2d.dtype == torch.float32:
                    grad_w_fp32.addmm_(grad_logits.t(), h_chunk)
                else:
                    grad_w_fp32 += (grad_logits.t() @ h_chunk).float()
            del grad_logits

        ctx.grad_h, ctx.grad_w_fp32, ctx.weight_dtype = grad_h, grad_w_fp32, weight.dtype
        return loss_sum / n_valid.to(torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.grad_h is None and ctx.grad_w_fp32 is None and any(ctx.needs_input_grad[:2]):
            raise RuntimeError(
                "linear_cross_entropy(impl='chunked') computes its gradients in the forward pass: "
                "run backward once per forward, with grad enabled during the forward"
            )
        # Scaled in place (no second [vocab, d] buffer at the peak): the buffers are ours and
        # are dropped here, which is also why a second backward must raise above.
        grad_h = grad_w = None
        if ctx.grad_h is not None:
            grad_h = ctx.grad_h.mul_(grad_loss.to(ctx.grad_h.dtype))
        if ctx.grad_w_fp32 is not None:
            grad_w = ctx.grad_w_fp32.mul_(grad_loss).to(ctx.weight_dtype)
        ctx.grad_h = ctx.grad_w_fp32 = None
        return grad_h, grad_w, None, None, None, None, None


def linear_cross_entropy_chunked(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets`, chunked over tokens.

    h: [..., d]; weight: [vocab, d]; targets: [...] int64. Differentiable in h and weight.
    """
    h_2d = h.reshape(-1, h.shape[-1])
    if chunk_tokens is None:
        chunk_tokens = chunk_tokens_for_budget(weight.shape[0])
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}; pass None for the default")
    grad_on = torch.is_grad_enabled()
    want_grads = (grad_on and h.requires_grad, grad_on and weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(
        h_2d, weight, targets.reshape(-1), ignore_index, softcap, chunk_tokens, want_grads
    )
