"""The CPU drivers' work partitions: every output is written by exactly one work item.

Two items that overlap write identical values, so no test of the values can see them; this
checks the items themselves, as the drivers compute them (csrc/cpu/work_items.h), listed by the
private op _cpu_work_items for any algorithm, shape and thread count."""

import itertools

import pytest
import torch
from conftest import cpu_levels

ALGORITHMS = ["direct", "implicit_gemm", "winograd_2x2", "winograd_4x4"]
# _cpu_algorithm's names for the bfloat16-pair kernels, whose items are their twins'.
PAIR_TWINS = {"direct_bf16": "direct", "implicit_gemm_bf16": "implicit_gemm"}

# (N, C_in, C_out, H, W): batches of one to many, channel counts around the 16-channel blocks,
# odd sizes, tall and wide images (the direct and implicit-GEMM paths split those into blocks
# of rows).
SHAPES = [
    (1, 3, 18, 32, 32),
    (1, 16, 16, 5, 7),
    (2, 17, 33, 9, 9),
    (3, 100, 20, 2, 3),
    (1, 256, 512, 4, 4),
    (1, 256, 20, 200, 4),
    (1, 3, 64, 700, 700),
    (5, 64, 130, 15, 17),
    (64, 64, 64, 32, 32),
    (7, 512, 48, 8, 8),
]
THREADS = [1, 2, 3, 8, 64]


def _coverage(items, n, windows_h, c_out):
    """How many items write each (image, window row, output channel)."""
    assert len(items) > 0
    rows = max(windows_h, int(items[:, 3].max()))
    channels = max(c_out, int(items[:, 5].max()))
    count = torch.zeros(n, rows, channels, dtype=torch.int32)
    for n0, n1, py0, py1, co0, co1 in items.tolist():
        assert 0 <= n0 < n1 <= n and 0 <= py0 < py1 and 0 <= co0 < co1, (n0, n1, py0, py1)
        count[n0:n1, py0:py1, co0:co1] += 1
    return count


@pytest.mark.parametrize("level", cpu_levels())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_output_is_written_by_exactly_one_work_item(algorithm, level):
    # The direct path's items are sized by its staged rows' bytes: float32, float64, and
    # bfloat16 (channel pairs at avx512_bf16).
    dtypes = [torch.float32, torch.float64, torch.bfloat16] if algorithm == "direct" else [None]
    for (n, c_in, c_out, h, w), threads, pool, dtype in itertools.product(
        SHAPES, THREADS, [True, False], dtypes
    ):
        x = torch.empty(n, c_in, h, w, dtype=dtype)
        weight = torch.empty(c_out, c_in, 3, 3, dtype=dtype)
        items = torch.ops.simplecnn._cpu_work_items(x, weight, pool, algorithm, threads)
        windows_h = h // 2 if pool else (h + 1) // 2
        count = _coverage(items, n, windows_h, c_out)
        case = f"{algorithm} {dtype} N={n} {c_in}->{c_out} {h}x{w} pool={pool} threads={threads}"
        # Each output once; rows and channels past the output (the last tile, the last
        # channel block's padding) at most once.
        assert bool((count[:, :windows_h, :c_out] == 1).all()), case
        assert int(count.max()) == 1, case


@pytest.mark.parametrize("level", cpu_levels())
@pytest.mark.parametrize("name", PAIR_TWINS)
def test_pair_kernels_list_their_twins_items(name, level):
    # Every name _cpu_algorithm gives is accepted; the pair kernels' drivers split the work as
    # their float32 twins do.
    x = torch.empty(2, 64, 8, 8, dtype=torch.bfloat16)
    weight = torch.empty(64, 64, 3, 3, dtype=torch.bfloat16)
    for pool, threads in itertools.product([True, False], THREADS):
        items = torch.ops.simplecnn._cpu_work_items(x, weight, pool, name, threads)
        twin = torch.ops.simplecnn._cpu_work_items(x, weight, pool, PAIR_TWINS[name], threads)
        assert torch.equal(items, twin)
