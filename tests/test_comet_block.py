"""system.block: one prediction per block of neurons, the permutation moving whole blocks (issue 25, 1c)."""

import pandas as pd
import pytest
import torch

from comet_core.errors import CometError
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.predictor.checkpoint import PredictorSet, model_signature, save_predictors
from comet_core.predictor.model import LowRankPredictor
from comet_core.systems import comet as C
from tests.test_comet import _measure, assert_same_tokens, cfg_for, run_comet


def make_block_predictors(model_cfg, path, block: int, rank: int = 8, density: float = 0.4):
    """Random predictors with F / block outputs (thresholds at the (1 - density) quantile), settings block."""
    g = torch.Generator().manual_seed(0)
    d, F, H, n = int(model_cfg.hidden_size), int(model_cfg.ffn_dim), int(model_cfg.num_heads), int(model_cfg.num_layers)
    ffn, head = [], []
    for units, out in ((F // block, ffn), (H, head)):
        for _ in range(n):
            p = LowRankPredictor(d, rank if out is ffn else 4, units)
            with torch.no_grad():
                for t in p.parameters():
                    t.copy_(torch.randn(t.shape, generator=g) * 0.5)
                p.threshold.fill_(float(torch.quantile(p(torch.randn(256, d, generator=g)).flatten(), 1 - density)))
            out.append(p)
    save_predictors(PredictorSet(model_signature(model_cfg), ffn, head, [0.0] * n, [0.0] * n, {"block": block}), path)
    return path


@pytest.fixture(scope="module")
def block_predictors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blockpred")
    return {name: make_block_predictors(cfg_for(name, tmp).model, tmp / f"{name}.pt", 4)
            for name in ("tiny-opt", "tiny-llama")}


@pytest.mark.parametrize("model", ["tiny-opt", "tiny-llama"])
def test_block_comet_equals_masked_plaintext_and_cost_replays_its_ledger(model, block_predictors, tmp_path):
    """Exact mode with blocks of 4: tokens == the plaintext model with the same masks, the masks are whole
    blocks, and cost mode replaying the revealed counts books the same ledger row for row."""
    args = ("gen_tokens=3", "prompt='Hello there'", "system.block=4", "system.heads=false")
    s, ex = run_comet(model, tmp_path / "exact", block_predictors[model], *args)
    assert_same_tokens(s)
    sp = pd.read_csv(ex / "sparsity.csv", dtype={"revealed": str})
    assert (sp.active % 4 == 0).all() and ((sp.active > 0) & (sp.active < sp.total)).any()
    assert (sp.max_flip_margin.fillna(0) <= 0.05).all() and sp[sp.step == 0].jaccard.mean() > 0.95
    _, co = run_comet(model, tmp_path / "cost", block_predictors[model], *args, "mode=cost",
                      f"system.mask_trace={ex / 'sparsity.csv'}")
    a, b = pd.read_csv(ex / "ledger.csv.gz"), pd.read_csv(co / "ledger.csv.gz")
    assert {"ffn.predict", "ffn.reveal", "ffn.somm", "ffn.simm", "ffn.shuffle"} <= set(a.op)
    assert len(a) == len(b) and a.equals(b)


def test_block_mismatch_and_bad_block_are_refused(block_predictors, tmp_path):
    with pytest.raises(CometError, match="blocks of 4 neurons, system.block=1"):
        run_comet("tiny-opt", tmp_path / "a", block_predictors["tiny-opt"], "gen_tokens=1", "system.heads=false")
    with pytest.raises(CometError, match="must divide the 256 FFN neurons"):
        run_comet("tiny-opt", tmp_path / "b", block_predictors["tiny-opt"], "gen_tokens=1", "system.block=3")
    with pytest.raises(CometError, match="positive integer"):
        C.CometSystem({"block": 0})
    with pytest.raises(CometError, match="indexing=shuffle"):
        C.CometSystem({"block": 4, "indexing": "oblivious", "heads": False})


@pytest.mark.parametrize("family", ["opt", "llama"])
@pytest.mark.parametrize("block", [1, 4, 16])
def test_block_step_and_setup_cost_formulas(family, block):
    """The ledger of one layer's block permutation and FFN steps == setup_cost / ffn_step_cost with block."""
    from comet_core.mpc.shape import Shape

    m = MPC(EngineConfig(), seed=0, mode="cost")
    d, F, r = 16, 64, 8
    f = lambda *s: m.share(Shape(s, torch.float32))  # noqa: E731
    lw = dict(w_gate=f(d, F), w_up=f(d, F), w_down=f(F, d)) if family == "llama" else \
        dict(w1=f(d, F), b1=f(F), w2=f(F, d), b2=f(d))
    pred = dict(w1=f(d, r), b1=f(r), w2=f(r, F // block), b2=f(F // block))
    sysm = C.CometSystem({"block": block})
    sysm.predictors, sysm.thresholds = [pred], [0.0]
    meta = {"act": "silu" if family == "llama" else "relu"}
    for T, k in ((1, 16), (4, 32), (1, 0)):
        sysm.counts = lambda layer, step, n, k=k: k
        req, c0 = _measure(m, sysm._permute_layer, m, lw, pred)
        assert c0 == C.setup_cost(m, d, F, r, family == "llama", block)
        sysm.state = C.CometState(request=[req])
        _, c = _measure(m, sysm.ffn, f(T, d), lw, meta, 0)
        assert c == C.ffn_step_cost(m, T, d, F, r, k, family == "llama", block=block), (T, k)
    if block > 1:   # fewer predictor outputs and threshold tests than neurons: cheaper than block 1
        assert C.ffn_step_cost(m, 1, d, F, r, 16, False, block=block).online_bytes < C.ffn_step_cost(m, 1, d, F, r, 16, False).online_bytes


def test_block_permutation_moves_whole_blocks(tmp_path):
    """Simulated exact engine: after the block permutation each block of W_in's columns is one real block."""
    m = MPC(EngineConfig(), seed=2)
    d, F, r, b = 4, 16, 2, 4
    w1 = torch.arange(d * F, dtype=torch.float64).reshape(d, F) / 64
    lw = dict(w1=m.share(w1), b1=m.share(torch.zeros(F, dtype=torch.float64)), w2=m.share(w1.t().contiguous()),
              b2=m.share(torch.zeros(d, dtype=torch.float64)))
    pred = {k: m.share(torch.zeros(s, dtype=torch.float64)) for k, s in
            (("w1", (d, r)), ("b1", (r,)), ("w2", (r, F // b)), ("b2", (F // b,)))}
    sysm = C.CometSystem({"block": b})
    req = sysm._permute_layer(m, lw, pred)
    got = m.reveal(req.w_in)                                           # (d, F) permuted
    pi = req.perm.composed().cpu()                                     # permuted block j holds real block pi[j]
    want = w1.reshape(d, F // b, b)[:, pi].reshape(d, F)
    assert torch.allclose(got, want, atol=2 ** -12)
    assert torch.allclose(m.reveal(req.w_out), want.t(), atol=2 ** -12)
