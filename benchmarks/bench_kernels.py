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
  float32 accumulation) over chunks of k <= 1024 (exact), for m <= ``--int8pack-max-m``;
* ``onednn``: oneDNN's int8 GEMM (``onednn::qlinear_pointwise``, uint8 activations times
  int8 weights, plain int8 tensors, no qint8 types, no warnings) made exact: on CPUs
  without VNNI its ``vpmaddubsw`` saturates the int16 sum of two uint8 x int8 products,
  and its output is float32. So x + 128 is split into two 4-bit digits (hi, lo in
  [0, 15]; pair sums <= 2 * 15 * 128, no saturation; |sums| <= 15 * 128 * k <= 2^24 for
  k <= 8738, exact in float32), stacked with a row of ones (the column sums that undo the
  +128), multiplied once and recombined in int32. ``onednn`` uses a weight prepacked once
  (a cache: a second copy of the weight), ``onednn+pack`` prepacks on every call;
* ``embedding``: fbgemm's embedding-bag kernel (``quantized::embedding_bag_byte_rowwise_
  offsets``, plain uint8 tensor): the rows of weight.t() + 128 with a per-row float scale
  1 and bias -128, summed with x's values as per-sample weights, in bags of 256 rows
  (every partial sum < 2^24, exact), the bags summed in int32. Weight repacked once (a
  cache), one pass over the weight per row of x; for m <= ``--embedding-max-m``.

``onednn`` and ``embedding`` are not used by compat (see docs/performance.md: they need
a second copy of every weight, and they do not win enough to pay for it).

Run: ``python benchmarks/bench_kernels.py [--k 4096] [--n 4096] [--m 1 16 128 512]
[--rounds 5] [--threads N] [--skip-int-mm-above M]``. Times in ms, medians of
interleaved rounds (see ``bench_quant_matmul.py``).
"""

from __future__ import annotations

from collections.abc import Callable

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


ONEDNN_MAX_K = 8738  # 15 * 128 * k <= 2**24
EMBEDDING_BAG = 256  # rows per bag: |partial sums| <= 256 * 128 * (255 + 128) < 2**24


class OneDnnDigits:
    """Exact int8 product through oneDNN's u8 x s8 GEMM (see the module docstring)."""

    def __init__(self, w: torch.Tensor, *, prepack_each_call: bool) -> None:
        self.w = w
        n = w.shape[0]
        self.packed = None if prepack_each_call else torch.ops.onednn.qlinear_prepack(w, None)
        self.ones = torch.ones(n)
        self.zero_points = torch.zeros(n, dtype=torch.int64)

    def gemm(self, rows: torch.Tensor) -> torch.Tensor:
        """oneDNN's ``rows @ w.t()`` for uint8 rows, float32 out, scales 1, no zero points."""
        packed = self.packed
        if packed is None:
            packed = torch.ops.onednn.qlinear_prepack(self.w, None)
        y: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            rows, 1.0, 0, packed, self.ones, self.zero_points, None, 1.0, 0,
            torch.float32, "none", [], "",
        )  # fmt: skip
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, k = x.shape
        u = x.view(torch.uint8) ^ 128  # x + 128 in [0, 255]
        rows = torch.empty((2 * m + 1, k), dtype=torch.uint8)
        torch.bitwise_right_shift(u, 4, out=rows[:m])
        torch.bitwise_and(u, 15, out=rows[m : 2 * m])
        rows[2 * m].fill_(1)
        y = self.gemm(rows).to(torch.int32)
        out = y[:m].mul_(16)
        out += y[m : 2 * m]
        out -= y[2 * m] * 128
        return out


class EmbeddingRows:
    """Exact int8 product through fbgemm's embedding-bag kernel (see the docstring)."""

    def __init__(self, w: torch.Tensor) -> None:
        k = w.shape[1]
        scale_bias = torch.tensor([1.0, -128.0]).view(torch.uint8).expand(k, 8)
        rows = w.t().contiguous().view(torch.uint8) ^ 128
        self.packed = torch.cat([rows, scale_bias], 1).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, k = x.shape
        indices = torch.arange(k).repeat(m)
        offsets = torch.arange(0, m * k, EMBEDDING_BAG)
        bags: torch.Tensor = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            self.packed, indices, offsets, False, 0, False, x.reshape(-1).float(), None, False
        )
        return bags.to(torch.int32).view(m, -1, bags.shape[-1]).sum(1, dtype=torch.int32)


Product = Callable[[torch.Tensor], torch.Tensor]


def onednn_full_range_error(w: torch.Tensor, x: torch.Tensor) -> int:
    """Largest error of oneDNN's u8 x s8 GEMM on x + 128 in [0, 255] without digits."""
    rows = torch.cat([x.view(torch.uint8) ^ 128, torch.ones_like(x[:1], dtype=torch.uint8)])
    y = OneDnnDigits(w, prepack_each_call=False).gemm(rows)
    got = y[:-1].double() - 128 * y[-1].double()
    exact = x.double() @ w.double().t()
    return int((got - exact).abs().max().item())


def _available(make: Callable[[], Product], probe: torch.Tensor) -> Product | None:
    """The candidate, or None where this torch build lacks its op."""
    try:
        fn = make()
        fn(probe)
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    return fn


def main() -> None:
    parser = shape_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-int-mm-above", type=int, default=10**9, metavar="M")
    parser.add_argument("--int8pack-max-m", type=int, default=16, metavar="M")
    parser.add_argument("--embedding-max-m", type=int, default=4, metavar="M")
    args, gen, w = start(parser)
    k, n = args.k, args.n
    w_t = w.t()
    w_t_contig = w_t.contiguous()
    w_f_t = w.float().t()  # the cached float32 copy (n * k * 4 bytes)
    w_chunks = [w[:, lo : lo + CHUNK].contiguous() for lo in range(0, k, CHUNK)]
    ones = torch.ones(n)
    names = ["compat", "digits", "k-chunks", "_int_mm", "_int_mm contig", "f32 whole"]
    names += ["f32 cached"]
    names += ["f64", "int8pack", "onednn", "onednn+pack", "embedding"]
    probe = torch.zeros((1, k), dtype=torch.int8)
    extra: dict[str, Product | None] = {"embedding": _available(lambda: EmbeddingRows(w), probe)}
    if k <= ONEDNN_MAX_K:
        for name, each in (("onednn", False), ("onednn+pack", True)):
            extra[name] = _available(
                lambda each=each: OneDnnDigits(w, prepack_each_call=each), probe
            )
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
        for name, product in extra.items():
            if product is not None and (name != "embedding" or m <= args.embedding_max_m):
                fns[name] = lambda x=x, product=product: product(x)
        expected = intmm.int_matmul(x, w_t)
        for name, fn in fns.items():
            got = fn()
            assert isinstance(got, torch.Tensor) and torch.equal(got, expected), name
        t = interleaved_ms(fns, rounds=args.rounds)
        print(row([str(m), *(f"{t[c]:.3f}" if c in t else "-" for c in names)]), flush=True)
    if extra.get("onednn") is not None:
        x = torch.randint(-128, 128, (16, k), dtype=torch.int8, generator=gen)
        error = onednn_full_range_error(w, x)
        print(f"\nonednn on full-range x + 128 (no digits), m = 16: max |error| = {error}")


if __name__ == "__main__":
    main()
