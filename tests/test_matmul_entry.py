"""The one matmul entry point (comet_core/mpc/matmul.py, issue 28 item 3): every caller goes through it,
its rule picks each strategy as its docstring says, and every strategy gives torch's int64 product."""
from __future__ import annotations

import pytest
import torch

from comet_core.mpc import matmul
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.shape import Shape
from tests.test_imports import import_graph

VARIANTS = {"comet_core.mpc.ringmm", "comet_core.mpc.digitmm", "comet_core.mpc.blocked", "comet_core.mpc.blockkernel"}


def test_only_the_entry_point_imports_the_kernels():
    graph = import_graph()
    users = {m for m, targets in graph.items()
             if targets & VARIANTS and m not in VARIANTS and m != "comet_core.mpc.matmul"
             and not m.startswith("benchmarks.")}
    assert not users, f"import a kernel module directly instead of comet_core.mpc.matmul: {sorted(users)}"


def test_the_import_check_catches_a_direct_import():
    # positive control: a graph in which arith imports ringmm is reported
    graph = {"comet_core.mpc.arith": {"comet_core.mpc.ringmm"}, "comet_core.mpc.matmul": {"comet_core.mpc.ringmm"}}
    users = {m for m, t in graph.items() if t & VARIANTS and m != "comet_core.mpc.matmul"}
    assert users == {"comet_core.mpc.arith"}


def _w(*shape, g):
    return torch.randint(-2 ** 63, 2 ** 63 - 1, shape, generator=g, dtype=torch.int64)


@pytest.mark.parametrize("kernel", ["int64", "limbs"])
def test_rule_picks_the_documented_strategy_and_each_is_exact(kernel, monkeypatch):
    monkeypatch.setattr(matmul, "KERNEL", kernel)
    monkeypatch.setattr(matmul, "USE_FEWROW", "off")      # rule 5: test_rule_5_where_the_int64_gemm_loses
    g = torch.Generator().manual_seed(5)
    cases = [  # (a, b, strategy under KERNEL=limbs)
        (_w(1, 40, g=g), _w(40, 30, g=g), "one_row"),
        (_w(3, 40, g=g), _w(40, 30, g=g), "int64"),
        (_w(4, 40, g=g), _w(40, 30, g=g), "limbs"),
        (_w(2, 5, 40, g=g), _w(2, 40, 30, g=g), "limbs"),
        (_w(4, 0, g=g), _w(0, 30, g=g), "zeros"),
    ]
    for a, b, want in cases:
        got = matmul.product_strategy(a, b)
        if want != "zeros" and kernel == "int64":
            want = "int64"
        assert got == want, (tuple(a.shape), kernel, got)
        assert torch.equal(matmul.ring_matmul(a, b), torch.matmul(a, b))
    assert matmul.product_strategy(Shape((4, 40)), Shape((40, 30))) == "shape"
    assert tuple(matmul.ring_matmul(Shape((4, 40)), Shape((40, 30))).shape) == (4, 30)


def test_digit_strategy_when_enabled(monkeypatch):
    monkeypatch.setattr(matmul, "KERNEL", "limbs")
    monkeypatch.setattr(matmul, "USE_DIGITS", True)
    if not matmul.digitmm.available():
        pytest.skip("no exact int8 GEMM here")
    g = torch.Generator().manual_seed(6)
    a, b = _w(2, 200, g=g), _w(200, matmul.DIGIT_MIN_ELEMENTS // 200 + 1, g=g)
    assert matmul.product_strategy(a, b) == "digits" and matmul.takes_digits(a, b)
    assert torch.equal(matmul.ring_matmul(a, b), torch.matmul(a, b))


def test_beaver_strategy_blocked_for_a_decode_row_only(monkeypatch):
    monkeypatch.setattr(matmul.blocked, "BLOCK_ELEMENTS", 1000)
    m = MPC(EngineConfig(), seed=1, mode="exact")
    w = m.share(torch.randn(64, 100))
    assert matmul.beaver_strategy(m.share(torch.randn(1, 64)), w) == "blocked"
    assert matmul.beaver_strategy(m.share(torch.randn(matmul.FEW_ROWS + 1, 64)), w) == "whole"
    monkeypatch.setattr(matmul.blocked, "ENABLED", False)
    assert matmul.beaver_strategy(m.share(torch.randn(1, 64)), w) == "whole"


@pytest.mark.parametrize("sa,sb", [((4, 7), (7, 9)), ((64, 100), (100, 1029)), ((5, 33), (3, 33, 17)),
                                   ((2, 5, 33), (2, 33, 17)), ((6, 40000), (40000, 24))])
def test_fewrow_numba_kernel_equals_int64_matmul(sa, sb):
    """The numba int64 kernel (rule 5) over full-range words: torch's int64 product bit for bit, also at an
    inner dimension far past the float64 limbs' bound (ringmm.CHUNK = 455 per chunk): int64 has none."""
    from comet_core.mpc import fewrowmm

    if not fewrowmm.available():
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(sa[0] * 7 + sb[-1])
    a, b = _w(*sa, g=g), _w(*sb, g=g)
    assert torch.equal(fewrowmm.fewrow_matmul(a, b), torch.matmul(a, b))
    # the extreme words: every product and partial sum wraps
    lo = torch.full(sa, -2 ** 63, dtype=torch.int64)
    hi = torch.full(sb, 2 ** 63 - 1, dtype=torch.int64)
    assert torch.equal(fewrowmm.fewrow_matmul(lo, hi), torch.matmul(lo, hi))


@pytest.mark.parametrize("fewrow", ["on", "off"])
def test_rule_5_where_the_int64_gemm_loses(fewrow, monkeypatch):
    from comet_core.mpc import fewrowmm

    if fewrow == "on" and not fewrowmm.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(matmul, "KERNEL", "limbs")        # rule 3 fails, as on an AVX2-only host
    monkeypatch.setattr(matmul, "USE_FEWROW", fewrow)
    g = torch.Generator().manual_seed(8)
    for m, want in [(1, "one_row"), (3, "int64"), (4, "int64_numba"), (64, "int64_numba"), (65, "limbs")]:
        a, b = _w(m, 50, g=g), _w(50, 40, g=g)
        got = matmul.product_strategy(a, b)
        assert got == (want if fewrow == "on" or want != "int64_numba" else "limbs"), (m, got)
        assert torch.equal(matmul.ring_matmul(a, b), torch.matmul(a, b))
    a, b = _w(8, 50, g=g), _w(50, 40, g=g)
    assert matmul.product_strategy(a, b, have_limbs=True) == "limbs"   # a caller's split b is used
    monkeypatch.setattr(matmul, "KERNEL", "int64")        # rule 3 first (AVX-512 hosts)
    assert matmul.product_strategy(a, b) == "int64"


def test_fewrow_setting_refuses_unknown(monkeypatch):
    from comet_core.errors import CometError

    monkeypatch.setattr(matmul, "KERNEL", "limbs")
    monkeypatch.setattr(matmul, "USE_FEWROW", "fast")
    with pytest.raises(CometError, match="COMET_FEWROW_KERNEL"):
        matmul.fewrow_faster()
