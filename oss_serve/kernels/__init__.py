"""Triton kernels for the GPU path, each with a plain-torch reference that is also the CPU fallback.

One module per kernel; import from the module (this package imports nothing, and no module imports
triton's kernels unless triton is installed):
- `paged_attention`: sink / sliding-window GQA attention over a paged KV cache (decode and extend).
- `moe_mxfp4`: grouped MXFP4 expert GEMMs with the clamped SwiGLU fused into the first one.
- `rms_norm`: fp32 RMSNorm, optionally fused with the residual add.
- `rope_store_kv`: RoPE on q and k fused with the paged KV-cache write.

Each entry point runs Triton for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) and the torch
reference otherwise; see `_support`.
"""
