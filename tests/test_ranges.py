"""Values outside a protocol's range: a one-line RangeError in simulation (naming layer, operator and value)
instead of a silent wrong answer; refused encodings; the switch that turns the check off.

Before the check (engine at 516eff7): gelu(-1500) = -1500.0 and gelu(1500) = 0.023 (x^3 left the ring),
square(60000) wrapped, and encode mapped NaN, inf and 1e300 to -2^63 (-2^47 as a value at frac_bits 16).
"""

from __future__ import annotations

import pytest
import torch

from comet_core.errors import CometError, RangeError
from comet_core.mpc import arith, compare, nonlinear as nl, ring
from comet_core.mpc.engine import MPC, EngineConfig

from conftest import assert_close


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, 2.0 ** 47, -(2.0 ** 46) - 1])
def test_encode_refuses_non_finite_and_out_of_range(bad):
    with pytest.raises(CometError, match="cannot encode"):
        ring.encode(torch.tensor([1.0, bad], dtype=torch.float64), 16)


def test_encode_accepts_the_edge_of_its_range():
    assert ring.encode(torch.tensor([2.0 ** 46, -(2.0 ** 46)], dtype=torch.float64), 16).tolist() == [2 ** 62, -(2 ** 62)]


def test_share_refuses_nan_input():
    m = MPC(EngineConfig(), seed=1)
    with pytest.raises(CometError, match="nan"):
        m.share(torch.tensor([0.5, float("nan")], dtype=torch.float64))


def _gelu_in_layer(m: MPC, x: torch.Tensor):
    with m.label(stage="prefill", layer=3, op="ffn.act"):
        return nl.gelu(m.share(x))


def test_gelu_cube_out_of_range_names_layer_op_and_value():
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([1.0, -1500.0], dtype=torch.float64)
    with pytest.raises(RangeError) as e:
        _gelu_in_layer(m, x)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("layer 3", "op ffn.act", "gelu", "3.375e+09", "frac_bits=16"):
        assert part in msg, (part, msg)


def test_square_and_truncation_out_of_range():
    m = MPC(EngineConfig(), seed=1)
    with pytest.raises(RangeError, match="x\\^2 = 3.6e\\+09"):
        arith.square(m.share(torch.tensor([60000.0], dtype=torch.float64)))
    w = torch.tensor([5, 2 ** 62 + 2 ** 61], dtype=torch.int64)
    with pytest.raises(RangeError, match="truncation input"):
        arith.truncate(m.share(w, frac=0), 4)
    with pytest.raises(RangeError, match="inv_sqrt input"):
        nl.inv_sqrt(m.share(torch.tensor([2.0 ** 33], dtype=torch.float64)))


def test_products_inside_the_range_pass():
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([900.0, -900.0, 3.0], dtype=torch.float64)  # x^3 = 7.3e8 < 2^30
    assert_close(m.reveal(nl.gelu(m.share(x))), torch.nn.functional.gelu(x), 2e-2, 5e-5,
                 what="gelu at |x| = 900")  # sigmoid(K z) is 0 or 1 within ~1.5e-5: |err| ~ 1.5e-5 |x|
    big = torch.tensor([2.0 ** 40, -(2.0 ** 40)], dtype=torch.float64)  # x * bit needs no truncation
    assert_close(m.reveal(compare.relu(m.share(big))), torch.relu(big), 0.0, what="relu of 2^40")


@pytest.mark.parametrize("how", ["config", "argument"])
def test_range_check_switch(how):
    """With the check off the same input gives the silent wrong value the check exists for."""
    m = MPC(EngineConfig(check_ranges=False), seed=1) if how == "config" else MPC(EngineConfig(), seed=1, check_ranges=False)
    assert not m.checking
    got = m.reveal(nl.gelu(m.share(torch.tensor([-1500.0], dtype=torch.float64))))
    assert abs(float(got[0])) > 100, "gelu(-1500) should be ~0; the wrapped x^3 makes it huge"


def test_range_check_absent_for_a_single_party():
    """A single party holds only its own share: it cannot check (and must not try)."""
    from comet_core.mpc.parties import run_pair

    def body(m: MPC):
        assert not m.checking
        return m.reveal(arith.square(m.share(torch.tensor([60000.0], dtype=torch.float64))))

    r0, r1, _ = run_pair(body, seed=1)
    assert torch.equal(r0, r1)


def test_range_check_off_in_cost_mode():
    m = MPC(EngineConfig(), seed=1, mode="cost")
    assert not m.checking


# -- local sums of large terms (issue 22, I1): checked before they can wrap --------------------------
# Before the fix (5b1a3c9) the norms checked each square and then summed the row in the ring, where it
# wrapped mod 2^64 before truncate checked it: layernorm and rmsnorm of [18000, -18000, 18000, -18000]
# gave +-2.4148 (LayerNorm: +-1) with no error, and the mean of four 2^46 was 0.

WRAPPING_ROW = torch.tensor([[18000.0, -18000.0, 18000.0, -18000.0]], dtype=torch.float64)  # each square fits


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_a_norm_row_sum_of_squares_that_would_wrap_is_refused(norm):
    m = MPC(EngineConfig(), seed=1)
    fn = (lambda s: nl.layernorm(s, None, None)) if norm == "layernorm" else (lambda s: nl.rmsnorm(s, None))
    with m.label(stage="prefill", layer=0, op="attn.norm"):
        with pytest.raises(RangeError) as e:
            fn(m.share(WRAPPING_ROW))
    msg = str(e.value)
    assert "\n" not in msg and "row sum" in msg and "layer 0" in msg and "op attn.norm" in msg, msg


def test_a_row_sum_for_the_mean_that_would_wrap_is_refused():
    m = MPC(EngineConfig(), seed=1)
    with pytest.raises(RangeError, match="row sum"):
        nl._mean_last(m.share(torch.full((1, 4), 2.0 ** 46, dtype=torch.float64)))   # 4 * 2^62 = 0 mod 2^64


def test_norms_just_inside_the_range_still_pass():
    """The bound is on the row sum, not on each term: rms(x) just under 8,192 passes (README range)."""
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([[8000.0, -8000.0, 8000.0, -8000.0]], dtype=torch.float64)
    assert_close(m.reveal(nl.layernorm(m.share(x), None, None)), torch.nn.functional.layer_norm(x, (4,)), 1e-2,
                 what="layernorm at rms 8000")


def test_the_sum_check_is_off_with_the_switch():
    """Positive control of the check's purpose: with check_ranges off the same row gives the wrong value."""
    m = MPC(EngineConfig(check_ranges=False), seed=1)
    got = m.reveal(nl.layernorm(m.share(WRAPPING_ROW), None, None))
    assert not torch.allclose(got, torch.nn.functional.layer_norm(WRAPPING_ROW, (4,)), atol=0.1)


# -- a run whose reference is the same function must give the plaintext's tokens (issue 22, I1) ---------


def _run_cfg(tmp_path, *over):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from comet_core.config.schema import register

    register()
    conf = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path / 'run'}", "model=tiny-opt", "model.layers=1",
                                            "gen_tokens=2", "prompt=To be", "seed=1", "force=true", *over])


def test_which_runs_must_equal_the_plaintext(tmp_path):
    from experiments.run import equal_tokens_expected as expected

    assert expected(_run_cfg(tmp_path))                                          # dense, exact functions
    assert expected(_run_cfg(tmp_path, "system=comet"))                          # the same masks in plaintext
    assert not expected(_run_cfg(tmp_path, "mode=cost"))
    assert not expected(_run_cfg(tmp_path, "system=mpcformer"))                  # approximations
    assert not expected(_run_cfg(tmp_path, "system.softmax=2quad"))
    # tcp without the in-process run: Comet's reference has no masks (README "Real two-party runs")
    assert not expected(_run_cfg(tmp_path, "system=comet", "transport=tcp", "transport.check_inprocess=false"))


def _outcome(private, plain, err: float, gap: float):
    """A 2-step generation: the plaintext's top-2 gap at step 1 is `gap`, the private logits are off by `err`."""
    from types import SimpleNamespace

    from experiments.run import _comparison

    ref_logits = [torch.tensor([0.0, 3.0, 1.0]), torch.tensor([0.0, 3.0, 3.0 - gap])]
    gen_logits = [ref_logits[0].clone(), ref_logits[1] + torch.tensor([0.0, -err, err])]
    o = SimpleNamespace(gen=SimpleNamespace(tokens=private, logits=gen_logits), ids=[1],
                        tok=SimpleNamespace(decode=lambda ids: str(ids)), ref=SimpleNamespace(tokens=plain, logits=ref_logits))
    return _comparison(o), o


def test_a_mismatch_is_an_error_unless_a_near_tie_explains_it():
    from experiments.run import token_mismatch

    assert token_mismatch(*_outcome([1, 1], [1, 1], 0.01, 1.0)) is None          # equal
    assert token_mismatch(*_outcome([1, 2], [1, 1], 0.02, 0.01)) is None         # a near-tie, small error
    msg = token_mismatch(*_outcome([1, 2], [1, 1], 2.5, 2.0))                   # an error as large as the logits
    assert msg and "\n" not in msg and "step 1" in msg and "not marked complete" in msg
    assert token_mismatch(*_outcome([1, 2], [1, 1], 0.01, 1.0))                 # the error cannot explain the gap


def test_a_dense_run_with_wrong_tokens_fails_and_keeps_earlier_results(tmp_path, monkeypatch):
    """Positive control: a private token changed after the run (as a wrapped sum would) fails the run in one
    line, the folder is not replaced and no staging folder is left; the same run unchanged completes."""
    import experiments.run as R
    from comet_core.errors import CometError
    from comet_core.results.run_folder import MARKER

    out = tmp_path / "run"
    R.run(_run_cfg(tmp_path), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert MARKER in before
    real = R.execute

    def wrong(cfg, **kw):
        o = real(cfg, **kw)
        o.gen.tokens[-1] = (o.gen.tokens[-1] + 1) % int(cfg.model.vocab_size)
        return o
    monkeypatch.setattr(R, "execute", wrong)
    with pytest.raises(CometError, match="private tokens differ from the plaintext at step 1") as e:
        R.run(_run_cfg(tmp_path, "overwrite=true"), out)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_run_whose_norm_sum_would_wrap_is_refused_in_one_line(tmp_path):
    """The review's case on a tiny model: layer 0's fc1 scaled by 5.5e5 puts layer 1's LayerNorm row sum
    of squares just past 2^64 (each square fits). At 5b1a3c9 this run completed (`comet run-experiment
    model=tiny-opt model.source=checkpoint model.checkpoint=<scaled> prompt=h gen_tokens=1 seed=0`:
    COMPLETE written, exit 0, |logit error| 1.23); now it stops in one line naming the sum, and no folder
    is written."""
    from pathlib import Path

    from omegaconf import OmegaConf

    import experiments.run as R
    from comet_core.models.zoo import load_plain_model

    root = Path(__file__).resolve().parent.parent
    plain, _ = load_plain_model(OmegaConf.load(root / "conf" / "model" / "tiny-opt.yaml"), seed=0)
    with torch.no_grad():
        plain.model.decoder.layers[0].fc1.weight.mul_(5.5e5)
    plain.save_pretrained(tmp_path / "scaled")
    out = tmp_path / "run"
    cfg = _run_cfg(tmp_path, "model.source=checkpoint", f"model.checkpoint={tmp_path / 'scaled'}", "model.layers=null",
                   "prompt=h", "gen_tokens=1", "seed=0")
    with pytest.raises(RangeError) as e:
        R.run(cfg, out)
    msg = str(e.value)
    assert "\n" not in msg and "layer 1, op attn.norm" in msg and "row sum of squares" in msg, msg
    assert not out.exists()
