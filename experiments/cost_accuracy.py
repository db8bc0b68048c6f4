"""`comet predictor-tradeoff`: what a cheaper FFN predictor costs in accuracy, one table per model.

Steps: (1) the windows and label thresholds of `comet train-predictor` (same seeds, same test plays);
(2) one activation collection holding the labels of every kind in `grid.labels`; (3) per grid point
(labels, rank, block) an FFN predictor per layer, trained and threshold-tuned to `predictor.target_recall`
on validation (comet_core/predictor/train.py); (4) on the test windows: recall, precision and predicted
sparsity per neuron (mean over layers), and the perplexity and next-token accuracy of the model with the
predicted FFN masks (heads dense), beside the dense model's on the same windows and the oracle labels'.

Bits (`grid.bits`, system.predictor_bits): each trained point is also evaluated with its threshold test on
Z_2^bits (mpc/smallring.py's local truncation then sign), drawn by `smallring.plain_ge_zero` as the protocol
decides it (a unit up to 2^(range + 1 - bits) below the threshold may be taken active), for the recall,
precision and sparsity on the test activations and for the masks of the perplexity run; bits 64 is the
float test. The same predictor for every width: the rows differ only by the test.

Each point's row is merged into `grid.table` as soon as it is measured (`results/predictor/<model>/cost_accuracy.csv`) keyed by
(labels, rank, bits, block): rows of other keys are kept; a key already there is replaced only with
overwrite=true.

    comet predictor-tradeoff model=shakespeare-opt grid.ranks=[8,16,32,64] grid.blocks=[1,4,16,64]
    comet predictor-tradeoff model=smollm2-135m predictor=smollm2 grid.labels=[cats,product]
    comet predictor-tradeoff model=shakespeare-opt grid.ranks=[64] grid.blocks=[1] grid.bits=[64,16,12,8]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)

KEY = ("labels", "rank", "bits", "block")
COLUMNS = (*KEY, "recall", "predicted_sparsity", "perplexity", "perplexity_dense", "next_token_accuracy")


def grid_points(cfg) -> list[tuple[str, int, int]]:
    """(labels, rank, block) points: one axis at a time around the predictor's own point (grid.cross=false,
    the predictor's point first), or every combination."""
    P, G = cfg.predictor, cfg.grid
    labels = [str(x) for x in (G.labels or [P.labels])]
    ranks = [int(x) for x in (G.ranks or [P.rank])]
    blocks = [int(x) for x in (G.blocks or [P.block])]
    if G.cross:
        return [(lab, r, b) for lab in labels for r in ranks for b in blocks]
    base = (str(P.labels) if str(P.labels) in labels else labels[0], int(P.rank) if int(P.rank) in ranks else ranks[0],
            int(P.block) if int(P.block) in blocks else blocks[0])
    pts = [base] + [(lab, base[1], base[2]) for lab in labels] + [(base[0], r, base[2]) for r in ranks] \
        + [(base[0], base[1], b) for b in blocks]
    return list(dict.fromkeys(pts))


def grid_bits(cfg) -> list[int]:
    """The threshold-test widths evaluated on every trained point (64 first: the float test)."""
    bits = [int(x) for x in (cfg.grid.get("bits") or [64])]
    return sorted(dict.fromkeys(bits), key=lambda b: -b)


def check_tradeoff(cfg, multirun: bool = False) -> None:
    """Preflight: schema, the grid's values, memory (one line each, before the model loads)."""
    from comet_core.config.schema import check_train_config
    from comet_core.errors import CometError
    from comet_core.predictor.collect import label_field
    from comet_core.predictor.train_task import check_collection_memory

    check_train_config(cfg)
    F, d = int(cfg.model.ffn_dim), int(cfg.model.hidden_size)
    for lab, r, b in grid_points(cfg):
        label_field(lab)
        if not 1 <= r <= d:
            raise CometError(f"grid rank {r} must be in 1..{d} (the hidden size of {cfg.model.name})")
        if b < 1 or F % b:
            raise CometError(f"grid block {b} must divide the {F} FFN neurons of {cfg.model.name}")
    from comet_core.mpc.smallring import MIN_BITS

    for bits in grid_bits(cfg):
        if not MIN_BITS <= bits <= 64:
            raise CometError(f"grid bits {bits} must be in {MIN_BITS}..64 (system.predictor_bits: 64, 16, 12, 8)")
    table = Path(str(cfg.grid.table))
    if table.is_file() and not cfg.overwrite:   # refuse a clash before any work, not after training
        import pandas as pd

        new = pd.DataFrame([dict(labels=lab, rank=r, bits=bits, block=b) for lab, r, b in grid_points(cfg)
                            for bits in grid_bits(cfg)])
        merge_rows(pd.read_csv(table), new, False)
    check_collection_memory(cfg)


def merge_rows(old, new, overwrite: bool):
    """`new` rows over `old` by KEY: other keys kept; an existing key replaced only with `overwrite`."""
    import pandas as pd

    from comet_core.errors import CometError

    if old is None or old.empty:
        return new.reset_index(drop=True)
    key = lambda df: list(zip(*(df[k].astype(str) for k in KEY)))  # noqa: E731
    clash = sorted(set(key(old)) & set(key(new)))
    if clash and not overwrite:
        raise CometError(f"rows {', '.join('/'.join(c) for c in clash[:4])} (labels/rank/bits/block) already exist; "
                         "pass overwrite=true to replace them")
    keep = old[[k not in set(key(new)) for k in key(old)]]
    return pd.concat([keep, new], ignore_index=True)


def write_table(path: Path, rows, overwrite: bool) -> Path:
    """Merge `rows` (a DataFrame with COLUMNS, any extra columns after them) into `path`, atomically."""
    import pandas as pd

    path = Path(path)
    old = pd.read_csv(path) if path.is_file() else None
    df = merge_rows(old, rows, overwrite)
    df = df.sort_values(list(KEY), kind="stable").reset_index(drop=True)
    df = df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)
    return path


def tradeoff_task(cfg: DictConfig) -> None:
    import numpy as np
    import pandas as pd
    import torch
    from omegaconf import OmegaConf

    from comet_core.models.cache import cache_path
    from comet_core.mpc import smallring
    from comet_core.mpc.engine import EngineConfig
    from comet_core.models.zoo import load_plain_model, n_layers
    from comet_core.predictor import apply as ap
    from comet_core.predictor.checkpoint import PredictorSet, model_signature, save_predictors
    from comet_core.predictor.collect import calibrate, collect, load_layer
    from comet_core.predictor.metrics import confusion, scores
    from comet_core.predictor.train import TrainSettings, _logits, fit
    from comet_core.results.tables import git_revision
    from comet_core.predictor.train_task import split_windows

    check_tradeoff(cfg)
    t_start = time.monotonic()
    torch.set_num_threads(int(cfg.threads))
    P, M, G = cfg.predictor, cfg.model, cfg.grid
    points = grid_points(cfg)
    model, tok = load_plain_model(M, seed=int(cfg.seed))
    L = n_layers(M)
    relu = M.activation == "relu"
    win = split_windows(tok, P)
    bs, calib = int(P.forward_batch), win["train"][: max(4, len(win["train"]) // 4)]
    kinds = list(dict.fromkeys(p[0] for p in points))
    taus = {}
    for lab in kinds:   # (1) one calibration per label kind (ReLU: tau 0 for both)
        taus[lab], head_tau = calibrate(model, calib, None if relu else float(P.ffn_target_sparsity),
                                        float(P.head_target_sparsity), batch_size=bs, seed=int(cfg.seed), labels=lab)
    work = cache_path(cfg.work_dir)
    more = {lab: taus[lab] for lab in kinds}
    data = {s: collect(model, win[s], taus[kinds[0]], head_tau, work, s, bs, labels=kinds[0], more_labels=more)
            for s in win}    # (2)
    log.info("collected activations in %.1f s; %d points", time.monotonic() - t_start, len(points))
    layer = lambda split, l, f: load_layer(data[split]["paths"][l], f)  # noqa: E731
    settings = lambda r, b: TrainSettings(  # noqa: E731
        rank=r, target_recall=float(P.target_recall), lr=float(P.lr), batch_size=int(P.batch_size),
        max_epochs=int(P.max_epochs), patience=int(P.patience), pos_weight_max=float(P.pos_weight_max),
        early_stop=str(P.early_stop), block=b)

    def acc(ps, ffn, test=None):
        with ap.sparsity_applied(model, ps, ffn=ffn, ffn_test=test) as kept:
            r = ap.lm_accuracy(model, win["test"], bs, desc=f"{ps.settings.get('labels')} {ffn}")
        return r, ap.density(kept, "ffn")

    heads = []
    if G.checkpoints:   # head predictors do not depend on the FFN labels: trained once
        for l in range(L):
            hp, _ = fit(layer("train", l, "attn_x"), layer("train", l, "head_y"), layer("validation", l, "attn_x"),
                        layer("validation", l, "head_y"), settings(int(P.head_rank), 1), seed=int(cfg.seed) + l)
            heads.append(hp)
    dense, _ = acc(PredictorSet(model_signature(M), [], [], [], [], {"labels": kinds[0]}), "dense")
    oracle = {lab: acc(PredictorSet(model_signature(M), [], [], taus[lab], [], {"labels": lab}), "oracle")
              for lab in kinds}
    d, F = int(M.hidden_size), int(M.ffn_dim)
    ffn_macs = (3 if M.family == "llama" else 2) * d * F
    frac, window = EngineConfig().frac_bits, int(G.get("predictor_range", 7))
    rows = []
    for lab, r, b in points:   # (3) and (4)
        t0 = time.monotonic()
        preds, epochs = [], 0
        yf = f"ffn_y_{lab}"
        for l in range(L):
            pred, info = fit(layer("train", l, "ffn_x"), layer("train", l, yf), layer("validation", l, "ffn_x"),
                             layer("validation", l, yf), settings(r, b), seed=int(cfg.seed) + l)
            preds.append(pred)
            epochs += info["epochs"]
        train_s = time.monotonic() - t0
        ps = PredictorSet(model_signature(M), preds, heads, taus[lab], head_tau if heads else [],
                          {**OmegaConf.to_container(P, resolve=True), "labels": lab, "rank": r, "block": b})
        if G.checkpoints and b == 1:
            path = cache_path(str(cfg.checkpoint).removesuffix(".pt") + f"-{lab}-r{r}.pt")
            save_predictors(ps, path)
            log.info("checkpoint %s", path)
        for bits in grid_bits(cfg):
            gen = torch.Generator().manual_seed(int(cfg.seed))   # the shares' low bits (smallring.plain_ge_zero)
            test = None if bits >= 64 else (
                lambda z, thr, bits=bits, gen=gen: smallring.plain_ge_zero(z - thr, bits, frac, window, gen))
            per_layer, flips, outside, n = [], 0, 0, 0
            for l, pred in enumerate(preds):
                Xte = torch.from_numpy(np.array(layer("test", l, "ffn_x"), dtype=np.float32))
                Yte = torch.from_numpy(np.array(layer("test", l, yf), dtype=bool))
                z = _logits(pred, Xte)
                full = z > pred.threshold
                m = full if test is None else test(z, pred.threshold)
                flips += int((m != full).sum())
                outside += int(smallring.outside_window(z - pred.threshold, bits, frac, window).sum())
                n += m.numel()
                per_layer.append(scores(confusion(ap.expand_blocks(m, F), Yte)))
            res, density = acc(ps, "predicted", test)
            mean = lambda k: float(np.mean([s[k] for s in per_layer]))  # noqa: E731
            rows.append(dict(labels=lab, rank=r, bits=bits, block=b, recall=mean("recall"),
                             predicted_sparsity=mean("predicted_sparsity"), perplexity=res["ppl"],
                             perplexity_dense=dense["ppl"], next_token_accuracy=res["next_token_acc"],
                             precision=mean("precision"), true_sparsity=mean("true_sparsity"),
                             eval_ffn_density=density, next_token_accuracy_dense=dense["next_token_acc"],
                             perplexity_oracle=oracle[lab][0]["ppl"],
                             next_token_accuracy_oracle=oracle[lab][0]["next_token_acc"],
                             predictor_macs_ratio=(d * r + r * (F // b)) / ffn_macs, target_recall=float(P.target_recall),
                             model=M.name, layers=L, test_windows=len(win["test"]), tokens=res["tokens"],
                             train_tokens=data["train"]["tokens"], epochs=epochs, train_s=round(train_s, 1),
                             flips_vs_float=flips / n, outside_window=outside / n, predictor_range=window,
                             frac_bits=frac, git_rev=git_revision()))
            log.info("%s rank %d block %d bits %d: recall %.3f predicted sparsity %.3f ppl %.4g (dense %.4g; %.0f s)",
                     lab, r, b, bits, rows[-1]["recall"], rows[-1]["predicted_sparsity"], res["ppl"], dense["ppl"], train_s)
            out = write_table(Path(str(G.table)), pd.DataFrame(rows[-1:]), bool(cfg.overwrite))   # each point kept at once
    if not cfg.keep_activations:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(pd.DataFrame(rows)[list(COLUMNS)].to_string(index=False))
    print(f"{out.resolve()} ({time.monotonic() - t_start:.0f} s)")
