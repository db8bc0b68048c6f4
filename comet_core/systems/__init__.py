"""Systems: which protocol runs for each operator (conf/system/<name>.yaml)."""

from __future__ import annotations

import importlib

from comet_core.errors import ConfigError

# name -> (module, class); every entry has a conf/system/<name>.yaml
SYSTEMS = {
    "dense": ("comet_core.systems.dense", "DenseSystem"),
    "comet": ("comet_core.systems.comet", "CometSystem"),
    "mpcformer": ("comet_core.systems.mpcformer", "MPCFormerSystem"),
    "secformer": ("comet_core.systems.secformer", "SecFormerSystem"),
    "puma": ("comet_core.systems.puma", "PumaSystem"),
    "iron": ("comet_core.systems.iron", "IronSystem"),
    "bolt": ("comet_core.systems.bolt", "BoltSystem"),
}


def load_system(cfg):
    """The system object for a `conf/system/*.yaml` config."""
    name = cfg.name
    if name not in SYSTEMS:
        raise ConfigError(f"system '{name}' is not implemented yet; implemented: {', '.join(SYSTEMS)}")
    module, cls = SYSTEMS[name]
    return getattr(importlib.import_module(module), cls)(cfg)
