"""Systems: which protocol runs for each operator (conf/system/<name>.yaml)."""

from __future__ import annotations

from comet_core.errors import ConfigError


def load_system(cfg):
    """The system object for a `conf/system/*.yaml` config."""
    name = cfg.name
    if name == "dense":
        from comet_core.systems.dense import DenseSystem

        return DenseSystem(cfg)
    if name == "comet":
        from comet_core.systems.comet import CometSystem

        return CometSystem(cfg)
    raise ConfigError(f"system '{name}' is not implemented yet; implemented: dense, comet")
