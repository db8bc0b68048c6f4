"""The private models against plaintext HF models, and exact vs cost mode end to end."""

import pytest
import torch
from omegaconf import OmegaConf

from comet_core.models.generate import plaintext_generate, private_generate
from comet_core.models.secure import SecureDecoder
from comet_core.models.weights import extract, share_weights, weight_shapes
from comet_core.models.zoo import decoder_layers, load_plain_model
from comet_core.mpc.engine import MPC
from comet_core.systems.dense import DenseSystem

CONF = "conf/model/{}.yaml"
# Fixed point with 16 fractional bits, local truncation, softmax via the limit exp (relative error
# ~1e-3): on these tiny models the last-position logits stay within this of float64 plaintext.
LOGIT_TOL = 2e-2


def _model(name, **over):
    cfg = OmegaConf.merge(OmegaConf.load(CONF.format(name)), over)
    plain, tok = load_plain_model(cfg, seed=0)
    return cfg, plain, tok


def _private(cfg, plain, ids, steps, mode="exact", seed=0, output="token"):
    mpc = MPC(seed=seed, mode=mode)
    if mode == "cost":  # what `comet run-experiment mode=cost` does: shapes from the config alone
        weights = weight_shapes(cfg, len(decoder_layers(plain)))
    else:
        weights = extract(plain, cfg.family, cfg.activation, tied=bool(cfg.get("tie_word_embeddings", False)))
    model = SecureDecoder(mpc, share_weights(mpc, weights), DenseSystem())
    return mpc, private_generate(mpc, model, ids, steps, cfg.vocab_size, output=output)


def _separate_logits(plain) -> None:
    """Scale the random model's matrices up so that logits are well separated (HF init std 0.02 gives
    ~0.5-wide logits)."""
    with torch.no_grad():
        for p in plain.parameters():
            if p.dim() == 2:
                p.mul_(4.0)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_private_generation_matches_plaintext(name):
    cfg, plain, tok = _model(name)
    _separate_logits(plain)
    ids = tok.encode("To be, or not to be")
    ref = plaintext_generate(plain, ids, 4)
    _, gen = _private(cfg, plain, ids, 4)
    for step, (a, b) in enumerate(zip(gen.logits, ref.logits)):
        err = (a.double() - b.double()).abs().max().item()
        assert err < LOGIT_TOL, f"step {step}: max |logit error| {err}"
        top2 = torch.topk(b.double(), 2).values
        if top2[0] - top2[1] > 2 * LOGIT_TOL:  # an unambiguous argmax must agree
            assert gen.tokens[step] == ref.tokens[step]
        if gen.tokens[step] != ref.tokens[step]:
            break  # later steps see different prefixes


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_cost_mode_ledger_equals_exact_mode(name):
    cfg, plain, tok = _model(name)
    ids = tok.encode("Hello there")
    mpc_e, _ = _private(cfg, plain, ids, 3, "exact")
    mpc_c, _ = _private(cfg, plain, ids, 3, "cost")
    assert mpc_e.ledger.rows == mpc_c.ledger.rows
    assert len(mpc_e.ledger.rows) > 1000


def test_same_seed_same_ledger_and_tokens():
    cfg, plain, tok = _model("tiny-opt")
    ids = tok.encode("abc")
    m1, g1 = _private(cfg, plain, ids, 2, seed=5)
    m2, g2 = _private(cfg, plain, ids, 2, seed=5)
    assert m1.ledger.rows == m2.ledger.rows and g1.tokens == g2.tokens
    assert all(torch.equal(a, b) for a, b in zip(g1.logits, g2.logits))


def test_layers_override_runs_first_n_layers():
    cfg, plain, tok = _model("tiny-llama", layers=1)
    mpc, gen = _private(cfg, plain, tok.encode("x"), 1)
    layers = {r[2] for r in mpc.ledger.rows if r[0] == "online"}
    assert layers == {-1, 0}


def test_output_token_reveals_only_the_id():
    """output=token (default): a secure argmax (op lm_head.argmax) and one element to the client per step;
    output=logits: the whole vocabulary per step. Same tokens, same logits at the first step (the token
    run reads them by MPC.peek, which books nothing; later steps draw other masks, hence other roundings)."""
    cfg, plain, tok = _model("tiny-opt")
    with torch.no_grad():
        for p in plain.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    ids = tok.encode("abc")
    mt, gt = _private(cfg, plain, ids, 3, output="token")
    ml, gl = _private(cfg, plain, ids, 3, output="logits")
    assert gt.tokens == gl.tokens
    assert torch.equal(gt.logits[0], gl.logits[0]) and len(gt.logits) == 3
    assert all((a - b).abs().max() < LOGIT_TOL for a, b in zip(gt.logits, gl.logits))
    ft, fl = mt.ledger.frame(), ml.ledger.frame()
    out_t, out_l = ft[ft.phase == "output"], fl[fl.phase == "output"]
    assert set(out_t.receiver) == {"client"} and out_t.elements.tolist() == [1] * 6      # P0 and P1, 3 steps
    assert out_l.elements.tolist() == [cfg.vocab_size] * 6
    am = ft[ft.op == "lm_head.argmax"]
    assert len(am) > 0 and set(am.protocol) == {"argmax"} and not (fl.op == "lm_head.argmax").any()


def test_output_must_be_token_or_logits():
    from comet_core.errors import ConfigError

    cfg, plain, tok = _model("tiny-opt")
    with pytest.raises(ConfigError, match="output must be one of token, logits"):
        _private(cfg, plain, tok.encode("a"), 1, output="probs")


def test_out_of_range_activation_names_the_layer_and_operator():
    """A model whose activations leave the fixed-point range stops with a one-line RangeError naming the
    layer and the operator (before: a silently wrong token)."""
    from comet_core.errors import RangeError

    cfg, plain, tok = _model("tiny-llama")
    with torch.no_grad():
        layer = decoder_layers(plain)[1]
        layer.mlp.gate_proj.weight.mul_(1e10)  # gate activations ~1e9: beyond 2^30 in layer 1's FFN
    with pytest.raises(RangeError) as e:
        _private(cfg, plain, tok.encode("abc"), 1)
    msg = str(e.value)
    assert "layer 1" in msg and "op ffn." in msg and "\n" not in msg, msg


def _setup_elements(mpc) -> int:
    return sum(r[7] for r in mpc.ledger.rows if r[0] == "setup")


def test_a_tied_lm_head_is_shared_once():
    """tie_word_embeddings (SmolLM2): the owner shares the table once, the embedding being the head's shares
    transposed (each with its own mask): V * d fewer words in setup than the same weights untied, the
    online ledger unchanged, tokens and logits as the plaintext model's, and cost mode books the same.
    Controls: untied, both tables are shared; a config that claims a tie the checkpoint lacks is refused."""
    from comet_core.errors import CometError

    cfg, plain, tok = _model("tiny-llama", tie_word_embeddings=True)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    _separate_logits(plain)
    ids = tok.encode("To be, or not")
    ref = plaintext_generate(plain, ids, 3)
    tied, gen = _private(cfg, plain, ids, 3)
    cost, _ = _private(cfg, plain, ids, 3, "cost")
    assert tied.ledger.rows == cost.ledger.rows
    untied_cfg = OmegaConf.merge(cfg, {"tie_word_embeddings": False})
    untied, gen_u = _private(untied_cfg, plain, ids, 3)
    V, d = int(cfg.vocab_size), int(cfg.hidden_size)
    assert _setup_elements(untied) - _setup_elements(tied) == V * d
    online = lambda m: [r for r in m.ledger.rows if r[0] != "setup"]   # noqa: E731
    assert online(tied) == online(untied)
    assert gen.tokens == ref.tokens == gen_u.tokens
    for a, b in zip(gen.logits, ref.logits):
        assert (a.double() - b.double()).abs().max().item() < LOGIT_TOL
    _, plain_u, _ = _model("tiny-llama")                                   # an untied checkpoint
    with pytest.raises(CometError, match="tie_word_embeddings"):
        _private(cfg, plain_u, ids, 1)
