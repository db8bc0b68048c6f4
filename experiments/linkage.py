"""The linkage experiment of system.permutation=deployment (comet_core/sparse/permutation_timing.py).

Question: from the revealed FFN masks alone (what the servers see), can a server tell whether two
requests come from the same play, or share a prompt prefix? Under `online` each request's masks are in
fresh secret coordinates (a new permutation per request and layer); under `deployment` every request's
masks are in the same secret coordinates.

Method (shakespeare-opt with its trained FFN predictors, plaintext):
  1. Requests: `same_play`: EXCERPTS prompts of PROMPT bytes from each of PLAYS plays (evenly spaced
     excerpts of the test, validation and first train works); `shared_prefix`: PREFIXES prefixes of
     PREFIX bytes, each followed by CONTINUATIONS different continuations (PROMPT bytes in all), taken from
     evenly spaced places in the plays; `identical_control` (the positive control): the same with the whole
     prompt shared, so linked requests reveal identical masks (deployment must reach AUC 1).
  2. Each request's masks per (layer, step), prefill union and GEN_TOKENS - 1 decode steps, from the
     model's own float predictors (sparse/reference.py predicted_generate): the masks a private run
     reveals up to threshold flips (tests/test_comet.py bounds those to units within 0.05 of the
     threshold).
  3. The server's view: each mask relabelled by a secret uniform permutation, drawn per request and layer
     (online) or once per layer for all requests (deployment).
  4. Three attack scores per pair of requests: `overlap` (the mean Jaccard index of the two views over
     layers and steps), `rare_overlap` (their cosine with rare units weighted up: pair_scores) and
     `counts` (minus the mean |difference| of the active counts, which both regimes reveal). AUC of each score for "same play" (or "shared prefix") against the other pairs, by the
     Mann-Whitney statistic (0.5: no better than chance).
Run: python -m experiments.linkage --out results/design_space/linkage.csv (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PLAYS, EXCERPTS, PROMPT, GEN_TOKENS = 6, 6, 48, 4
PREFIXES, CONTINUATIONS, PREFIX = 8, 4, 32
SEED = 0


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive pair > score of a negative pair) + ties / 2 (Mann-Whitney U / (n_pos n_neg))."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def server_views(masks: list[dict], regime: str, seed: int = SEED) -> list[dict]:
    """Each request's {(layer, step): mask} as a server sees it: relabelled by a secret permutation per
    layer, fresh per request (online) or shared by all requests (deployment)."""
    g = torch.Generator().manual_seed(seed)
    layers = sorted({k[0] for m in masks for k in m})
    F = next(iter(masks[0].values())).numel()
    shared = {l: torch.randperm(F, generator=g) for l in layers}
    views = []
    for m in masks:
        perm = shared if regime == "deployment" else {l: torch.randperm(F, generator=g) for l in layers}
        views.append({k: v[perm[k[0]]] for k, v in m.items()})
    return views


def pair_scores(views: list[dict]) -> dict[str, np.ndarray]:
    """Per pair (i < j): `overlap` = mean Jaccard over the (layer, step) both have; `rare_overlap` = the
    cosine of the two requests' masks (all layers and steps side by side) with each position weighted by
    its rarity over all requests seen, log(N / active count) (TF-IDF: a unit that few requests use says
    more); `counts` = minus the mean |count difference|."""
    from comet_core.sparse.reference import jaccard

    keys = sorted(set.intersection(*[set(v) for v in views]))
    vec = np.stack([torch.cat([v[k] for k in keys]).numpy() for v in views]).astype(float)   # (N, units)
    idf = np.log(len(views) / np.maximum(vec.sum(0), 1.0))
    tf = vec * idf
    tf /= np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
    overlap, rare, counts = [], [], []
    for (i, a), (j, b) in itertools.combinations(enumerate(views), 2):
        overlap.append(np.mean([jaccard(a[k], b[k]) for k in keys]))
        rare.append(float(tf[i] @ tf[j]))
        counts.append(-np.mean([abs(int(a[k].sum()) - int(b[k].sum())) for k in keys]))
    return dict(overlap=np.array(overlap), rare_overlap=np.array(rare), counts=np.array(counts))


def requests(experiment: str) -> tuple[list[bytes], list[int]]:
    """(prompts, group of each prompt): the play, or the shared prefix."""
    from comet_core.models.corpus import TEST_WORKS, VALIDATION_WORKS, read_work, split_works

    works = [*TEST_WORKS, *VALIDATION_WORKS, *split_works("train")][:PLAYS]
    texts = [read_work(w).encode("utf-8", "replace") for w in works]
    body = [t[len(t) // 10: -len(t) // 10] for t in texts]     # past the front matter and licence
    prompts, groups = [], []
    if experiment == "same_play":
        for gi, t in enumerate(body):
            for s in np.linspace(0, len(t) - PROMPT, EXCERPTS).astype(int):
                prompts.append(t[s:s + PROMPT])
                groups.append(gi)
        return prompts, groups
    joined = b"\n".join(body)
    spots = np.linspace(0, len(joined) - PROMPT, PREFIXES * (CONTINUATIONS + 1)).astype(int)
    rng = np.random.default_rng(SEED)
    spots = rng.permutation(spots)
    n_pre = PROMPT if experiment == "identical_control" else PREFIX   # control: the whole prompt shared
    for gi in range(PREFIXES):
        pre = joined[spots[gi]:spots[gi] + n_pre]
        for c in range(CONTINUATIONS):
            s = spots[PREFIXES + gi * CONTINUATIONS + c]
            prompts.append(pre + joined[s:s + PROMPT - n_pre])
            groups.append(gi)
    return prompts, groups


def request_masks(model, predict, prompts: list[bytes]) -> list[dict]:
    from comet_core.sparse.reference import predicted_generate

    out = []
    for p in prompts:
        g = predicted_generate(model, list(p), GEN_TOKENS, predict)
        out.append(dict(g.ffn_masks))
    return out


def load_model():
    """shakespeare-opt and its FFN predictors, as `comet run-experiment system=comet` loads them."""
    from hydra import compose, initialize_config_dir

    from comet_core.config.schema import register
    from comet_core.models.zoo import load_plain_model
    from comet_core.sparse.predictors import load_for_system
    from comet_core.sparse.reference import FloatPredictors

    register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["model=shakespeare-opt", "system=comet"])
    model, _ = load_plain_model(cfg.model)
    ps = load_for_system(cfg.model, cfg.system)
    return model, FloatPredictors(ps.ffn, None)


def linkage_table(model=None, predict=None):
    import pandas as pd

    from comet_core.results.tables import git_revision

    if model is None:
        model, predict = load_model()
    rev = git_revision()   # once: the code that made every row
    rows = []
    for experiment in ("same_play", "shared_prefix", "identical_control"):
        prompts, groups = requests(experiment)
        masks = request_masks(model, predict, prompts)
        same = np.array([a == b for a, b in itertools.combinations(groups, 2)])
        for regime in ("online", "deployment"):
            scores = pair_scores(server_views(masks, regime))
            for score, s in scores.items():
                rows.append(dict(experiment=experiment, permutation=regime, score=score,
                                 auc=round(auc(s[same], s[~same]), 4), positive_pairs=int(same.sum()),
                                 negative_pairs=int((~same).sum()), requests=len(prompts),
                                 prompt_bytes=PROMPT, gen_tokens=GEN_TOKENS, seed=SEED, git_rev=rev))
        log.info("%s: %d requests done", experiment, len(prompts))
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="CSV to write (refused if it exists, unless --overwrite)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    if a.out.exists() and not a.overwrite:
        print(f"error: {a.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        t = linkage_table()
    except Exception as e:   # a missing model or corpus: one line, no traceback
        from comet_core.errors import CometError

        if not isinstance(e, CometError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    t.to_csv(tmp, index=False)
    tmp.replace(a.out)
    print(t.to_string(index=False))
    print(a.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
