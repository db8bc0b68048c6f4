"""The engine on a CUDA device gives the CPU's ledger and outputs (skipped where no GPU is present)."""

import pytest
import torch

from comet_core.mpc import arith, compare, nonlinear as nl
from comet_core.mpc.engine import MPC

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _run(device):
    m = MPC(seed=3, device=device)
    g = torch.Generator().manual_seed(0)
    x = m.share(torch.randn(8, 32, generator=g))
    w = m.share(torch.randn(32, 16, generator=g), owner="model_owner")
    y = nl.layernorm(nl.softmax(compare.relu(arith.matmul(x, w))), None, None)
    return m.ledger.rows, m.reveal(y).cpu()


def test_cuda_matches_cpu():
    rows_cpu, out_cpu = _run("cpu")
    rows_gpu, out_gpu = _run("cuda")
    assert rows_cpu == rows_gpu
    assert torch.equal(out_cpu, out_gpu)  # same seed, same PRG stream, exact integer arithmetic
