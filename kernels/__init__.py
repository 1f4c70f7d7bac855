"""Fused ops for looped LMs: Triton on CUDA, exact PyTorch paths everywhere else."""

from parcae_scaling.kernels.reference import (
    diagonal_injection_reference as diagonal_injection,
    linear_cross_entropy_reference as linear_cross_entropy,
)

__all__ = ["diagonal_injection", "linear_cross_entropy"]
