"""Typed config objects cross into comet_core, not the raw DictConfig (issue 28 item 2).

comet_core/config/typed.py turns each group into its dataclass once, at the boundary; these tests pin
that no omegaconf import reaches the core below it, that an unknown key fails with the valid ones
listed, and that the dataclass defaults equal the YAML's.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from comet_core.config.typed import CometParams, DenseParams, system_params, to_typed
from comet_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# the boundary: it composes, ships and hashes the Hydra config (comet_core/roles/) or runs a training
# command's composed config (the two train tasks); everything else in comet_core takes typed objects
BOUNDARY = ("comet_core/config/", "comet_core/roles/")


def omegaconf_imports(root: Path, skip=BOUNDARY) -> list[str]:
    """`path:line` of every omegaconf import (also inside functions) below ``root``, outside ``skip``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if any(rel.startswith(s) for s in skip):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "omegaconf" for n in names):
                found.append(f"{rel}:{node.lineno}")
    return found


def test_core_imports_no_omegaconf():
    bad = omegaconf_imports(ROOT / "comet_core")
    assert not bad, "omegaconf below the boundary (take a comet_core/config/typed.py object):\n" + "\n".join(bad)


def test_omegaconf_finder_catches_an_import(tmp_path):   # positive control
    core = tmp_path / "comet_core"
    (core / "sparse").mkdir(parents=True)
    (core / "sparse" / "x.py").write_text("def f():\n    from omegaconf import DictConfig\n")
    (core / "config").mkdir()
    (core / "config" / "y.py").write_text("import omegaconf\n")
    assert omegaconf_imports(core) == ["comet_core/sparse/x.py:2"]


def test_an_unknown_system_key_fails_listing_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        system_params({"name": "comet", "kv_refil": "naive"})
    msg = str(e.value)
    assert "\n" not in msg and "kv_refil" in msg and "valid: " in msg and "kv_refill" in msg
    with pytest.raises(ConfigError, match="unknown key heads"):
        system_params({"name": "puma", "heads": True})   # a Comet key on a dense-family system


def test_every_system_yaml_converts_and_comet_defaults_match_its_yaml():
    for path in sorted((ROOT / "conf" / "system").glob("*.yaml")):
        p = system_params(OmegaConf.load(path))
        assert p.name == path.stem and isinstance(p, CometParams if path.stem == "comet" else DenseParams)
    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "system" / "comet.yaml"))
    default = CometParams()
    differ = {k: (v, getattr(default, k)) for k, v in yaml.items() if not isinstance(v, dict) and getattr(default, k) != v}
    assert not differ, f"CometParams defaults differ from conf/system/comet.yaml: {differ}"
    assert system_params(OmegaConf.load(ROOT / "conf" / "system" / "comet.yaml")).derived.recall == yaml["derived"]["recall"]


def test_model_schema_missing_key_is_a_one_line_error():
    from comet_core.config.schema import ModelSchema

    with pytest.raises(ConfigError, match="model: missing key") as e:
        to_typed(ModelSchema, {"name": "x"}, "model")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, convert, nested", [
    ("train_predictor", "train_predictor_params", ("model", "predictor", "grid")),
    ("train_lm", "train_lm_params", ("lm",)),
])
def test_training_configs_cross_typed(name, convert, nested):
    """The training commands' composed configs become their schema's dataclasses, nested groups included,
    and an unknown key is one line naming the valid ones (the tasks take nothing else)."""
    import dataclasses

    import yaml
    from hydra import compose, initialize_config_dir

    from comet_core.config import typed
    from comet_core.config.schema import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=["output_dir=/tmp/x", "checkpoint=/tmp/x.pt"]
                      if name == "train_predictor" else ["output_dir=/tmp/x", "checkpoint=/tmp/x"])
    obj = getattr(typed, convert)(cfg)
    for key in nested:
        assert dataclasses.is_dataclass(getattr(obj, key)), key
    assert yaml.safe_load(typed.to_yaml(obj)) == dataclasses.asdict(obj)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain[nested[0]]["bogus"] = 1
    with pytest.raises(ConfigError, match=f"{name}.{nested[0]}: unknown key bogus; valid: ") as e:
        getattr(typed, convert)(plain)
    assert "\n" not in str(e.value)
