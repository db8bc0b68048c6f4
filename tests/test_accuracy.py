"""`comet accuracy` (experiments/accuracy.py): every system on the same windows with one evaluator.

The sparse plaintext decoder (comet_core/sparse/masked_decoder.py) computes the same function as the
HF model with the predictor-accuracy hooks (comet_core/predictor/apply.py) for multi-head attention,
where a KV group is one head; the table has its columns, one dense perplexity for every row, and bad
input fails before any work.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from comet_core.errors import CometError
from comet_core.models.perplexity import evaluate
from comet_core.models.reference import PlainDecoder
from comet_core.models.weights import extract
from comet_core.models.zoo import load_plain_model
from comet_core.predictor import apply as ap
from comet_core.predictor.checkpoint import load_predictors
from comet_core.sparse.masked_decoder import SparsePlainDecoder
from comet_core.systems import load_system
from experiments import accuracy as A
from helpers_models import model_cfg
from test_comet import make_predictors


def dense_system():
    return load_system(OmegaConf.load(A.REPO / "conf" / "system" / "dense.yaml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny("tiny-opt", tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return _tiny("tiny-llama", tmp_path_factory)


def _tiny(name, tmp_path_factory):
    cfg = model_cfg(name)
    plain, tok = load_plain_model(cfg, seed=0)
    path = make_predictors(cfg, tmp_path_factory.mktemp("acc") / "p.pt")
    ps = load_predictors(path, cfg)
    ps.ffn_tau = [0.05] * len(ps.ffn)            # an oracle that drops some (tiny) non-zero neurons too
    ps.head_tau = [0.2] * len(ps.head)
    windows = np.random.default_rng(0).integers(0, int(cfg.vocab_size), size=(2, 16))
    return cfg, plain, tok, ps, windows


@pytest.mark.parametrize("ffn, heads", [("predicted", "dense"), ("dense", "predicted"), ("predicted", "predicted"),
                                        ("oracle", "oracle")])
def test_sparse_decoder_equals_the_hf_model_with_the_same_masks(tiny, ffn, heads):
    cfg, plain, _, ps, windows = tiny
    dec = SparsePlainDecoder(extract(plain, cfg.family, cfg.activation), dense_system(), ps, ffn, heads)
    ids = [int(t) for t in windows[0]]
    ours = dec.forward(ids, dec.new_cache(), all_positions=True)                 # (T, V) float64
    with ap.sparsity_applied(plain, ps, ffn=ffn, head=heads) as kept, torch.no_grad():
        hf = plain(input_ids=torch.tensor([ids])).logits[0].double()
    assert torch.allclose(ours, hf, atol=1e-4), float((ours - hf).abs().max())
    if ffn != "dense":
        assert 0 < dec.density("ffn") < 1 and abs(dec.density("ffn") - ap.density(kept, "ffn")) < 1e-9
    if heads != "dense":
        assert 0 < dec.density("head") < 1 and abs(dec.density("head") - ap.density(kept, "head")) < 1e-9


@pytest.mark.parametrize("ffn", ["predicted", "oracle"])
def test_sparse_decoder_llama_ffn_equals_the_hf_model(tiny_llama, ffn):
    """SwiGLU: the mask on act(gate) * up before down_proj, scored on |act(gate)| (oracle) as the HF hooks."""
    cfg, plain, _, ps, windows = tiny_llama
    dec = SparsePlainDecoder(extract(plain, cfg.family, cfg.activation), dense_system(), ps, ffn, "dense")
    ids = [int(t) for t in windows[0]]
    ours = dec.forward(ids, dec.new_cache(), all_positions=True)
    with ap.sparsity_applied(plain, ps, ffn=ffn) as kept, torch.no_grad():
        hf = plain(input_ids=torch.tensor([ids])).logits[0].double()
    assert torch.allclose(ours, hf, atol=1e-4), float((ours - hf).abs().max())
    assert 0 < dec.density("ffn") < 1 and abs(dec.density("ffn") - ap.density(kept, "ffn")) < 1e-9


def test_table_columns_and_one_dense_perplexity(tiny):
    cfg, plain, tok, ps, windows = tiny
    df = A.accuracy_table(cfg, plain, tok, windows, ["dense", "comet", "puma", "iron"], predictors=ps)
    assert list(df.columns[:len(A.COLUMNS)]) == list(A.COLUMNS)
    assert list(df.system) == ["dense"] + ["comet"] * len(A.COMET_VARIANTS) + ["puma", "iron"]
    assert (df.windows == 2).all() and (df.tokens == 2 * 15).all()
    dense = df[df.system == "dense"].iloc[0]
    assert (df.perplexity_dense == dense.perplexity).all()
    # the reference decoder without masks is the dense row's function; Iron's operators are exact
    plain_dec = PlainDecoder(extract(plain, cfg.family, cfg.activation), dense_system())
    assert evaluate(plain_dec, windows)["perplexity"] == dense.perplexity
    assert df[df.system == "iron"].perplexity.iloc[0] == pytest.approx(dense.perplexity, rel=1e-9)
    both = df[(df.system == "comet") & (df.variant == "ffn+heads")].iloc[0]
    assert both.ffn_density < 1 and both.head_density < 1 and both.perplexity != dense.perplexity
    assert ((df.perplexity_change_pct == 0) == (df.perplexity == dense.perplexity)).all()


def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(CometError, match="random weights"):
        A.run("tiny-opt", out=tmp_path / "a.csv")
    with pytest.raises(CometError, match="unknown model"):
        A.run("no-such-model", out=tmp_path / "a.csv")
    with pytest.raises(CometError, match="--windows must be a positive"):
        A.run("shakespeare-opt", windows=0, out=tmp_path / "a.csv")
    with pytest.raises(CometError, match="unknown system"):
        A.run("shakespeare-opt", systems=["dense", "nope"], out=tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text("taken\n")
    with pytest.raises(CometError, match="exists; pass --overwrite"):
        A.run("shakespeare-opt", systems=["dense"], out=tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text() == "taken\n"


@pytest.mark.parametrize("heads, variant", [(True, "ffn+heads"), (False, "ffn")])
def test_real_models_quality_reads_the_one_table(tiny, tmp_path, heads, variant):
    """results/real_models/table.md's quality columns: every system of a model from results/accuracy/<model>.csv,
    Comet's row the variant the sweep ran (with or without heads), one dense perplexity per model."""
    from types import SimpleNamespace

    from plotting.analyses import plaintext_quality

    cfg, plain, tok, ps, windows = tiny
    df = A.accuracy_table(cfg, plain, tok, windows, ["dense", "comet", "iron"], predictors=ps)
    (tmp_path / "results" / "accuracy").mkdir(parents=True)
    df.to_csv(tmp_path / "results" / "accuracy" / "tiny-opt.csv", index=False)
    job = SimpleNamespace(cfg=OmegaConf.create({"system": {"name": "comet", "heads": heads}}))
    q = plaintext_quality(SimpleNamespace(done_jobs=[job]), "comet", tmp_path / "results").set_index("system")
    assert sorted(q.index) == ["comet", "dense", "iron"] and q.quality_dense_ppl.nunique() == 1
    want = df[(df.system == "comet") & (df.variant == variant)].perplexity.iloc[0]
    assert q.loc["comet", "quality_ppl"] == want and q.loc["comet", "quality_source"].endswith(f"({variant})")
    assert q.loc["dense", "quality_ppl"] == q.loc["dense", "quality_dense_ppl"] and q.loc["dense", "quality_ppl_change_pct"] == 0


def test_cli_error_is_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cli.main", "accuracy", "--model", "nope"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(A.REPO), "PATH": "/usr/bin:/bin", "CI": "true"})
    err = [line for line in r.stderr.splitlines() if not line.startswith("[comet.")]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: unknown model 'nope'"), r.stderr
