"""model=bert-base (cost mode) and BOLT's word elimination (system.word_elimination=true): fewer tokens after
params.we_layer layers, the sort priced, refusals outside an encoder pass in cost mode."""

from pathlib import Path

import math

import pytest
from hydra import compose, initialize_config_dir

from comet_core.errors import CometError
from comet_core.mpc import ideal
from comet_core.systems.bolt import word_elimination_steps
from experiments.run import execute
from comet_core.roles.run_config import validate_config

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def _cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path}", "save_ledger=false", *over])


def test_bert_base_config_has_the_published_shape(tmp_path):
    m = _cfg(tmp_path, "model=bert-base").model
    assert (m.hidden_size, m.num_layers, m.ffn_dim, m.num_heads, m.vocab_size, m.activation) == \
        (768, 12, 3072, 12, 30522, "gelu")


def _rows_per_layer(tmp_path, *over):
    led = execute(_cfg(tmp_path, "model=tiny-opt", "system=bolt", "mode=cost", "prompt_len=8", "gen_tokens=1",
                       "seed=1", *over)).ledger
    on = led[(led.phase == "online") & (led.op == "attn.softmax")]
    return {int(k): int(v) for k, v in on.groupby("layer").bytes.sum().items()}, led


def test_word_elimination_halves_the_tokens_after_its_layer(tmp_path):
    base, _ = _rows_per_layer(tmp_path / "a", "system.params.we_layer=1")
    we, led = _rows_per_layer(tmp_path / "b", "system.word_elimination=true", "system.params.we_layer=1")
    assert we[0] == base[0]                        # before elimination: all 8 tokens
    assert all(we[k] < base[k] / 3 for k in base if k >= 1)   # 4 x 4 scores per head instead of 8 x 8
    sort = led[(led.phase == "online") & (led.op == "word_elim")].bytes.sum()
    steps = word_elimination_steps(ideal.Params(), 8, 64)      # tiny-opt: d = 64
    assert sort == ideal.steps_cost(steps).online_bytes > 0
    # bitonic sort of 8 keys: 4 * 3 * 4 / 2 = 24 compare-swaps
    assert steps[0].count == 24 and steps[0].p1 == math.ceil(ideal.MSB(37).p1)


@pytest.mark.parametrize("over, what", [(("mode=exact",), "mode=cost only"),
                                        (("mode=cost", "gen_tokens=2"), "off for generation")])
def test_word_elimination_refused_outside_a_priced_encoder_pass(tmp_path, over, what):
    with pytest.raises(CometError, match=what):
        validate_config(_cfg(tmp_path, "model=tiny-opt", "system=bolt", "system.word_elimination=true",
                             "prompt_len=4", "model.layers=1", *over))
