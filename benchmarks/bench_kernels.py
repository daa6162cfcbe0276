"""Issue 6: the exact int8 x int8 -> int32 product, candidate kernels on this CPU.

Every candidate is checked bit for bit against compat's kernel before it is timed
(x (m, k) int8 times weight.t(), weight (n, k) int8, as LinearQuant calls the op):

* ``compat``: ``compat.ops.intmm.int_matmul`` (the kernel the CPU reference uses);
* ``digits`` / ``k-chunks``: its float32 kernel forced into one mode. Both convert the
  weight block by block into a reused buffer; ``digits`` multiplies each block once by
  x1 split into digits small enough for one exact float32 GEMM over the whole k,
  ``k-chunks`` once per chunk of k <= 1024 (compat picks digits up to 64 digit rows);
* ``_int_mm``: ``torch._int_mm`` with the transposed weight view, and ``_int_mm contig``
  with a contiguous (k, n) copy of it made once;
* ``f32 whole``: the same chunked float32 GEMMs after converting the whole weight per
  call (one 4-bytes-per-element temporary);
* ``f32 cached``: the same from a float32 copy of the weight made once: what a
  module-level weight cache would hold (4 bytes per weight element, 4x the int8 weight);
* ``f64``: one float64 GEMM (exact for every legal k) after converting per call;
* ``int8pack``: ``aten._weight_int8pack_mm`` (float32 activations times int8 weights,
  float32 accumulation) over chunks of k <= 1024 (exact), for m <= ``--int8pack-max-m``.

Run: ``python benchmarks/bench_kernels.py [--k 4096] [--n 4096] [--m 1 16 128 512]
[--rounds 5] [--threads N] [--skip-int-mm-above M]``. Times in ms, medians of
interleaved rounds (see ``bench_quant_matmul.py``).
"""

from __future__ import annotations

import torch
from bench_quant_matmul import Fn, interleaved_ms, machine_line, row, shape_parser, start

from compat.ops import intmm

CHUNK = intmm.FLOAT32_EXACT_CHUNK


def chunked_f32(xf: torch.Tensor, wf_t: torch.Tensor) -> torch.Tensor:
    """Sum over chunks of k of exact float32 products, in int32."""
    k = xf.shape[1]
    total = torch.zeros((xf.shape[0], wf_t.shape[1]), dtype=torch.int32)
    for lo in range(0, k, CHUNK):
        hi = min(lo + CHUNK, k)
        total += torch.mm(xf[:, lo:hi], wf_t[lo:hi]).to(torch.int32)
    return total


def forced(x: torch.Tensor, w_t: torch.Tensor, digit_rows: int) -> torch.Tensor:
    """compat's float32 kernel with its digit-mode threshold set to ``digit_rows``."""
    saved = intmm._DIGIT_ROWS
    intmm._DIGIT_ROWS = digit_rows
    try:
        return intmm._blocked_float32(x, w_t)
    finally:
        intmm._DIGIT_ROWS = saved


def int8pack(xf: torch.Tensor, w_chunks: list[torch.Tensor], ones: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((xf.shape[0], ones.shape[0]), dtype=torch.int32)
    for i, w_c in enumerate(w_chunks):
        part = torch.ops.aten._weight_int8pack_mm(xf[:, i * CHUNK : (i + 1) * CHUNK], w_c, ones)
        total += part.to(torch.int32)
    return total


def main() -> None:
    parser = shape_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-int-mm-above", type=int, default=10**9, metavar="M")
    parser.add_argument("--int8pack-max-m", type=int, default=16, metavar="M")
    args, gen, w = start(parser)
    k, n = args.k, args.n
    w_t = w.t()
    w_t_contig = w_t.contiguous()
    w_f_t = w.float().t()  # the cached float32 copy (n * k * 4 bytes)
    w_chunks = [w[:, lo : lo + CHUNK].contiguous() for lo in range(0, k, CHUNK)]
    ones = torch.ones(n)
    names = ["compat", "digits", "k-chunks", "_int_mm", "_int_mm contig", "f32 whole"]
    names += ["f32 cached"]
    names += ["f64", "int8pack"]
    print(machine_line())
    print(f"k = {k}, n = {n}; times in ms (median of {args.rounds} interleaved rounds)\n")
    print(row(["m", *names]))
    print(row(["---"] * (len(names) + 1)))
    for m in args.m:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        fns: dict[str, Fn] = {
            "compat": lambda x=x: intmm.int_matmul(x, w_t),
            "digits": lambda x=x: forced(x, w_t, 10**9),
            "k-chunks": lambda x=x: forced(x, w_t, 0),
            "f32 whole": lambda x=x: chunked_f32(x.float(), w_t.float()),
            "f32 cached": lambda x=x: chunked_f32(x.float(), w_f_t),
            "f64": lambda x=x: torch.mm(x.double(), w_t.double()).to(torch.int32),
        }
        if m <= args.skip_int_mm_above:
            fns["_int_mm"] = lambda x=x: torch._int_mm(x, w_t)
            fns["_int_mm contig"] = lambda x=x: torch._int_mm(x, w_t_contig)
        if m <= args.int8pack_max_m:
            fns["int8pack"] = lambda x=x: int8pack(x.float(), w_chunks, ones)
        expected = intmm.int_matmul(x, w_t)
        for name, fn in fns.items():
            got = fn()
            assert isinstance(got, torch.Tensor) and torch.equal(got, expected), name
        t = interleaved_ms(fns, rounds=args.rounds)
        print(row([str(m), *(f"{t[c]:.3f}" if c in t else "-" for c in names)]), flush=True)


if __name__ == "__main__":
    main()
