"""Exact int8 x int8 -> int32 matrix products on any torch device.

|x1 @ x2| <= 128 * 128 * 65535 < 2**30 for every legal k, so the int32 result cannot
overflow; every kernel below returns the true integer product, bit for bit:

* ``"float"`` (default on CPUs without VNNI/AMX): float32 GEMMs (MKL on CPU) over chunks
  of k of at most 1024. int8 values are exact in float32, and so is every partial sum
  of a chunk, whatever order the GEMM adds in: each is an integer of magnitude at most
  128 * 128 * 1024 = 2**24. The chunk results are converted to int32 and summed there.
  This also holds in the reduced-precision float32 matmul modes (TF32, bf16 "bf32"):
  they round the *inputs* (to 10 and 7 mantissa bits, exact for |v| <= 128 = 2**7) and
  still accumulate in float32. On CPU the weight operand is converted block by block (a
  few hundred columns of x2 at a time) into one reused float32 buffer, so the float copy
  stays in cache and no large temporary is allocated per call; for few rows, x1 is
  split into digits small enough for one exact GEMM over the whole k instead of one
  GEMM per chunk (:func:`digit_split`).
* ``"int_mm"`` (default on CPUs with AVX512-VNNI or AMX, where oneDNN has real int8
  instructions, once a small adversarial product has come out exact):
  ``torch._int_mm`` on 2-D operands, batch dims of x1 folded into m. With k == 1 and
  n >= 2, ``torch._int_mm`` on CPU (torch 2.13.0, AMX/AVX512-VNNI Xeon) returns
  uninitialised memory in some calls and the true product in others; that shape is an
  outer product and runs as one in int32 instead (:func:`_cpu_int_mm`). For a weight
  passed as the transposed view of a contiguous ``(n, k)`` matrix (how LinearQuant
  passes it) of at least 2**22 elements and 2 to min(256, n / 16) rows, the product may run
  *swapped*, as ``_int_mm(weight, x1.t())`` transposed back: on some CPUs oneDNN is up to
  2.5x faster that way (docs/performance.md). ``auto`` (:func:`set_int_mm_layout`)
  measures both once, on the first such call (about 20 ms), and swaps only where the
  swapped product is exact and clearly faster; every layout gives the same bits.
* CUDA: ``torch._int_mm`` where its shape rules hold, else float64 (integers below
  2**53 are exact whatever the summation order).
* anything else (meta, MPS, XPU, ...): the same chunked float32 products, written
  without scratch buffers.

Under ``torch.compile`` the CPU float kernel runs as the opaque custom op
``compat::blocked_float32_int8_mm`` (inductor would otherwise compile the blocked
conversion into slower code); on torch < 2.4, without ``torch.library.custom_op``, the
buffer-free chunked form is traced instead.

On CPU the choice can be forced with the environment variable ``COMPAT_CPU_INT_MATMUL``
(``auto``, ``float`` or ``int_mm``, read at import) or :func:`set_cpu_kernel`. The
measurements behind the default are in docs/performance.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from compat.ops.checks import compiling

FLOAT32_EXACT_CHUNK = 1024  # 128 * 128 * 1024 == 2**24, the float32 exact-integer limit
CPU_KERNELS = ("auto", "float", "int_mm")
_ENV = "COMPAT_CPU_INT_MATMUL"
# Elements of the float32 block of x2 converted at a time (8 MiB): large enough for MKL
# to run at full speed on it, small enough to stay in the last-level cache.
_BLOCK_ELEMENTS = 2**21
_MIN_BLOCK_COLS, _MAX_BLOCK_COLS = 64, 1024
# Up to this many rows (m times the number of digits), one GEMM per block on the digits
# of x1 beats one GEMM per chunk of k (measured: docs/performance.md).
_DIGIT_ROWS = 64

_Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

INT_MM_LAYOUTS = ("auto", "direct", "swapped")
# Rows of x1 for which ``auto`` may swap: below, one row is a matrix-vector product
# either way; above (and above n / 16 rows), the swapped product loses its edge and
# transposing the (n, m) result back costs more (measured: docs/performance.md).
_SWAP_MIN_ROWS, _SWAP_MAX_ROWS, _SWAP_ROWS_PER_COLUMN = 2, 256, 1 / 16
# ... and weights of at least this many elements (4 MiB of int8): a weight that stays in
# the cache gains nothing from the swap, or loses (measured: docs/performance.md)
_SWAP_MIN_WEIGHT = 2**22
# ``auto`` swaps only when the swapped product took at most this share of the direct one
_SWAP_GAIN = 0.9


def _cpu_has_fast_int8() -> bool:
    """Whether oneDNN has int8 dot-product instructions here (AVX512-VNNI or AMX)."""
    probes = ("_is_vnni_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and bool(probe()):
                return True
        except Exception:  # a private torch API: never let a probe break the import
            continue
    return False


def _int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` returns the true product here, on operands that break
    the usual shortcuts: full-range rows and columns (127 against -128 saturates a
    16-bit sum of two u8 x s8 products, the ``vpmaddubsw`` path of CPUs without VNNI)
    and random ones, with the weight as the transposed view LinearQuant passes.

    ``auto`` trusts the CPU flags only after this check: a CPU that reports VNNI or AMX
    but runs a saturating (or otherwise inexact) path keeps the float32 kernel.
    """
    try:
        x1, w = _adversarial_operands()
        got = torch._int_mm(x1, w.t())
        return got.dtype == torch.int32 and torch.equal(got, _chunked_float32(x1, w.t()))
    except (AttributeError, NotImplementedError, RuntimeError):  # missing or failing op
        return False


def _adversarial_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """x1 (32, 1024) and a weight (128, 1024), int8, with full-range rows and columns."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(-128, 128, (32, 1024), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (128, 1024), dtype=torch.int8, generator=g)
    x1[0], x1[1], x1[2, ::2] = 127, -128, 127
    w[0], w[1], w[2, 1::2] = -128, 127, -128
    return x1, w


def _resolve(choice: str) -> str:
    if choice not in CPU_KERNELS:
        raise ValueError(
            f"CPU int8 matmul kernel {choice!r} is unknown; allowed: {', '.join(CPU_KERNELS)}"
        )
    if choice == "auto":
        return "int_mm" if _cpu_has_fast_int8() and _int_mm_is_exact() else "float"
    return choice


def _from_env() -> str:
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in CPU_KERNELS:
        raise ValueError(
            f"environment variable {_ENV}={value!r} is not a CPU int8 matmul kernel; "
            f"allowed: {', '.join(CPU_KERNELS)}"
        )
    return _resolve(value)


def cpu_kernel() -> str:
    """The kernel used for CPU tensors: ``"float"`` or ``"int_mm"``."""
    return _cpu_kernel


def set_cpu_kernel(choice: str) -> str:
    """Select the CPU kernel (``"auto"``, ``"float"`` or ``"int_mm"``); returns the
    previous resolved choice. Every kernel is exact: this changes speed only."""
    global _cpu_kernel
    previous = _cpu_kernel
    _cpu_kernel = _resolve(choice)
    return previous


def int_mm_layout() -> str:
    """How the ``int_mm`` kernel lays out its product: ``"auto"``, ``"direct"`` or
    ``"swapped"`` (see :func:`set_int_mm_layout`)."""
    return _int_mm_layout


def set_int_mm_layout(choice: str) -> str:
    """Select how the CPU ``int_mm`` kernel runs ``x1 @ weight.t()``; returns the previous
    choice. ``"direct"``: ``_int_mm(x1, weight.t())``; ``"swapped"``:
    ``_int_mm(weight, x1.t())`` transposed back, for every x1 with two rows or more;
    ``"auto"`` (default): swapped for 2 to min(256, n / 16) rows and weights of 2**22 or more
    elements where a one-time measurement found it exact and faster, else direct. Every
    layout is exact: this changes speed only."""
    global _int_mm_layout
    if choice not in INT_MM_LAYOUTS:
        raise ValueError(
            f"int_mm layout {choice!r} is unknown; allowed: {', '.join(INT_MM_LAYOUTS)}"
        )
    previous = _int_mm_layout
    _int_mm_layout = choice
    return previous


def swap_measured() -> bool | None:
    """``auto``'s verdict (swap or not) once measured on this machine, else None."""
    return _swap_verdict


def int_matmul(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``x1 @ x2`` for int8 operands with broadcast batch dims, as exact int32."""
    device = x1.device.type
    kernel: _Kernel
    if device == "cpu":
        if _cpu_kernel == "int_mm":
            kernel = _cpu_int_mm
        elif compiling():
            # inductor compiles the buffer-reusing kernel worse than eager runs it: hand it
            # over as one opaque custom op where torch has them (>= 2.4)
            kernel = _blocked_float32_op if _blocked_float32_op is not None else _chunked_float32
        else:
            kernel = _blocked_float32
    elif device == "cuda":
        if x2.dim() == 2 and _cuda_int_mm_ok(x1, x2):
            return _folded(torch._int_mm, x1, x2)
        return torch.matmul(x1.to(torch.float64), x2.to(torch.float64)).to(torch.int32)
    else:
        return _chunked_float32(x1, x2)
    if x2.dim() == 2:
        return kernel(x1, x2) if x1.dim() == 2 else _folded(kernel, x1, x2)
    if all(x2.shape[d] == 1 or x2.stride(d) == 0 for d in range(x2.dim() - 2)):
        # one matrix shared by every batch element ((1, k, n), or expanded): one product
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        x2_2d = x2[(0,) * (x2.dim() - 2)]
        return _folded(kernel, x1.expand(*batch, *x1.shape[-2:]), x2_2d)
    return _batched(kernel, x1, x2)


def _folded(kernel: _Kernel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """A 2-D x2: fold x1's batch dims into m and run one 2-D product."""
    k, n = x2.shape
    lead = x1.shape[:-1]
    out = kernel(x1.reshape(-1, k), x2)
    return out.reshape(*lead, n)


def _batched(kernel: _Kernel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """A batched x2: one 2-D product per broadcast batch element."""
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
    b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
    out = torch.stack([kernel(a[i], b[i]) for i in range(a.shape[0])])
    return out.reshape(*batch, x1.shape[-2], x2.shape[-1])


def _cpu_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a, b)`` on CPU, except for k == 1, where it is not reliable (see the
    module docstring): there the product is the outer product, exact in int32
    (|a * b| <= 2**14)."""
    if a.shape[1] == 1:
        return a.to(torch.int32) * b.to(torch.int32)
    if _swaps(a, b):
        return _swapped_int_mm(a, b)
    return torch._int_mm(a, b)


def _swapped_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as ``(b.t() @ a.t()).t()``, contiguous like ``torch._int_mm``'s result."""
    return torch._int_mm(b.t(), a.t()).t().contiguous()


def _swaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if _int_mm_layout == "direct":
        return False
    if _int_mm_layout == "swapped":
        return a.shape[0] >= 2
    return (
        not compiling()  # nothing is timed while tracing (nor guarded on m)
        and _SWAP_MIN_ROWS <= a.shape[0] <= min(_SWAP_MAX_ROWS, b.shape[1] * _SWAP_ROWS_PER_COLUMN)
        and b.numel() >= _SWAP_MIN_WEIGHT
        and b.stride(0) == 1
        and b.stride(1) == b.shape[0]  # the .t() of a contiguous (n, k) weight
        and _swap_is_faster()
    )


def _swap_is_faster() -> bool:
    global _swap_verdict
    if _swap_verdict is None:
        _swap_verdict = _measure_swap()
    return _swap_verdict


def _best_ms(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _measure_swap() -> bool:
    """Whether the swapped product is exact here (on :func:`_int_mm_is_exact`'s
    adversarial operands) and takes at most ``_SWAP_GAIN`` of the direct one's time, for
    16 rows against a (2048, 2048) weight view (about 20 ms in all, once per process)."""
    try:
        x1, w = _adversarial_operands()
        if not torch.equal(_swapped_int_mm(x1, w.t()), _chunked_float32(x1, w.t())):
            return False
        g = torch.Generator().manual_seed(1)
        side = 2048  # 2**22 elements: the smallest weight auto may swap for
        x = torch.randint(-128, 128, (16, side), dtype=torch.int8, generator=g)
        weight = torch.randint(-128, 128, (side, side), dtype=torch.int8, generator=g)
        _swapped_int_mm(x, weight.t())  # warm-up of both paths
        torch._int_mm(x, weight.t())
        direct = _best_ms(lambda: torch._int_mm(x, weight.t()))
        swapped = _best_ms(lambda: _swapped_int_mm(x, weight.t()))
        return swapped <= _SWAP_GAIN * direct
    except (AttributeError, NotImplementedError, RuntimeError):
        return False


def _cuda_int_mm_ok(x1: torch.Tensor, x2: torch.Tensor) -> bool:
    m = x1.numel() // x1.shape[-1]
    k, n = x2.shape
    return m > 16 and k % 8 == 0 and n % 8 == 0


def block_cols(k: int, n: int) -> int:
    """Columns of x2 converted to float32 at a time by :func:`_blocked_float32`."""
    cols = max(_MIN_BLOCK_COLS, min(_MAX_BLOCK_COLS, _BLOCK_ELEMENTS // max(k, 1)))
    return min(n, cols)


def digit_split(k: int) -> tuple[int, int]:
    """``(bits, count)``: x1 is split into ``count`` digits of ``bits`` bits (the last one
    signed, the others in [0, 2**bits)) so that ONE float32 GEMM over the whole k is
    exact: every digit d has |d| * 128 * k <= 2**24. ``count`` is 1 for k <= 1024 and 0
    where no split is possible (k > 2**17)."""
    limit = 2**24 // (128 * k)  # the largest digit magnitude allowed
    if limit >= 128:
        return 8, 1
    if limit < 1:
        return 0, 0
    bits = (limit + 1).bit_length() - 1  # 2**bits - 1 <= limit
    count = 2
    while 2 ** max(0, 7 - bits * (count - 1)) > limit:
        count += 1
    return bits, count


def _blocked_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a (m, k) @ b (k, n)`` for int8 2-D operands via float32 GEMMs.

    b is converted to float32 ``cols`` columns at a time into one scratch buffer laid out
    like b (a transposed view such as ``weight.t()`` keeps its k-contiguous layout), so
    the conversion streams through memory. Each block is then multiplied either

    * for few rows (m * digits <= ``_DIGIT_ROWS``): once, by the digits of a (see
      :func:`digit_split`), stacked as extra rows; the digit products are recombined in
      int32 at the end (Horner, every intermediate is a shifted x1 times x2, < 2**30);
    * otherwise: chunk of k by chunk of k (<= 1024, exact), summed into the int32 output.

    Fewer, larger GEMMs for small m also means fewer parallel regions per call, which
    matters on a machine whose cores are shared with other processes.
    """
    m, k = a.shape
    n = b.shape[1]
    cols = block_cols(k, n)
    if k <= FLOAT32_EXACT_CHUNK and cols == n:  # one block, one chunk: fewest ops
        return torch.mm(a.to(torch.float32), b.to(torch.float32)).to(torch.int32)
    k_major = b.stride(0) == 1 and b.stride(1) != 1  # a .t() view of a contiguous (n, k)
    if k_major:
        buf = torch.empty((cols, k), dtype=torch.float32, device=a.device).t()
    else:
        buf = torch.empty((k, cols), dtype=torch.float32, device=a.device)
    bits, count = digit_split(k)
    if 0 < count and m * count <= _DIGIT_ROWS:
        return _by_digits(a, b, buf, bits, count)
    af = a.to(torch.float32)
    out = torch.empty((m, n), dtype=torch.int32, device=a.device)
    chunks = [(s, min(s + FLOAT32_EXACT_CHUNK, k)) for s in range(0, k, FLOAT32_EXACT_CHUNK)]
    for start in range(0, n, cols):
        stop = min(start + cols, n)
        block = buf[:, : stop - start]
        block.copy_(b[:, start:stop])
        dest = out[:, start:stop]
        for i, (lo, hi) in enumerate(chunks):
            part = torch.mm(af[:, lo:hi], block[lo:hi])
            if i == 0:
                dest.copy_(part)  # exact integers below 2**24: the conversion is exact
            else:
                dest.add_(part.to(torch.int32))
    return out


def _by_digits(
    a: torch.Tensor, b: torch.Tensor, buf: torch.Tensor, bits: int, count: int
) -> torch.Tensor:
    m = a.shape[0]
    n = b.shape[1]
    cols = buf.shape[1]
    ai = a.to(torch.int32)
    digits = [(ai >> (bits * d)) & (2**bits - 1) for d in range(count - 1)]
    digits.append(ai >> (bits * (count - 1)))  # signed top digit
    rows = torch.cat(digits).to(torch.float32)  # (count * m, k)
    # products of every digit row, column-major so that each block's GEMM writes a
    # contiguous slice of it
    prod = torch.empty((n, count * m), dtype=torch.float32, device=a.device).t()
    for start in range(0, n, cols):
        stop = min(start + cols, n)
        block = buf[:, : stop - start]
        block.copy_(b[:, start:stop])
        torch.mm(rows, block, out=prod[:, start:stop])
    acc = prod[(count - 1) * m :].to(torch.int32, memory_format=torch.contiguous_format)
    for d in range(count - 2, -1, -1):
        acc.mul_(2**bits).add_(prod[d * m : (d + 1) * m].to(torch.int32))
    return acc


def _register_blocked_float32_op() -> _Kernel | None:
    """:func:`_blocked_float32` as the custom op ``compat::blocked_float32_int8_mm``
    (with a fake implementation for tracing), or None where torch has no custom_op."""
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return None

    def blocked_float32_int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _blocked_float32(a, b)

    def fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)

    try:
        op = custom_op(
            "compat::blocked_float32_int8_mm",
            blocked_float32_int8_mm,
            mutates_args=(),
            device_types="cpu",
            schema="(Tensor a, Tensor b) -> Tensor",
        )
    except RuntimeError:  # registered already (this module was reloaded): reuse it
        existing: _Kernel = torch.ops.compat.blocked_float32_int8_mm
        return existing
    op.register_fake(fake)
    kernel: _Kernel = op
    return kernel


def _chunked_float32(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Exact ``x1 @ x2`` (broadcast batch dims) as a sum of float32 products over chunks
    of k of at most 1024; no scratch buffers, so it suits any device and tracing."""
    k = x1.shape[-1]
    total: torch.Tensor | None = None
    for start in range(0, k, FLOAT32_EXACT_CHUNK):
        stop = min(start + FLOAT32_EXACT_CHUNK, k)
        part = torch.matmul(
            x1[..., start:stop].to(torch.float32), x2[..., start:stop, :].to(torch.float32)
        ).to(torch.int32)
        total = part if total is None else total + part
    assert total is not None
    return total


_blocked_float32_op = _register_blocked_float32_op()
_int_mm_layout = "auto"
_swap_verdict: bool | None = None
# resolved last: "auto" runs _int_mm_is_exact, which needs _chunked_float32
_cpu_kernel = _from_env()
