"""Instruction counts of the MXFP4 MoE kernels' inner loops for an H100/H200 (sm_90), without a GPU.

Triton compiles for a named target on any machine and ships `cuobjdump`; counting the SASS of a loop
body per weight value shows decode changes before any device time is spent (the decode is ALU-bound
at decode batch sizes). Pointer and row-length arguments are marked 16-divisible, as Triton specializes
them at run time.

    python benchmarks/kernel_sass.py                      # every kernel, byte and word decode
    python benchmarks/kernel_sass.py --kernel down --block-m 64
    python benchmarks/kernel_sass.py --occupancy          # grouped tiles: registers, shared memory, warps per SM

Past the decode sizes the grouped kernels are latency-bound rather than ALU-bound, so `--occupancy`
reports what bounds the warps an SM keeps in flight (registers per thread and shared memory per
program, from the cubin) for the tile shapes `gpu_kernels.py --only moe` sweeps.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from oss_serve.kernels import moe_mxfp4, moe_mxfp4_decode
from oss_serve.kernels.moe_mxfp4 import GroupedTiles

SM90 = GPUTarget("cuda", 90, 32)
# The default tiles at T=64 and T=256 (first of each), then smaller ones that keep more warps in flight.
OCCUPANCY_TILES = tuple(GroupedTiles(block_m=m, block_n=n, block_k=k, num_warps=w, num_stages=s)
                        for m in (16, 32) for n, k, w, s in ((64, 128, 4, 3), (32, 128, 4, 3), (64, 64, 4, 3),
                                                             (32, 64, 4, 3), (32, 64, 4, 4), (128, 64, 8, 3)))
_DIVISIBLE = ("hidden", "inter", "row_bytes", "w_row_bytes", "stride_bias_expert", "stride_x_tok")


def _signature(kernel, types: dict[str, str]) -> dict[str, str]:
    """Every argument of `kernel`: the given type, else constexpr (upper case) or i32."""
    return {name: types.get(name, "constexpr" if name.isupper() else "i32") for name in kernel.arg_names}


# sm_90 per SM: 64K registers, 228 KiB shared memory (1 KiB of it reserved per program), 64 warps.
SM90_REGISTERS, SM90_SHARED_BYTES, SM90_MAX_WARPS = 65536, 228 * 1024, 64


def _compile(kernel, types: dict[str, str], constants: dict[str, object], num_warps: int, num_stages: int = 3):
    signature = _signature(kernel, types)
    names = list(signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items()
             if t.startswith("*") or n in _DIVISIBLE}
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                          target=SM90, options={"num_warps": num_warps, "num_stages": num_stages})


def _cuobjdump(compiled, option: str) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        return subprocess.run([cuobjdump, option, cubin.name], capture_output=True, text=True, check=True).stdout


def compile_sass(kernel, types: dict[str, str], constants: dict[str, object], num_warps: int) -> str:
    return _cuobjdump(_compile(kernel, types, constants, num_warps), "--dump-sass")


def resident_warps(kernel, types: dict[str, str], constants: dict[str, object], num_warps: int,
                   num_stages: int) -> tuple[int, int, int]:
    """(registers per thread, shared bytes per program, warps an SM holds at once)."""
    compiled = _compile(kernel, types, constants, num_warps, num_stages)
    registers = int(re.search(r"REG:(\d+)", _cuobjdump(compiled, "--dump-resource-usage")).group(1))
    shared = compiled.metadata.shared
    # Registers are handed out per warp in 256-register units.
    per_warp = -(-registers * 32 // 256) * 256
    programs = min(SM90_REGISTERS // (per_warp * num_warps), SM90_SHARED_BYTES // (shared + 1024),
                   SM90_MAX_WARPS // num_warps)
    return registers, shared, programs * num_warps


def occupancy_report(grouped_types: dict[str, str]) -> None:
    """The grouped kernels' resources at decode-batch tiles (T=64: 16-row tiles, T=256: 32; k=4 of 32 experts)."""
    kernels = (("gate_up", moe_mxfp4.mxfp4_gate_up_swiglu_kernel, {"TOP_K": 4}),
               ("down", moe_mxfp4.mxfp4_down_kernel, {}))
    for tiles in OCCUPANCY_TILES:
        cells = []
        for name, kernel, extra in kernels:
            for word in (False, True):
                constants = {**extra, "BLOCK_M": tiles.block_m, "BLOCK_N": tiles.block_n, "BLOCK_K": tiles.block_k,
                             "DOT_DTYPE": tl.bfloat16, "INPUT_PRECISION": "tf32", "WORD_DECODE": word, "USE_ASM": word}
                types = {**grouped_types, "blocks_ptr": "*i32" if word else "*u8"}
                registers, shared, warps = resident_warps(kernel, types, constants, tiles.num_warps, tiles.num_stages)
                cells.append(f"{name} {'word' if word else 'byte'} {registers} regs {shared // 1024} KiB {warps} warps")
        print(f"m{tiles.block_m} n{tiles.block_n} k{tiles.block_k} w{tiles.num_warps} s{tiles.num_stages}: "
              + " | ".join(cells), flush=True)


def loop_counts(sass: str) -> list[tuple[int, collections.Counter]]:
    """(instructions, opcode counts) of each loop body, found as the range of a backward branch."""
    instructions = []
    for line in sass.splitlines():
        match = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*([^;]*);", line)
        if match:
            instructions.append((int(match.group(1), 16), match.group(2).split(".")[0], match.group(3)))
    loops = []
    for address, opcode, operands in instructions:
        target = re.search(r"0x([0-9a-f]+)", operands) if opcode == "BRA" else None
        if target and int(target.group(1), 16) < address:
            body = [op for a, op, _ in instructions if int(target.group(1), 16) <= a <= address]
            loops.append((len(body), collections.Counter(body)))
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=["gate_up_gemv", "down_gemv", "gate_up", "down"], nargs="*")
    parser.add_argument("--block-m", type=int, default=32, help="rows per grouped tile")
    parser.add_argument("--occupancy", action="store_true", help="grouped tiles' registers, shared memory, warps/SM")
    args = parser.parse_args()
    gemv_types = {"x_ptr": "*bf16", "act_ptr": "*fp32", "ids_ptr": "*i64", "weights_ptr": "*fp32",
                  "scales_ptr": "*u8", "bias_ptr": "*bf16", "out_ptr": "*bf16",
                  "swiglu_limit": "fp32", "swiglu_alpha": "fp32"}
    grouped_types = {"x_ptr": "*bf16", "act_ptr": "*bf16", "scales_ptr": "*u8", "bias_ptr": "*bf16",
                     "weights_ptr": "*fp32", "out_ptr": "*fp32", "tile_expert_ptr": "*i32",
                     "row_slot_ptr": "*i32", "swiglu_limit": "fp32", "swiglu_alpha": "fp32"}
    if args.occupancy:
        occupancy_report(grouped_types)
        return
    # (kernel, argument types, constants, warps, weight values a program decodes per loop pass)
    cases = {
        "gate_up_gemv": (moe_mxfp4_decode.mxfp4_gate_up_swiglu_gemv_kernel, gemv_types,
                         {"TOP_K": 4, "BLOCK_N": 8, "BLOCK_K": 512}, 4, 2 * 8 * 512),
        "down_gemv": (moe_mxfp4_decode.mxfp4_down_gemv_kernel, gemv_types,
                      {"TOP_K": 4, "BLOCK_N": 8, "BLOCK_K": 512}, 4, 4 * 8 * 512),
        "gate_up": (moe_mxfp4.mxfp4_gate_up_swiglu_kernel, grouped_types,
                    {"TOP_K": 4, "BLOCK_M": args.block_m, "BLOCK_N": 64, "BLOCK_K": 128, "DOT_DTYPE": tl.bfloat16,
                     "INPUT_PRECISION": "tf32"}, 4, 2 * 64 * 128),
        "down": (moe_mxfp4.mxfp4_down_kernel, grouped_types,
                 {"BLOCK_M": args.block_m, "BLOCK_N": 64, "BLOCK_K": 128, "DOT_DTYPE": tl.bfloat16,
                  "INPUT_PRECISION": "tf32"}, 4, 64 * 128),
    }
    for name in args.kernel or list(cases):
        kernel, types, constants, warps, values = cases[name]
        for word in (False, True):
            extra = {"WORD_DECODE": word, "USE_ASM": word}
            blocks = {"blocks_ptr": "*i32" if word else "*u8"}
            sass = compile_sass(kernel, {**types, **blocks}, {**constants, **extra}, warps)
            for size, opcodes in loop_counts(sass):
                per_value = size * warps * 32 / values
                top = ", ".join(f"{op} {n}" for op, n in opcodes.most_common(6))
                print(f"{name:12s} {'word' if word else 'byte'}: loop of {size} instructions, "
                      f"{per_value:.1f} per weight value per thread-lane; {top}")


if __name__ == "__main__":
    main()
