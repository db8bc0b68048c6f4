"""Activation collection: per layer, predictor inputs and ground-truth activity labels, streamed to disk.

Windows of token ids run through the model in batches; hooks (``sites.py``) capture each layer's FFN and
attention inputs and the activity scores; labels are thresholded right away and every batch is written
into per-layer ``.npy`` memory maps (inputs as float16, labels as bool), so memory stays at one batch.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from comet_core.predictor.sites import attn_hidden, ffn_dim, head_shares, layer_sites
from comet_core.progress import progress

log = logging.getLogger(__name__)


@contextmanager
def recording(model):
    """Yields a list (one dict per layer) refilled on every forward with
    ``ffn_x (B,T,d)``, ``ffn_score (B,T,F)`` (|act(pre)|, CATS), ``ffn_product (B,T,F)`` (|W_out's input|:
    |act(gate) * up| for SwiGLU, |act(pre)| for OPT), ``attn_x (B,T,d)``, ``head_share (B,T,H)``."""
    sites = layer_sites(model)
    store = [dict() for _ in sites]
    hooks = []
    for s, rec in zip(sites, store):
        hooks.append(s.ffn_in.register_forward_pre_hook(lambda m, a, rec=rec: rec.__setitem__("ffn_x", a[0].detach())))
        hooks.append(s.ffn_pre.register_forward_hook(
            lambda m, a, o, rec=rec, act=s.ffn_act: rec.__setitem__("ffn_score", act(o.detach()).abs())))
        hooks.append(s.ffn_down.register_forward_pre_hook(
            lambda m, a, rec=rec: rec.__setitem__("ffn_product", a[0].detach().abs())))
        hooks.append(s.attn.register_forward_pre_hook(
            lambda m, a, k, rec=rec: rec.__setitem__("attn_x", attn_hidden(a, k).detach()), with_kwargs=True))
        hooks.append(s.attn_out.register_forward_pre_hook(
            lambda m, a, rec=rec, s=s: rec.__setitem__("head_share", head_shares(m, a[0].detach(), s.num_heads))))
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


def _batches(windows, batch_size: int, desc: str):
    for i in progress(range(0, len(windows), batch_size), desc=desc, unit="batch"):
        yield torch.as_tensor(np.asarray(windows[i: i + batch_size]))


LABELS = {"cats": "ffn_score", "product": "ffn_product"}   # predictor.labels -> the recorded neuron score


def label_field(labels: str) -> str:
    """The recorded score a label kind thresholds: cats |act(gate)| (CATS, Lee et al. 2024) or product
    |act(gate) * up| (the value W_out actually multiplies; the same as cats on ReLU models)."""
    if labels not in LABELS:
        from comet_core.errors import CometError

        raise CometError(f"predictor.labels must be one of {', '.join(LABELS)}, got {labels!r}")
    return LABELS[labels]


def calibrate(model, windows, ffn_target_sparsity: float | None, head_target_sparsity: float,
              batch_size: int = 8, max_values: int = 2_000_000, seed: int = 0, labels: str = "cats"):
    """Per-layer label thresholds: ``(ffn_tau, head_tau)`` lists.

    ReLU models (``ffn_target_sparsity=None``): ``ffn_tau = 0`` (active iff output > 0).
    Otherwise ``ffn_tau_l`` is the ``ffn_target_sparsity`` quantile over the windows of the neuron score
    of ``labels`` (``cats``: |act(pre)|; ``product``: |act(gate) * up|). ``head_tau_l`` is the
    ``head_target_sparsity`` quantile of the head shares.
    """
    field = label_field(labels)
    gen = torch.Generator().manual_seed(seed)
    ffn_vals, head_vals = None, None
    with torch.no_grad(), recording(model) as store:
        for x in _batches(windows, batch_size, "calibrate"):
            model(input_ids=x)
            if ffn_vals is None:
                ffn_vals = [[] for _ in store]
                head_vals = [[] for _ in store]
            for l, rec in enumerate(store):
                if ffn_target_sparsity is not None:
                    v = rec[field].reshape(-1)
                    keep = max(1, max_values // max(1, (len(windows) // batch_size)))
                    ffn_vals[l].append(v[torch.randint(len(v), (min(keep, len(v)),), generator=gen)])
                head_vals[l].append(rec["head_share"].reshape(-1))
    ffn_tau, head_tau = [], []
    for l in range(len(head_vals)):
        if ffn_target_sparsity is None:
            ffn_tau.append(0.0)
        else:
            ffn_tau.append(float(torch.quantile(torch.cat(ffn_vals[l]).float(), float(ffn_target_sparsity))))
        hv = torch.cat(head_vals[l]).float()
        if len(hv) > 16_000_000:
            hv = hv[torch.randint(len(hv), (16_000_000,), generator=gen)]
        head_tau.append(float(torch.quantile(hv, float(head_target_sparsity))))
    return ffn_tau, head_tau


FIELDS = ("ffn_x", "ffn_y", "attn_x", "head_y")


def collect(model, windows, ffn_tau, head_tau, out_dir: Path, split: str, batch_size: int = 8,
            labels: str = "cats", more_labels: dict | None = None) -> dict:
    """Write ``<split>_l<layer>_<field>.npy`` memmaps for every layer; return their paths per layer.
    ``ffn_y`` holds the ``labels`` kind thresholded at ``ffn_tau``; each ``{kind: taus}`` of ``more_labels``
    adds a field ``ffn_y_<kind>`` (one collection serves several label kinds)."""
    more = {k: (label_field(k), t) for k, t in (more_labels or {}).items()}
    main_field = label_field(labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tok = int(np.prod(np.asarray(windows).shape))
    sites = layer_sites(model)
    d, F = model.config.hidden_size, ffn_dim(model)
    shapes = {"ffn_x": ((n_tok, d), np.float16), "ffn_y": ((n_tok, F), np.bool_),
              "attn_x": ((n_tok, d), np.float16), "head_y": ((n_tok, sites[0].num_heads), np.bool_)}
    fields = FIELDS + tuple(f"ffn_y_{k}" for k in more)
    shapes.update({f"ffn_y_{k}": shapes["ffn_y"] for k in more})
    paths = [{f: out_dir / f"{split}_l{l}_{f}.npy" for f in fields} for l in range(len(sites))]
    mm = [{f: np.lib.format.open_memmap(p[f], mode="w+", dtype=shapes[f][1], shape=shapes[f][0]) for f in fields}
          for p in paths]
    pos = 0
    with torch.no_grad(), recording(model) as store:
        for x in _batches(windows, batch_size, f"collect {split}"):
            model(input_ids=x)
            n = x.numel()
            for l, rec in enumerate(store):
                mm[l]["ffn_x"][pos:pos + n] = rec["ffn_x"].reshape(n, -1).to(torch.float16).numpy()
                mm[l]["ffn_y"][pos:pos + n] = (rec[main_field].reshape(n, -1) > ffn_tau[l]).numpy()
                for k, (f, taus) in more.items():
                    mm[l][f"ffn_y_{k}"][pos:pos + n] = (rec[f].reshape(n, -1) > taus[l]).numpy()
                mm[l]["attn_x"][pos:pos + n] = rec["attn_x"].reshape(n, -1).to(torch.float16).numpy()
                mm[l]["head_y"][pos:pos + n] = (rec["head_share"].reshape(n, -1) > head_tau[l]).numpy()
            pos += n
    for m in mm:
        for a in m.values():
            a.flush()
    del mm
    return {"paths": paths, "tokens": n_tok, "seq_len": int(np.asarray(windows).shape[1])}


def load_layer(paths: dict, field: str, mmap: bool = True):
    return np.load(paths[field], mmap_mode="r" if mmap else None)
