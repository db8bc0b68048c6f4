"""`comet train-predictor`: train and evaluate the activation-sparsity predictors of one model.

Steps: (1) calibrate label thresholds on train windows (CATS for SiLU FFNs, head-share quantile);
(2) stream activations of the train / validation / test plays to memory-mapped files; (3) per layer
and kind, train a low-rank predictor, early-stop and tune its threshold to ``target_recall`` on
validation; (4) report test metrics per layer (metrics.csv), the accuracy impact of dense / oracle /
predicted sparsity (accuracy.csv), a threshold sweep (sweep.csv), and the sparsity profile
(profile.json / profile.csv) that the Comet protocol and cost mode read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from comet_core.config.typed import to_yaml, train_predictor_params

log = logging.getLogger(__name__)


def _layer_costs(model_cfg, kind: str, seq_len: int) -> tuple[int, int]:
    """(params, MACs per token) of the layer part a predictor serves: the FFN, or the attention block
    (q/k/v/o projections + scores and context over a ``seq_len`` context)."""
    d, F = int(model_cfg.hidden_size), int(model_cfg.ffn_dim)
    H, KV = int(model_cfg.num_heads), int(model_cfg.num_kv_heads)
    hd = d // H
    if kind == "ffn":
        mats = 3 if model_cfg.family == "llama" else 2
        return mats * d * F, mats * d * F
    proj = 2 * d * H * hd + 2 * d * KV * hd
    return proj, proj + 2 * H * hd * seq_len


def _get(cfg, key: str, default):
    return getattr(cfg, key, default) if not hasattr(cfg, "get") else cfg.get(key, default)


def _model_and_predictor(cfg):
    """The typed model and predictor of ``cfg`` alone: the preflight runs before Hydra launches the job, when keys
    such as output_dir=${hydra:runtime.output_dir} cannot resolve yet, so it converts only what it reads."""
    from comet_core.config.schema import PredictorSchema
    from comet_core.config.typed import model_params, to_typed

    return model_params(_get(cfg, "model", None)), to_typed(PredictorSchema, _get(cfg, "predictor", None), "predictor")


def check_collection_memory(cfg) -> None:
    """Refuse (one line) a run whose activation collection would not fit in memory; force=true runs it."""
    from comet_core import memory
    from comet_core.errors import CometError
    from comet_core.models.zoo import n_layers

    if _get(cfg, "force", False):
        return
    M, P = _model_and_predictor(cfg)
    L = n_layers(M)
    need = memory.collection_bytes(M, L, int(P.forward_batch), int(P.seq_len))
    have = memory.available_bytes()
    if need > have:
        fit = max((n for n in range(1, L + 1)
                   if memory.collection_bytes(M, n, int(P.forward_batch), int(P.seq_len)) <= have), default=0)
        hint = f"model.layers={fit} fits, " if fit else ""
        raise CometError(f"collecting {M.name}'s activations needs about {memory.gib(need)} but {memory.gib(have)} is "
                         f"available; {hint}or lower predictor.forward_batch=, or force=true to try anyway")


def check_train_predictor(cfg, multirun: bool = False) -> None:
    """Preflight of `comet train-predictor` (cli/preflight.py): schema, then memory."""
    from comet_core.config.schema import check_train_config

    check_train_config(cfg)
    check_train_predictor_task(cfg)
    check_collection_memory(cfg)


def split_windows(tok, P) -> dict:
    """The train / validation / test windows (n, seq_len) of token ids, spread evenly over their plays."""
    from comet_core.models.corpus import spread_windows, token_ids

    sl = int(P.seq_len)
    chars = lambda n: n * sl * (1 if tok.name == "bytes" else 8)  # noqa: E731  enough text for n windows
    win = {}
    for split, n in (("train", P.train_windows), ("validation", P.val_windows), ("test", P.test_windows)):
        ids = token_ids(split, tok, max_chars=None if split != "train" else max(chars(int(n)) * 8, 2_000_000))
        win[split] = spread_windows(ids, int(n), sl)
    return win


def check_train_predictor_task(cfg) -> None:
    """The predictor's labels and block (one line each)."""
    from comet_core.errors import CometError
    from comet_core.predictor.collect import label_field

    M, P = _model_and_predictor(cfg)
    label_field(str(P.labels))
    b, F = int(P.block), int(M.ffn_dim)
    if b < 1 or F % b:
        raise CometError(f"predictor.block={b} must divide the {F} FFN neurons of {M.name}")


def train_predictor_task(cfg) -> None:
    """The command's job: ``cfg`` is its composed config (a TrainPredictorSchema, or what converts to one)."""
    import numpy as np
    import pandas as pd
    import torch

    from comet_core.errors import CometError
    from comet_core.models.cache import cache_path
    from comet_core.models.zoo import load_plain_model, n_layers
    from comet_core.predictor import apply as ap
    from comet_core.predictor.checkpoint import PredictorSet, model_signature, save_predictors
    from comet_core.predictor.collect import calibrate, collect, load_layer
    from comet_core.predictor.metrics import confusion, scores, threshold_for_recall
    from comet_core.predictor.profile import BLOCK_SIZES, HORIZONS, SCHEMA, SparsityProfile, layer_profile
    from comet_core.predictor.train import TrainSettings, _logits, fit, neuron_logits
    from comet_core.progress import progress

    t_start = time.monotonic()
    cfg = train_predictor_params(cfg)
    torch.set_num_threads(int(cfg.threads))
    P, M = cfg.predictor, cfg.model
    out = Path(cfg.output_dir)
    ckpt = cache_path(cfg.checkpoint)
    if not cfg.overwrite:
        taken = [str(p) for p in (out / "metrics.csv", ckpt) if p.exists()]
        if taken:
            raise CometError(f"{' and '.join(taken)} already exist(s) for model {M.name} preset {P.name}; "
                             "pass overwrite=true to replace, or choose output_dir= and checkpoint=")
    check_collection_memory(cfg)

    model, tok = load_plain_model(M, seed=int(cfg.seed))
    L = n_layers(M)
    relu = M.activation == "relu"
    sl = int(P.seq_len)
    if sl > int(M.max_positions):
        raise CometError(f"predictor.seq_len={sl} exceeds the {M.max_positions} positions of {M.name}")
    win = split_windows(tok, P)
    log.info("%s: %d layers; windows train/val/test = %d/%d/%d x %d tokens", M.name, L,
             len(win["train"]), len(win["validation"]), len(win["test"]), sl)

    # (1) label thresholds
    ffn_tau, head_tau = calibrate(model, win["train"][: max(4, len(win["train"]) // 4)],
                                  None if relu else float(P.ffn_target_sparsity), float(P.head_target_sparsity),
                                  batch_size=int(P.forward_batch), seed=int(cfg.seed), labels=str(P.labels))
    # (2) activations
    work = cache_path(cfg.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    data = {s: collect(model, win[s], ffn_tau, head_tau, work, s, int(P.forward_batch), labels=str(P.labels))
            for s in win}
    t_collect = time.monotonic() - t_start
    log.info("collected activations in %.1f s", t_collect)

    # (3) predictors per layer and kind
    rows, sweep_thr, sweep_rows, ffn_preds, head_preds, prof_layers = [], {}, [], [], [], []
    for l in progress(range(L), desc="train predictors", unit="layer"):
        masks = {}
        for kind, xf, yf, rank in (("ffn", "ffn_x", "ffn_y", P.rank), ("head", "attn_x", "head_y", P.head_rank)):
            b = int(P.block) if kind == "ffn" else 1
            s = TrainSettings(rank=int(rank), target_recall=float(P.target_recall), lr=float(P.lr),
                              batch_size=int(P.batch_size), max_epochs=int(P.max_epochs), patience=int(P.patience),
                              pos_weight_max=float(P.pos_weight_max), early_stop=str(P.early_stop), block=b)
            t0 = time.monotonic()
            pred, info = fit(load_layer(data["train"]["paths"][l], xf), load_layer(data["train"]["paths"][l], yf),
                             load_layer(data["validation"]["paths"][l], xf),
                             load_layer(data["validation"]["paths"][l], yf), s, seed=int(cfg.seed) + l)
            Xte = torch.from_numpy(np.array(load_layer(data["test"]["paths"][l], xf), dtype=np.float32))
            Yte = torch.from_numpy(np.array(load_layer(data["test"]["paths"][l], yf), dtype=bool))
            lte = neuron_logits(_logits(pred, Xte), b)            # per neuron (a block's logit on its neurons)
            sc = scores(confusion(lte > pred.threshold, Yte))
            val_sc = scores(confusion(info["val_logits"] > pred.threshold,
                                      torch.from_numpy(np.array(load_layer(data["validation"]["paths"][l], yf)))))
            lp, lm = _layer_costs(M, kind, sl)
            rows.append({"model": M.name, "layer": l, "kind": kind, **sc,
                         "val_recall": val_sc["recall"], "threshold": float(pred.threshold),
                         "label_threshold": (ffn_tau if kind == "ffn" else head_tau)[l], "rank": int(rank),
                         "units": pred.shape[2], "predictor_params": pred.num_params(), "layer_params": lp,
                         "params_ratio": pred.num_params() / lp, "predictor_macs": pred.macs(), "layer_macs": lm,
                         "flops_ratio": pred.macs() / lm, "epochs": info["epochs"],
                         "train_s": round(time.monotonic() - t0, 2), "train_tokens": data["train"]["tokens"],
                         "test_tokens": data["test"]["tokens"]})
            for r in P.sweep_recalls:
                d = threshold_for_recall(info["val_logits_pos"], float(r))
                sweep_thr.setdefault((kind, float(r)), []).append(d)
                sweep_rows.append({"kind": kind, "target_recall": float(r), "layer": l,
                                   **scores(confusion(lte > d, Yte))})
            log.info("layer %d %s: recall %.3f precision %.3f true/pred sparsity %.3f/%.3f (%d epochs, %.1f s)",
                     l, kind, sc["recall"], sc["precision"], sc["true_sparsity"], sc["predicted_sparsity"],
                     info["epochs"], time.monotonic() - t0)
            (ffn_preds if kind == "ffn" else head_preds).append(pred)
            masks[kind] = ((lte > pred.threshold).numpy(), Yte.numpy())
        prof_layers.append(layer_profile(l, masks["ffn"][0], masks["ffn"][1], masks["head"][0], masks["head"][1], sl))
    t_train = time.monotonic() - t_start - t_collect
    ps = PredictorSet(model=model_signature(M), ffn=ffn_preds, head=head_preds, ffn_tau=ffn_tau, head_tau=head_tau,
                      settings=dataclasses.asdict(P))
    save_predictors(ps, ckpt)

    # (4) accuracy impact on the test plays
    acc_rows = []
    variants = [("dense", "dense", "dense"), ("oracle-ffn", "oracle", "dense"), ("predicted-ffn", "predicted", "dense"),
                ("oracle-heads", "dense", "oracle"), ("predicted-heads", "dense", "predicted"),
                ("oracle-both", "oracle", "oracle"), ("predicted-both", "predicted", "predicted")]
    for name, fm, hm in variants:
        with ap.sparsity_applied(model, ps, ffn=fm, head=hm) as kept:
            r = ap.lm_accuracy(model, win["test"], int(P.forward_batch), desc=name)
        acc_rows.append({"model": M.name, "variant": name, "ffn": fm, "heads": hm, **r,
                         "ffn_density": ap.density(kept, "ffn"), "head_density": ap.density(kept, "head")})
    acc = pd.DataFrame(acc_rows)
    base = acc.loc[acc.variant == "dense"].iloc[0]
    acc["ppl_change_pct"] = 100 * (acc.ppl / base.ppl - 1)
    acc["acc_change_pts"] = 100 * (acc.next_token_acc - base.next_token_acc)

    sw = pd.DataFrame(sweep_rows).groupby(["kind", "target_recall"]).mean(numeric_only=True).drop(columns="layer")
    sw = sw.reset_index()
    ppl, nta = [], []
    for _, r in sw.iterrows():
        thr = sweep_thr[(r.kind, r.target_recall)]
        kw = {"ffn": "predicted", "ffn_thresholds": thr} if r.kind == "ffn" else {"head": "predicted", "head_thresholds": thr}
        with ap.sparsity_applied(model, ps, **kw):
            a = ap.lm_accuracy(model, win["test"], int(P.forward_batch), desc=f"sweep {r.kind} {r.target_recall}")
        ppl.append(a["ppl"])
        nta.append(a["next_token_acc"])
    sw["ppl"], sw["next_token_acc"] = ppl, nta
    sw.insert(0, "model", M.name)

    # outputs
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False, float_format="%.5g")
    acc.to_csv(out / "accuracy.csv", index=False, float_format="%.5g")
    sw.to_csv(out / "sweep.csv", index=False, float_format="%.5g")
    profile = SparsityProfile({
        "schema": SCHEMA, "model": model_signature(M), "source": "predicted",
        "target_recall": float(P.target_recall), "tokens": data["test"]["tokens"], "seq_len": sl,
        "block_sizes": [k for k in BLOCK_SIZES if k <= sl], "horizons": list(HORIZONS), "layers": prof_layers})
    profile.to_json(out / "profile.json")
    profile.to_frame().to_csv(out / "profile.csv", index=False, float_format="%.5g")
    met = pd.DataFrame(rows)
    summary = {
        "model": M.name, "predictor": P.name, "checkpoint": str(ckpt),
        "mean_recall": {k: float(g.recall.mean()) for k, g in met.groupby("kind")},
        "mean_precision": {k: float(g.precision.mean()) for k, g in met.groupby("kind")},
        "mean_true_sparsity": {k: float(g.true_sparsity.mean()) for k, g in met.groupby("kind")},
        "mean_predicted_sparsity": {k: float(g.predicted_sparsity.mean()) for k, g in met.groupby("kind")},
        "mean_flops_ratio": {k: float(g.flops_ratio.mean()) for k, g in met.groupby("kind")},
        "seconds": {"collect": round(t_collect, 1), "train": round(t_train, 1),
                    "total": round(time.monotonic() - t_start, 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.yaml").write_text(to_yaml(cfg))
    if not cfg.keep_activations:
        shutil.rmtree(work, ignore_errors=True)
    log.info("mean recall %s, predicted sparsity %s", summary["mean_recall"], summary["mean_predicted_sparsity"])
    print(acc[["variant", "ppl", "next_token_acc", "ffn_density", "head_density"]].to_string(index=False))
    print(f"checkpoint: {ckpt}")
    print(out.resolve())
