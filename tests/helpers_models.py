"""Shared helpers for the model-zoo and predictor tests (tiny models from config classes only)."""

from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"


def model_cfg(config_name: str, **over):
    cfg = OmegaConf.load(CONF / "model" / f"{config_name}.yaml")
    for k, v in over.items():
        cfg[k] = v
    return cfg


def tiny_llama(**over):
    base = dict(name="tiny-llama", family="llama", source="random", checkpoint=None, tokenizer="bytes",
                vocab_size=256, hidden_size=32, num_layers=3, ffn_dim=64, num_heads=4, num_kv_heads=2,
                max_positions=64, activation="silu", rope_theta=10000.0, rms_norm_eps=1e-5, layers=None)
    base.update(over)
    return OmegaConf.create(base)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids oversubscription on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
