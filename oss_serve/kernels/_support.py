"""When to run a Triton kernel, and the dtype its dots use."""
from __future__ import annotations

import functools
import importlib.util

import torch

from oss_serve import env


def interpreting() -> bool:
    return env.triton_interpret()


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: torch.Tensor) -> bool:
    """Triton for CUDA tensors, or for CPU tensors under the interpreter (the tests); torch otherwise."""
    if not triton_installed():
        return False
    return tensor.is_cuda or (interpreting() and tensor.device.type == "cpu")


def dot_dtype_name(dtype: torch.dtype) -> str:
    """The dtype dot operands are cast to inside a kernel.

    The interpreter computes on bf16 bit patterns (wrong results, no error), so it always gets fp32;
    on a GPU, 16-bit activations use the tensor cores in their own dtype with fp32 accumulation.
    """
    if interpreting() or dtype == torch.float32:
        return "fp32"
    return "fp16" if dtype == torch.float16 else "bf16"


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def dot_input_precision(dot_dtype_name: str) -> str:
    """fp32 dots are exact ("ieee") unless OSS_SERVE_KERNEL_TF32=1 trades accuracy for tensor-core speed;
    16-bit dots ignore the setting."""
    if dot_dtype_name == "fp32" and not interpreting() and env.kernel_tf32():
        return "tf32"
    return "ieee" if dot_dtype_name == "fp32" else "tf32"
