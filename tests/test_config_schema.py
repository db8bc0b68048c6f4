"""Typed configs (comet_core/config/schema.py) and the preflight of every job (cli/preflight.py): bad values are refused
before any work, in one line; every documented key, group and sweep keeps working."""

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli.main import check_run
from cli.preflight import jobs, one_line, preflight
from comet_core.config.schema import register
from comet_core.errors import CometError, ConfigError

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
register()


def pre(*args, conf=CONF, config="config", check=check_run):
    preflight(config, list(args), conf, check)


@pytest.mark.parametrize("args, needle", [
    (["overwrite=no"], "overwrite must be true or false, got 'no'"),
    (["overwrite=maybe"], "overwrite must be true or false"),
    (["save_ledger=maybe"], "save_ledger must be true or false"),
    (["model.layers=1.5"], "model.layers"),
    (["seed=-1"], "seed must be null"),
    (["seed=99999999999999999999999"], "seed must be null"),
    (["seed=1.5"], "seed"),
    (["network.bandwidth_bps=inf"], "network.bandwidth_bps must be a finite number"),
    (["network.latency_s=nan"], "network.latency_s must be a finite number"),
    (["gen_token=2"], "gen_token"),
    (["+gen_token=2"], "did you mean gen_tokens="),
    (["+model.layerz=2"], "unknown config key 'model.layerz'"),
    (["+system.threshold=0.5"], "unknown config key 'system.threshold' (forced in with +)"),
    (["prompt=it's"], "use prompt_file="),
    (["prompt='a ${y}'"], "prompt_file="),
    (["engine.frac_bits=x"], "engine.frac_bits"),
    (["mode=fast"], "mode must be exact or cost"),
    (["output_dir=/proc/comet-test"], "cannot be written"),
    (["prompt_len=128", "gen_tokens=2", "model=tiny-opt"], "exceeds the 128 positions"),
])
def test_bad_values_are_refused_in_one_line(tmp_path, args, needle):
    with pytest.raises(CometError) as e:
        pre(f"output_dir={tmp_path / 'x'}", *args)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [
    [], ["seed=null"], ["seed=9223372036854775807"], ["overwrite=true"], ["save_ledger=false"],
    ["model=opt-6.7b", "mode=cost"], ["model=tiny-llama", "model.layers=1"], ["network=wan-100m"],
    ["network.bandwidth_bps=1e8", "network.latency_s=0.01"], ["engine.truncation=local"], ["device=cpu"],
    ["prompt_len=127", "gen_tokens=2", "model=tiny-opt"],  # 128 positions: fits
    ["engine.reuse_weight_masks=true"], ["prompt=it is the east"],
    ["prompt=\"'Tis but thy name, a=b, $5\""],  # the README's quoting example, as the shell passes it
])
def test_documented_keys_are_accepted(tmp_path, args):
    pre(f"output_dir={tmp_path / 'x'}", *args)


def test_every_sweep_value_is_checked_before_the_first_job(tmp_path):
    with pytest.raises(ConfigError, match=r"job 1 \(.*bandwidth_bps=-1.*\): network.bandwidth_bps must be > 0"):
        pre("-m", "mode=cost", "network.bandwidth_bps=1e9,-1,1e8", f"hydra.sweep.dir={tmp_path}/s")
    pre("-m", "mode=cost", "network.bandwidth_bps=1e9,1e8", "network=lan,wan-100m")


def test_sweep_jobs_are_the_cartesian_product():
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        js = jobs("config", ["mode=cost", "network=lan,wan-100m", "gen_tokens=1,2"], multirun=True)
    assert len(js) == 4 and all("mode=cost" in j for j in js)


def test_system_keys_are_declared_per_family(tmp_path):
    """A system's keys are those of its params class (comet_core/config/typed.py): a stray key in a
    conf/system/<name>.yaml fails before work, listing the valid keys; a missing name is refused."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "system" / "comet.yaml").write_text(
        "name: comet\nlinear: beaver\nsparsity: predicted\nthresholds: [0.5, 0.6]\n")
    with pytest.raises(ConfigError, match="system 'comet': unknown key thresholds; valid: name, ") as e:
        pre("system=comet", conf=str(conf), check=lambda cfg, m: check_run(cfg, m))
    assert "\n" not in str(e.value)
    (conf / "system" / "comet.yaml").write_text("name: comet\nlinear: beaver\nheads: false\n")
    pre("system=comet", conf=str(conf), check=lambda cfg, m: check_run(cfg, m))   # declared keys, defaults for the rest
    (conf / "system" / "bad.yaml").write_text("linear: beaver\n")
    with pytest.raises(ConfigError, match="system.name"):
        pre("system=bad", conf=str(conf))


def test_closed_groups_refuse_stray_yaml_keys(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "model" / "typo.yaml").write_text((conf / "model" / "tiny-opt.yaml").read_text() + "hiden_size: 3\n")
    with pytest.raises(ConfigError, match="hiden_size"):
        pre("model=typo", conf=str(conf))


def test_train_configs_are_typed(tmp_path):
    from comet_core.config.schema import check_train_config
    from comet_core.predictor.train_task import check_train_predictor

    with pytest.raises(ConfigError, match="predictor.rank"):
        pre("predictor.rank=1.5", config="train_predictor", check=check_train_predictor)
    with pytest.raises(ConfigError, match="keep_activations must be true or false"):
        pre("keep_activations=yes", config="train_predictor", check=check_train_predictor)
    with pytest.raises(ConfigError, match="seed must be null"):
        pre("seed=-2", config="train_lm", check=lambda c, m: check_train_config(c))
    pre("lm=tiny", config="train_lm", check=lambda c, m: check_train_config(c))


def test_predictor_results_are_keyed_by_preset():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        default = compose("train_predictor", overrides=["model=smollm2-135m"])
        tiny = compose("train_predictor", overrides=["model=smollm2-135m", "predictor=tiny"])
    assert default.output_dir == "results/predictor/smollm2-135m"  # DESIGN.md section 8
    assert tiny.output_dir == "results/predictor/smollm2-135m/tiny"
    assert default.checkpoint != tiny.checkpoint


def test_one_line_wraps_chained_multiline_errors():
    try:
        try:
            OmegaConf.structured(type("X", (), {}))  # any error with a cause chain
        except Exception as inner:
            raise RuntimeError("Error merging override a=b\nmore\n    full_key: a") from inner
    except RuntimeError as e:
        assert "\n" not in one_line(e) and "Error merging override a=b" in one_line(e)


def test_memory_checks_refuse_what_does_not_fit(monkeypatch, tmp_path):
    from comet_core import memory
    from comet_core.predictor.train_task import check_train_predictor

    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2 ** 30)
    with pytest.raises(CometError, match=r"model.layers=\d+ fits.*force=true"):
        pre("model=opt-6.7b", "predictor=tiny", config="train_predictor", check=check_train_predictor)
    pre("model=opt-6.7b", "predictor=tiny", "force=true", config="train_predictor", check=check_train_predictor)
    with pytest.raises(CometError, match=r"needs about .* GiB .* use mode=cost.*force=true"):
        pre(f"output_dir={tmp_path / 'x'}", "model=opt-1.3b")
    pre(f"output_dir={tmp_path / 'x'}", "model=opt-1.3b", "force=true")
    pre(f"output_dir={tmp_path / 'x'}", "model=opt-1.3b", "mode=cost")
