"""The Comet system (part 1, FFN sparsity): private == the plaintext model with the same masks, every
cost formula pinned to the ledger, cost == exact ledger for the same masks, the ledger depends on the
counts only, and the revealed masks hide the real neuron positions (with a positive control).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from comet_core.comm.ledger import Cost
from comet_core.errors import CometError
from comet_core.mpc import arith
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.shuffle import Permutation, permute, permute_cost
from comet_core.predictor.checkpoint import PredictorSet, model_signature, save_predictors
from comet_core.predictor.model import LowRankPredictor
from comet_core.sparse import masks as M
from comet_core.systems import comet as C
import experiments.run  # noqa: F401  (registers the config schemas before compose)

CONF = Path(__file__).resolve().parent.parent / "conf"
LOGIT_TOL = 2e-2   # as tests/test_secure_model.py: fixed point vs float64 on tiny random models


def cfg_for(model: str, tmp: Path, *over: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"model={model}", "system=comet", f"output_dir={tmp}", "seed=1",
                                             *over])


def assert_same_tokens(s: dict) -> None:
    """Private tokens equal the reference's, except after a near tie of the reference's top two logits
    (random tiny models have some): the logits agree within LOGIT_TOL up to the first difference."""
    assert s["max_logit_err"] < LOGIT_TOL, s["max_logit_err"]
    for step, (p, q) in enumerate(zip(s["private"], s["plaintext"])):
        if p != q:
            assert s["reference_top2_gaps"][step] < 2 * LOGIT_TOL, \
                f"step {step}: private {p} != reference {q} with a clear argmax"
            break


def make_predictors(model_cfg, path: Path, rank: int = 8, density: float = 0.4, block: int = 1) -> Path:
    """Random low-rank predictors for a random tiny model, thresholds at the (1 - density) quantile of
    their scores on random inputs (no training: the protocol only needs their shapes and a threshold);
    `block` > 1: one FFN output per block of neurons (system.block)."""
    g = torch.Generator().manual_seed(0)
    d, F, H = int(model_cfg.hidden_size), int(model_cfg.ffn_dim), int(model_cfg.num_heads)
    n = int(model_cfg.num_layers)
    ffn, head = [], []
    for _ in range(n):
        p = LowRankPredictor(d, rank, F // block)
        with torch.no_grad():
            for t in p.parameters():
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            p.threshold.fill_(float(torch.quantile(p(torch.randn(256, d, generator=g)).flatten(), 1 - density)))
        ffn.append(p)
        q = LowRankPredictor(d, 4, H)
        with torch.no_grad():
            for t in q.parameters():
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            q.threshold.fill_(float(torch.quantile(q(torch.randn(256, d, generator=g)).flatten(), 0.5)))
        head.append(q)
    save_predictors(PredictorSet(model_signature(model_cfg), ffn, head, [0.0] * n, [0.0] * n,
                                 settings={"block": block} if block > 1 else {}), path)
    return path


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    out = {}
    for name in ("tiny-opt", "tiny-llama"):
        cfg = cfg_for(name, tmp)
        out[name] = make_predictors(cfg.model, tmp / f"{name}.pt")
    return out


def run_comet(model: str, tmp: Path, ckpt: Path, *over: str):
    from experiments.run import run

    cfg = cfg_for(model, tmp, f"system.predictor_checkpoint={ckpt}", *over)
    return run(cfg, tmp), tmp


VARIANTS = [  # (model, overrides): FFN + heads (merged refill) is the default system
    ("tiny-opt", ()),
    ("tiny-llama", ()),                                                   # grouped-query attention
    ("tiny-opt", ("system.kv_refill=naive",)),
    ("tiny-llama", ("system.kv_refill=naive", "system.kv_prefetch=always")),
    ("tiny-opt", ("system.kv_prefetch=always",)),
    ("tiny-llama", ("engine.reuse_weight_masks=true",)),                  # slices cut from masks opened once
    ("tiny-opt", ("system.heads=false",)),                                # part 1 only
    ("tiny-opt", ("system.heads=false", "system.indexing=oblivious")),
    ("tiny-llama", ("system.heads=false", "system.indexing=oblivious")),
    ("tiny-opt", ("engine.comparison=fss",)),                             # threshold test, ReLU, max: DCF keys
    ("tiny-llama", ("engine.comparison=fss", "system.heads=false", "system.indexing=oblivious")),
    ("tiny-opt", ("system.heads=false", "system.predictor_bits=8")),     # threshold test on Z_2^8
    ("tiny-opt", ("system.predictor_bits=12", "engine.relu_bits=16")),   # and the sparse ReLU on Z_2^16
    ("tiny-llama", ("system.heads=false", "system.predictor_bits=16", "system.indexing=oblivious")),
    ("tiny-opt", ("engine.comparison=fss", "system.heads=false", "system.predictor_bits=8", "engine.relu_bits=12")),
    ("tiny-opt", ("system.permutation=preprocessed",)),                  # the shuffle before the prompt
    ("tiny-llama", ("system.permutation=deployment", "engine.weight_masks=deployment")),   # all once, stage deploy
    ("tiny-opt", ("engine.weight_masks=deployment",)),                    # predictor masks once; permuted: per request
    ("tiny-opt", ("system.heads=false", "system.count_padding=bucket")),   # padded units computed, discarded
    ("tiny-llama", ("system.heads=false", "system.count_padding=dp", "system.count_padding_epsilon=0.5")),
]


@pytest.mark.parametrize("model, over", VARIANTS, ids=[f"{m}-{'-'.join(o) or 'default'}" for m, o in VARIANTS])
def test_private_equals_masked_plaintext(model, over, predictors, tmp_path):
    s, out = run_comet(model, tmp_path, predictors[model], "gen_tokens=4", "prompt='To be, or not'", *over)
    assert_same_tokens(s)
    heads = "system.heads=false" not in over
    indexing = "oblivious" if "system.indexing=oblivious" in over else "shuffle"
    sp = pd.read_csv(out / "sparsity.csv", dtype={"revealed": str})
    assert set(sp.step) == {0, 1, 2, 3} and set(sp.kind) == ({"ffn", "head"} if heads else {"ffn"})
    assert ((sp.active > 0) & (sp.active < sp.total)).any()          # really sparse, not all or nothing
    bits = int(next((o.split("=")[1] for o in over if o.startswith("system.predictor_bits=")), 64))
    band = 0.0 if bits == 64 else 2.0 ** (7 + 1 - bits)             # reduced ring: the truncation's band
    assert (sp.max_flip_margin.fillna(0) <= 0.05 + band).all()        # flips only near the threshold
    g = pd.read_csv(out / "generation.csv")
    assert set(g.source) == {"private", "plaintext", "plaintext_dense", "plaintext_predicted"}
    assert sp.jaccard.between(0, 1).all() and sp[sp.step == 0].jaccard.mean() > 0.95   # same inputs at step 0
    ops = pd.read_csv(out / "ops.csv")
    assert {"ffn.predict", "ffn.reveal", "ffn.somm", "ffn.act", "ffn.simm"} <= set(ops.op)
    assert ("ffn.shuffle" in set(ops.op)) == (indexing == "shuffle")
    assert ("attn.shuffle" in set(ops.op)) == heads
    assert "attn.refill" not in set(ops.op) or "system.kv_refill=naive" in over    # refill rounds: naive only
    assert ("ffn.select" in set(ops.op)) == (indexing == "oblivious")
    m = pd.read_csv(out / "metrics.csv")
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    timing = next((o.split("=")[1] for o in over if o.startswith("system.permutation=")), "online")
    lan = m[m.network == "lan"].set_index("phase")
    shuffled = lan.at[{"online": "setup", "preprocessed": "preprocess", "deployment": "deploy"}[timing], "online_bytes"]
    stages = lan.loc[["setup", "prefill", "decode"]]
    assert (shuffled > 0) == (indexing == "shuffle") and tot.online_bytes == stages.online_bytes.sum()
    assert (lan.at["setup", "online_bytes"] > 0) == (indexing == "shuffle" and timing == "online")
    deploy_masks = "engine.weight_masks=deployment" in over
    assert (lan.at["deploy", "online_bytes"] > 0) == (timing == "deployment" or deploy_masks)


def _corrupt_private_predictor(monkeypatch, what: str) -> None:
    """Break the predictor of the private path only (its shares and public thresholds), after `prepare`:
    the float predictors (`plain_predictors`, the checkpoint) stay as they are."""
    prepare = C.CometSystem.prepare

    def corrupted(self, mpc, weights, model_cfg):
        prepare(self, mpc, weights, model_cfg)
        for l, p in enumerate(self.predictors):
            if what == "threshold":
                self.thresholds[l] += 3.0
            elif what == "w2":                       # W2's columns and b2 permuted: scores of other neurons
                perm = torch.randperm(p["w2"].shape[1], generator=torch.Generator().manual_seed(l))
                p["w2"] = mpc.register_weight(p["w2"].index_select(1, perm))
                p["b2"] = p["b2"].index_select(0, perm)
            elif what == "head_threshold":
                self.head_thresholds[l] += 3.0
    monkeypatch.setattr(C.CometSystem, "prepare", corrupted)


@pytest.mark.parametrize("what", [None, "threshold", "w2", "head_threshold"])
def test_predicted_reference_catches_a_wrong_private_predictor(what, predictors, tmp_path, monkeypatch):
    """The masked reference follows the private run's masks, so it agrees even with a broken private
    predictor; plaintext_predicted (the float predictors on the plaintext model's own inputs) does not.
    Negative control (what=None): the same run unbroken agrees with both."""
    if what is not None:
        _corrupt_private_predictor(monkeypatch, what)
    s, out = run_comet("tiny-opt", tmp_path, predictors["tiny-opt"], "gen_tokens=4", "prompt='To be, or not'")
    assert_same_tokens(s)                                           # the masked reference cannot tell
    sp = pd.read_csv(out / "sparsity.csv")
    kind = "head" if what == "head_threshold" else "ffn"
    jac = sp[sp.kind == kind].jaccard
    m = pd.read_csv(out / "metrics.csv")
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    assert tot.predicted_token_agreement == s["predicted_agreement"]
    g = pd.read_csv(out / "generation.csv")
    assert list(g[g.source == "plaintext_predicted"].token_id) == s["predicted"]
    if what is None:
        assert jac.min() > 0.95 and s["predicted_match"] and bool(tot.predicted_tokens_match)
    else:
        assert jac.mean() < 0.7, jac.tolist()
        assert not s["predicted_match"] and tot.predicted_token_agreement < 1


@pytest.mark.parametrize("model,comparison,extra", [("tiny-opt", "circuit", ()), ("tiny-llama", "circuit", ()),
                                                    ("tiny-opt", "fss", ()),
                                                    ("tiny-opt", "circuit", ("system.predictor_bits=8", "engine.relu_bits=12")),
                                                    ("tiny-llama", "circuit", ("system.heads=false", "system.indexing=oblivious")),
                                                    ("tiny-opt", "fss", ("system.predictor_bits=12", "engine.relu_bits=8"))])
def test_cost_mode_with_mask_trace_equals_exact_ledger(predictors, tmp_path, model, comparison, extra):
    """Two layers of an OPT and a Llama shape, FFN and head sparsity (and the OPT shape under fss comparisons,
    and with reduced-ring threshold tests and ReLU): cost mode replaying the exact run's counts
    (system.mask_trace) books the exact run's ledger, row for row."""
    c = f"engine.comparison={comparison}"
    _, ex = run_comet(model, tmp_path / "exact", predictors[model], "gen_tokens=3", "prompt='Hello there'", c, *extra)
    _, co = run_comet(model, tmp_path / "cost", predictors[model], "gen_tokens=3", "prompt='Hello there'",
                      "mode=cost", f"system.mask_trace={ex / 'sparsity.csv'}", c, *extra)
    a, b = pd.read_csv(ex / "ledger.csv.gz"), pd.read_csv(co / "ledger.csv.gz")
    heads = "system.heads=false" not in extra
    assert a.layer.nunique() >= 2 and {"ffn.somm", "attn.shuffle" if heads else "ffn.select"} <= set(a.op)
    assert len(a) == len(b) and a.equals(b), "cost-mode ledger differs from exact mode's for the same masks"
    wa, wb = (pd.read_csv(d / "work.csv")[["stage", "layer", "op", "kind", "amount"]] for d in (ex, co))
    assert {"shuffle_elem", "matmul_mac_few_small", "matmul_call", "select_elem"} <= set(wa.kind)   # shuffles, decode products, SOMM
    pd.testing.assert_frame_equal(wa, wb)   # the work counters too (comm/work.py), count for count


def test_missing_predictors_say_how_to_make_them(tmp_path):
    with pytest.raises(CometError, match="comet train-predictor model=tiny-opt"):
        run_comet("tiny-opt", tmp_path, tmp_path / "none.pt")


def test_predictors_of_another_model_are_refused(predictors, tmp_path):
    with pytest.raises(CometError, match="trained for model 'tiny-llama'"):
        run_comet("tiny-opt", tmp_path, predictors["tiny-llama"])


# ---- cost formulas -------------------------------------------------------------------------------

def _measure(m, fn, *a):
    mark = m.ledger.mark()
    out = fn(*a)
    return out, m.ledger.cost_since(mark)


def test_permute_and_reveal_costs(engines):
    m = engines(EngineConfig(), seed=3)
    x = torch.randn(5, 12, dtype=torch.float64)
    xs = m.share(x)
    perm = Permutation(m, 12)
    y, c = _measure(m, permute, xs, -1, perm)
    assert c == permute_cost(m, 60)
    ref = x[:, perm.composed()] if m.simulated else None   # sigma o pi (the dealer knows only pi)
    got = m.reveal(y)
    if ref is not None:
        assert torch.allclose(got, ref, atol=2 ** -16)
    for T in (1, 3):
        z = m.share(torch.randn(T, 40, dtype=torch.float64))
        bits, c1 = _measure(m, M.active_bits, z, 0.2)
        assert c1 == M.active_bits_cost(m, T, 40)
        mask, c2 = _measure(m, M.reveal_bits, m, bits)
        assert c2 == M.reveal_bits_cost(40)
        zt = m.reveal(z)
        assert torch.equal(mask, (zt > 0.2).any(0))


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_ffn_step_and_setup_cost_formulas(family):
    """One whole FFN step of the system (predict, reveal, SOMM, act, SIMM) and one layer's setup."""
    from comet_core.mpc.shape import Shape

    m = MPC(EngineConfig(), seed=0, mode="cost")
    d, F, r = 16, 48, 8
    f = lambda *s: m.share(Shape(s, torch.float32))  # noqa: E731
    lw = dict(w_gate=f(d, F), w_up=f(d, F), w_down=f(F, d)) if family == "llama" else \
        dict(w1=f(d, F), b1=f(F), w2=f(F, d), b2=f(d))
    pred = dict(w1=f(d, r), b1=f(r), w2=f(r, F), b2=f(F))
    sysm = C.CometSystem(None)
    sysm.predictors, sysm.thresholds = [pred], [0.0]
    meta = {"act": "silu" if family == "llama" else "relu"}
    for T, k in ((1, 7), (4, 30), (1, 0)):
        sysm.counts = lambda layer, step, n, k=k: k
        sysm.indexing = "shuffle"
        (req, c0) = _measure(m, sysm._permute_layer, m, lw, pred)
        assert c0 == C.setup_cost(m, d, F, r, family == "llama")
        sysm.state = C.CometState(request=[req])
        _, c = _measure(m, sysm.ffn, f(T, d), lw, meta, 0)
        assert c == C.ffn_step_cost(m, T, d, F, r, k, family == "llama"), (T, k)
        sysm.predictor_bits = 8
        _, c = _measure(m, sysm.ffn, f(T, d), lw, meta, 0)
        assert c == C.ffn_step_cost(m, T, d, F, r, k, family == "llama", bits=8), ("8 bits", T, k)
        sysm.predictor_bits = 64
        sysm.indexing = "oblivious"
        _, c = _measure(m, sysm.ffn, f(T, d), lw, meta, 0)
        assert c == C.ffn_oblivious_step_cost(m, T, d, F, r, k, family == "llama"), ("oblivious", T, k)


@pytest.mark.parametrize("mode", ["bucket", "dp"])
@pytest.mark.parametrize("family", ["opt", "llama"])
def test_ffn_step_cost_with_count_padding(family, mode):
    """The padded reveal and the discarded units (sparse/count_padding.py) against ffn_step_cost."""
    from comet_core.mpc.shape import Shape

    m = MPC(EngineConfig(), seed=0, mode="cost")
    d, F, r = 16, 48, 8
    f = lambda *s: m.share(Shape(s, torch.float32))  # noqa: E731
    lw = dict(w_gate=f(d, F), w_up=f(d, F), w_down=f(F, d)) if family == "llama" else \
        dict(w1=f(d, F), b1=f(F), w2=f(F, d), b2=f(d))
    pred = dict(w1=f(d, r), b1=f(r), w2=f(r, F), b2=f(F))
    sysm = C.CometSystem({"count_padding": mode, "count_padding_bucket": 5})
    pad = sysm.count_padding
    sysm.predictors, sysm.thresholds = [pred], [0.0]
    meta = {"act": "silu" if family == "llama" else "relu"}
    for T, k in ((1, 7), (4, 30), (1, 0)):
        sysm.counts = lambda layer, step, n, k=k: k
        req = sysm._permute_layer(m, lw, pred)
        sysm.state = C.CometState(request=[req])
        mark = m.ledger.mark()
        sysm.ffn(f(T, d), lw, meta, 0)
        got = m.ledger.cost_since(mark)
        rec = sysm.state.records[-1]
        assert rec.active == k                                        # the record holds the real count
        padded = pad.padded_count(k, F, None) if mode == "bucket" else None
        if mode == "bucket":
            assert got == C.ffn_step_cost(m, T, d, F, r, padded, family == "llama", pad=pad), (T, k)
            assert padded == min(F, 5 * -(-k // 5))
        else:   # dp: the padded count is k + P (P >= 0 from the dealer): the formula holds for some K >= k
            assert any(got == C.ffn_step_cost(m, T, d, F, r, kk, family == "llama", pad=pad) for kk in range(k, F + 1)), (T, k)


def test_count_padding_mechanisms():
    """bucket rounds up; dp's noise lies in [0, 2t] and its median is t (a symmetric noise around the shift)."""
    import math
    import random

    from comet_core.sparse.count_padding import CountPadding

    b = CountPadding("bucket", bucket=64)
    assert [b.padded_count(k, 1000) for k in (0, 1, 64, 65, 999)] == [0, 64, 64, 128, 1000]
    dp = CountPadding("dp", epsilon=1.0, delta=1e-6)
    t = dp.shift()
    assert t == math.ceil(math.log(1 / 2e-6))
    rnd = random.Random(0)
    draws = sorted(dp.draw((1 - rnd.random(), 1 - rnd.random())) for _ in range(4001))
    assert 0 <= draws[0] and draws[-1] <= 2 * t and abs(draws[2000] - t) <= 1
    with pytest.raises(CometError, match="count_padding must be one of"):
        C.CometSystem({"count_padding": "some"})


def test_ledger_depends_on_counts_only(predictors, tmp_path, monkeypatch):
    """Moving the active FFN positions while keeping the counts leaves every ledger row unchanged. FFN
    sparsity only: the head groups' counts would follow the moved FFN outputs (only the FFN reveal is
    replaced here), and their KV refills depend on which groups recur across steps."""
    real = M.reveal_bits
    g = torch.Generator().manual_seed(0)
    counts: list[int] = []

    def recorded(mpc, bits, count=None):        # run a: the real masks; remember their counts
        mask = real(mpc, bits, count)
        counts.append(int(mask.sum()))
        return mask

    def moved(mpc, bits, count=None):           # run b: the same counts at other positions
        mask = real(mpc, bits, count)
        out = torch.zeros_like(mask)
        out[torch.randperm(mask.numel(), generator=g)[:counts.pop(0)]] = True
        return out

    monkeypatch.setattr(C, "reveal_bits", recorded)
    over = ("gen_tokens=2", "prompt='abc'", "system.heads=false")
    _, a = run_comet("tiny-opt", tmp_path / "a", predictors["tiny-opt"], *over)
    monkeypatch.setattr(C, "reveal_bits", moved)
    _, b = run_comet("tiny-opt", tmp_path / "b", predictors["tiny-opt"], *over)
    assert not counts
    la, lb = pd.read_csv(a / "ledger.csv.gz"), pd.read_csv(b / "ledger.csv.gz")
    assert la.equals(lb)
    sa, sb = pd.read_csv(a / "sparsity.csv"), pd.read_csv(b / "sparsity.csv")
    assert sa.active.tolist() == sb.active.tolist()


# ---- leakage --------------------------------------------------------------------------------------

def _p1_view_first_half(active: torch.Tensor, runs: int, weak: bool, monkeypatch) -> float:
    """Mean over requests of: the fraction of revealed-active units that P1, undoing the half of pi it
    knows (pi1), places in the first half of the neurons. Inputs with the active set in the first half
    vs the last half must look alike (0.5 in expectation) unless P1 can undo all of pi."""
    from comet_core.mpc.dealer import Dealer

    if weak:  # positive control: pi0 = identity, so pi = pi1, which P1 knows
        orig = Dealer.new_permutation

        def weak_perm(self, n, handle):
            p = orig(self, n, handle)
            p[0] = torch.arange(n)
            return p
        monkeypatch.setattr(Dealer, "new_permutation", weak_perm)
    F = active.numel()
    scores = torch.where(active, 1.0, -1.0).double()[None, :]      # predictor output (1, F): active iff > 0
    fracs = []
    for _ in range(runs):
        m = MPC(EngineConfig(), seed=None)                            # fresh OS keys per request
        perm = Permutation(m, F)
        z = permute(m.share(scores), -1, perm)                        # what the permuted predictor outputs
        mask = M.reveal_bits(m, M.active_bits(z, 0.0))
        pi1, sigma = perm.halves[1], perm.sigma                       # P1's knowledge
        undone = torch.zeros_like(mask)
        undone[pi1[sigma[mask]]] = True                               # P1's best placement guess
        fracs.append(float(undone[: F // 2].sum()) / max(1, int(mask.sum())))
    monkeypatch.undo()
    return sum(fracs) / len(fracs)


def test_revealed_masks_hide_positions_with_positive_control(monkeypatch):
    F, k, runs = 32, 8, 40
    first = torch.zeros(F, dtype=torch.bool)
    first[:k] = True
    last = torch.zeros(F, dtype=torch.bool)
    last[-k:] = True
    # under a uniform pi the fraction is hypergeometric: mean 0.5, sd ~ 0.16 per run, ~0.026 over 40
    # runs; |a - b| > 0.2 is a ~7 sd event (false alarm < 1e-9)
    a = _p1_view_first_half(first, runs, False, monkeypatch)
    b = _p1_view_first_half(last, runs, False, monkeypatch)
    assert abs(a - b) < 0.2, (a, b)
    wa = _p1_view_first_half(first, runs, True, monkeypatch)
    wb = _p1_view_first_half(last, runs, True, monkeypatch)
    assert abs(wa - wb) > 0.9, "the positive control (P1 knows all of pi) must be caught"


# ---- part 2: heads and the KV cache ---------------------------------------------------------------

class _Dec:
    def __init__(self, w, meta, family):
        self.w, self.meta, self.family = w, meta, family


def _force_group_masks(monkeypatch, sysm, schedule) -> None:
    """The reveal runs (its messages are booked) but returns the scheduled group mask."""
    real = M.reveal_bits

    def forced(mpc, bits, count=None):
        real(mpc, bits, count)
        return torch.tensor(schedule[sysm.state.step], dtype=torch.bool)
    monkeypatch.setattr("comet_core.systems.comet_heads.reveal_bits", forced)


def _head_setup(family: str, m: MPC, Hkv: int, G: int, prefetch: str = "never", refill: str = "merged"):
    """A one-layer comet system with shared random attention weights and forced group masks."""
    from omegaconf import OmegaConf

    from comet_core.sparse.heads import HeadCache

    g = torch.Generator().manual_seed(3)
    d, hd, r = 16, 4, 3
    H = Hkv * G
    sh = lambda *s: m.register_weight(m.share(torch.randn(*s, generator=g, dtype=torch.float64) * 0.3))  # noqa: E731
    lw = dict(wq=sh(d, H * hd), wk=sh(d, Hkv * hd), wv=sh(d, Hkv * hd), wo=sh(H * hd, d))
    if family == "opt":
        lw.update(bq=sh(H * hd), bk=sh(Hkv * hd), bv=sh(Hkv * hd), bo=sh(d))
    meta = dict(num_heads=H, num_kv_heads=Hkv, head_dim=hd, rope_theta=10000.0)
    sysm = C.CometSystem(OmegaConf.create({"heads": True, "kv_prefetch": prefetch, "kv_refill": refill}))
    sysm.head_predictors = [dict(w1=sh(d, r), b1=sh(r), w2=sh(r, H), b2=sh(H))]
    sysm.head_thresholds = [0.0]
    sysm.head_reactivation = lambda layer, horizon: 1.0
    sysm.state = C.CometState(total_steps=6)
    dec = _Dec(None, meta, family)
    sysm.state.heads.append(sysm._permute_heads(m, lw, meta, 0))
    sysm.state.kv.append(HeadCache(Hkv))
    return sysm, dec, lw, d


@pytest.mark.parametrize("family, Hkv, G", [("opt", 4, 1), ("llama", 2, 2)])
def test_refilled_kv_equals_what_it_would_have_had(family, Hkv, G, monkeypatch):
    """A group inactive for several steps, then active, gets exactly the K/V of every past position
    (up to the fixed-point LSB): compared with the dense attention's cache of the same inputs."""
    from comet_core.models.secure import KVCache
    from comet_core.systems.dense import DenseSystem

    m = MPC(EngineConfig(), seed=4)
    sysm, dec, lw, d = _head_setup(family, m, Hkv, G)
    schedule = {0: [1] * Hkv, 1: [1] + [0] * (Hkv - 1), 2: [1] + [0] * (Hkv - 1), 3: [1] * Hkv}
    _force_group_masks(monkeypatch, sysm, schedule)
    dense_cache = KVCache(1)
    g = torch.Generator().manual_seed(9)
    start = 0
    for step, T in enumerate((3, 1, 1, 1)):
        x = m.share(torch.randn(T, d, generator=g, dtype=torch.float64))
        sysm.state.step = step
        out = sysm.attention(dec, x, lw, 0, None, start)
        ref = DenseSystem().attention(dec, x, lw, 0, dense_cache, start)
        dense_cache.positions += T
        start += T
        if step == 3:   # all groups active again: outputs equal dense attention over full K/V
            assert torch.allclose(m.peek(out), m.peek(ref), atol=1e-2)   # two softmax runs (exp ~1e-3 rel.)
    hc = sysm.state.kv[0]
    assert bool(hc.valid.all()) and hc.stats["misses"] == 2 * (Hkv - 1)
    pi = sysm.state.heads[0].perm.composed()
    k_dense = m.peek(dense_cache.k[0])                    # (Hkv, S, hd) real groups
    assert torch.allclose(m.peek(hc.k), k_dense[pi], atol=4 * 2 ** -16)
    assert torch.allclose(m.peek(hc.v), m.peek(dense_cache.v[0])[pi], atol=4 * 2 ** -16)


@pytest.mark.parametrize("refill", ["merged", "naive"])
@pytest.mark.parametrize("family, Hkv, G", [("opt", 4, 1), ("llama", 2, 2)])
def test_attention_step_cost_and_merged_refill_adds_no_round(family, Hkv, G, refill, monkeypatch):
    m = MPC(EngineConfig(), seed=5)
    sysm, dec, lw, d = _head_setup(family, m, Hkv, G, refill=refill)
    H, hd, r = Hkv * G, 4, 3
    schedule = {0: [1] * Hkv, 1: [0] * Hkv, 2: [0] * Hkv, 3: [1] * Hkv, 4: [1] * Hkv}
    _force_group_masks(monkeypatch, sysm, schedule)
    g = torch.Generator().manual_seed(9)
    start, qkv_rounds = 0, {}
    for step, T in enumerate((3, 1, 1, 1, 1)):
        x = m.share(torch.randn(T, d, generator=g, dtype=torch.float64))
        sysm.state.step = step
        a = int(sum(schedule[step]))
        misses = 2 if step == 3 else 0                                    # steps 1 and 2 skipped
        U = misses if refill == "merged" else 0
        naive = tuple([misses] * a) if refill == "naive" else ()
        mark = m.ledger.mark()
        with m.label(op="x"):
            sysm.attention(dec, x, lw, 0, None, start)
        c = m.ledger.cost_since(mark)
        expect = C.attention_step_cost(m, T, d, H, Hkv, hd, r, a, 0, U, start + T, family == "llama", naive)
        assert c == expect, (step, c, expect)
        qkv_rounds[step] = len({row[10] for row in m.ledger.rows[mark[0]:] if row[3] == "attn.qkv" and row[0] == "online"})
        start += T
    if refill == "merged":
        assert qkv_rounds[3] == qkv_rounds[4] == 2    # the step with refills takes no extra round


def test_client_aided_correlations_are_booked_from_the_client(predictors, tmp_path):
    """system.correlations=client: the permutation correlations come from the client (same bytes)."""
    ledgers = {}
    for who in ("dealer", "client"):
        _, out = run_comet("tiny-opt", tmp_path / who, predictors["tiny-opt"], "gen_tokens=1", "mode=cost",
                           f"system.correlations={who}")
        ledgers[who] = pd.read_csv(out / "ledger.csv.gz")
    for who, lg in ledgers.items():
        shuffle = lg[(lg.phase == "offline") & lg.op.isin(["ffn.shuffle", "attn.shuffle"])]
        assert len(shuffle) and set(shuffle.sender) == {who}
    assert ledgers["dealer"].bytes.sum() == ledgers["client"].bytes.sum()


@pytest.mark.parametrize("args, needle", [
    (["model=opt-125m"], "comet train-predictor model=opt-125m"),           # no predictors: refused up front
    (["model=smollm2-135m", "system.predictor_checkpoint='predictors/{model}/none-{preset}.pt'"],
     "none-smollm2.pt not found); create them with: comet train-predictor model=smollm2-135m predictor=smollm2"),
    (["system.ffn_sparsity=0.9"], "cost mode only"),
    (["system.indexing=sorted"], "system.indexing must be shuffle or oblivious"),
    (["system.heads=true", "system.indexing=oblivious"], "set system.heads=false"),
])
def test_bad_comet_settings_fail_before_any_work(tmp_path, args, needle):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", "system=comet", *args,
                        f"output_dir={tmp_path / 'x'}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(CONF.parent), "PATH": "/usr/bin:/bin", "CI": "true"})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-1500:]
    assert "loading model" not in r.stderr and not (tmp_path / "x").exists()


def test_derived_profile_inputs_match_their_sources():
    """conf/system/comet.yaml's derivation for the paper shapes quotes our predictors' recall and precision:
    they must equal results/predictor/shakespeare-opt/summary.json (to the 3 decimals written)."""
    import json

    from omegaconf import OmegaConf

    der = OmegaConf.load(CONF / "system" / "comet.yaml").derived
    summary = json.loads((CONF.parent / "results/predictor/shakespeare-opt/summary.json").read_text())
    assert round(summary["mean_recall"]["ffn"], 3) == der.recall
    assert round(summary["mean_precision"]["ffn"], 3) == der.precision
    assert (CONF.parent / der.union_growth_profile).is_file()
