"""Triton kernels. Imported only when triton is importable; they run on CUDA tensors, or on
CPU tensors under TRITON_INTERPRET=1 (how CI tests them against the reference)."""
