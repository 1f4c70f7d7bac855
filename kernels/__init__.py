"""Fused ops for looped LMs: Triton on CUDA, exact PyTorch paths everywhere else.

`linear_cross_entropy` and `diagonal_injection` pick an implementation per call
(see `dispatch.py`); `impl=` forces one by name:
- linear-CE: "triton" (CUDA default), "chunked" (CPU default), "reference";
- injection: "triton" (CUDA default), "reference" (CPU default).
To run the Triton kernels on CPU, set TRITON_INTERPRET=1 before `import triton` and
keep it set (see tests/kernels/conftest.py for why), then pass impl="triton".
"""

from parcae_scaling.kernels.dispatch import (
    INJECTION_IMPLS,
    LINEAR_CE_IMPLS,
    diagonal_injection,
    linear_cross_entropy,
    triton_available,
)

__all__ = [
    "INJECTION_IMPLS",
    "LINEAR_CE_IMPLS",
    "diagonal_injection",
    "linear_cross_entropy",
    "triton_available",
]
