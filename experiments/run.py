"""`comet run-experiment`: private generation with one model x system x network, as tidy tables.

A Hydra task function (module imports no torch at import time; heavy imports happen inside).

1. ``validate_config`` (comet_core/roles/run_config.py): every value checked before any work (schema, ranges,
   positions, memory).
2. ``check_destination``: the output folder may receive the results (never a silent overwrite).
3. ``execute`` (comet_core/roles/inprocess.py; transport=tcp: comet_core/roles/tcp_run.py): the private generation
   (and the plaintext reference in exact mode: first, and the plaintext model released before the private
   run, unless the reference needs what the run revealed).
4. ``write_results`` into a hidden staging folder: config.yaml, metrics.csv, ops.csv, generation.csv,
   ledger.csv.gz, run_info.json; then ``RunFolder.publish`` writes ``COMPLETE`` and moves the folder
   into place in one rename (comet_core/results/run_folder.py). The folder's absolute path is the last
   line of stdout.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from comet_core.config.schema import register as _register_schemas
from comet_core.config.typed import engine_params, network_params, system_params
from comet_core.results.run_folder import RESULT_FILES, RunFolder, check_destination  # noqa: F401
from comet_core.roles.inprocess import Outcome, execute  # noqa: F401 (execute re-exported: scripts and tests)
from comet_core.roles.run_config import engine_config, load_prompt, reference_needs_run, validate_config  # noqa: F401

_register_schemas()  # scripts that compose conf/config.yaml themselves need the schemas and resolvers

log = logging.getLogger("comet.run")

EXACT_ONLY_COLUMNS = ("plaintext_s", "tokens_match", "max_logit_err",   # NaN in cost mode
                      "predicted_token_agreement", "predicted_tokens_match")   # (and these for dense systems)


def output_dir(cfg) -> Path:
    """Where this run's results go: the sweep job's folder in a multirun, else ``output_dir``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:  # called outside Hydra (tests, scripts)
        return Path(cfg.output_dir).resolve()
    if hc.mode == RunMode.MULTIRUN:
        return Path(hc.runtime.output_dir).resolve()
    return Path(cfg.output_dir).resolve()


def hydra_dir() -> Path | None:
    """The folder Hydra wrote its `.hydra/` files and log into (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


# -- 1. checks before any work --------------------------------------------------------------------


def validate(cfg, out: Path) -> None:
    """Every check that runs before any work: the config, then the output folder."""
    validate_config(cfg)
    check_destination(Path(out), bool(cfg.overwrite))


# -- networks: what was run, and every preset ------------------------------------------------------

NETWORK_DIR = Path(__file__).resolve().parent.parent / "conf" / "network"


def _preset(name: str) -> dict | None:
    import yaml

    p = NETWORK_DIR / f"{name}.yaml"
    return yaml.safe_load(p.read_text()) if p.is_file() else None


def network_label(net_cfg) -> str:
    """The preset's name if its bandwidth and latency are the preset's, else ``custom(<bw>,<latency>)``:
    rows are labelled by the link that was priced (a ``network.bandwidth_bps=`` override is not ``lan``)."""
    from comet_core.results.units import fmt_bps, fmt_seconds

    bw, lat = float(net_cfg.bandwidth_bps), float(net_cfg.latency_s)
    p = _preset(str(net_cfg.name))
    if p is None or (math.isclose(float(p["bandwidth_bps"]), bw) and math.isclose(float(p["latency_s"]), lat)):
        return str(net_cfg.name)
    return f"custom({fmt_bps(bw)},{fmt_seconds(lat)})"


def preset_networks(selected):
    """The selected network first, then every other preset of conf/network (modelled time for each)."""
    import yaml

    from comet_core.comm.network import Network

    nets = [selected]
    for p in sorted(NETWORK_DIR.glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        if d["name"] != selected.name:
            nets.append(Network(d["name"], float(d["bandwidth_bps"]), float(d["latency_s"])))
    return nets


# -- 3. the experiment ------------------------------------------------------------------------------


# -- 4. tables ---------------------------------------------------------------------------------------


def decode(tok, ids) -> str:
    """Text of token ids; ids the tokenizer cannot decode (a random-weight model with a byte tokenizer
    emits ids >= 256) are written as <id> instead of failing the run."""
    try:
        return tok.decode(list(ids))
    except (ValueError, KeyError, IndexError):
        return "".join(decode(tok, [i]) if i < 256 else f"<{i}>" for i in ids) if len(ids) > 1 else f"<{ids[0]}>"


def _comparison(o: Outcome) -> dict:
    """Private vs plaintext: tokens equal, and the largest logit error up to the first differing token."""
    errs = [float((a.double() - b.double()).abs().max()) for a, b in zip(o.gen.logits, o.ref.logits)]
    same_prefix = 0
    for p, q in zip(o.gen.tokens, o.ref.tokens):
        if p != q:
            break
        same_prefix += 1
    import torch

    gaps = [float(t[0] - t[1]) for t in (torch.topk(lg.double(), 2).values for lg in o.ref.logits)]
    return dict(plaintext=o.ref.tokens, match=o.gen.tokens == o.ref.tokens, reference_top2_gaps=gaps,
                max_logit_err=max(errs[: same_prefix + 1]) if errs else float("nan"),
                private_text=decode(o.tok, o.gen.tokens), plaintext_text=decode(o.tok, o.ref.tokens),
                prompt_text=decode(o.tok, o.ids))


NEAR_TIE_ERR = 0.05   # a flip is a near-tie only if the logit error is under 5% of the largest logit


def equal_tokens_expected(cfg) -> bool:
    """Whether the reference is the same function as the private run, so that equal tokens are the only
    correct outcome: exact mode, no approximating operator, and for a sparse system (Comet) a reference
    under the masks the run revealed (in-process, or tcp with the in-process run; tcp_run.py)."""
    from comet_core.systems import load_system

    if cfg.mode != "exact":
        return False
    system = load_system(cfg.system)
    if getattr(system, "approximates", lambda: True)():
        return False
    if system.name == "dense":
        return True
    return system.name == "comet" and (cfg.transport.name == "inprocess" or bool(cfg.transport.check_inprocess))


def token_mismatch(summary: dict, o: Outcome) -> str | None:
    """Why the private tokens differ from the plaintext's, unless a near-tie explains it: at the first
    differing step the plaintext's top-2 gap is within twice the logit error (private logits = plaintext
    + error, so only then can the argmax move), and that error is small (< NEAR_TIE_ERR of the largest
    logit). An error that is not measured (tcp, output=token) explains nothing."""
    if summary["match"]:
        return None
    step = next((i for i, (p, q) in enumerate(zip(o.gen.tokens, o.ref.tokens)) if p != q),
                min(len(o.gen.tokens), len(o.ref.tokens)) - 1)
    err, gap = summary["max_logit_err"], summary["reference_top2_gaps"][step]
    scale = float(o.ref.logits[step].abs().max())
    if math.isfinite(err) and gap <= 2 * err and err <= NEAR_TIE_ERR * scale:
        log.warning("private token %d differs from the plaintext's %d at step %d: a near-tie (top-2 gap %.3g, "
                    "logit error %.3g)", o.gen.tokens[step], o.ref.tokens[step], step, gap, err)
        return None
    return (f"private tokens differ from the plaintext at step {step} (private {o.gen.tokens[step]}, plaintext "
            f"{o.ref.tokens[step]}; max |logit error| {err:.3g} against logits up to {scale:.3g}, plaintext "
            f"top-2 gap {gap:.3g}), and this system computes the plaintext function: a value left a protocol's "
            "range unchecked or a protocol is wrong; the run is not marked complete")


def compute_profile(cfg, o: Outcome):
    """The calibration profile that prices this run's work counters (results/compute_model.py), or None:
    no counters (a tcp run's launcher), or no profile at all. Found once per run (o.profile)."""
    from comet_core.results import compute_model

    if o.work is None:
        return None
    if o.profile is False:
        o.profile = compute_model.find_profile(str(cfg.device), warn=cfg.mode == "cost")
    return o.profile


def metrics_frame(cfg, o: Outcome, summary: dict):
    """metrics.csv: the same columns in exact and cost mode (NaN where a value was not measured)."""
    from comet_core.comm.network import Network
    from comet_core.results import compute_model, tables

    cost = cfg.mode == "cost"
    labels = dict(model=cfg.model.name, system=cfg.system.name, mode=cfg.mode, seed=cfg.seed,
                  keys="os" if cfg.seed is None else "seed (insecure, reproducible)", model_seed=cfg.model_seed,
                  frac_bits=cfg.engine.frac_bits, comparison=str(engine_params(cfg.engine).comparison),
                  relu_bits=int(engine_params(cfg.engine).relu_bits),
                  predictor_bits=getattr(system_params(cfg.system), "predictor_bits", math.nan),   # sparse systems only
                  weight_masks=engine_config(cfg).weight_masks,
                  permutation=str(system_params(cfg.system).permutation) if cfg.system.name == "comet" else "none",
                  count_padding=str(system_params(cfg.system).count_padding) if cfg.system.name == "comet" else "none",
                  layers=o.n_layers, prompt_tokens=len(o.ids),
                  gen_tokens=cfg.gen_tokens, device=cfg.device, git_rev=tables.git_revision())
    net = network_params(cfg.network)
    selected = Network.from_cfg(net)
    selected = Network(network_label(net), selected.bandwidth_bps, selected.latency_s)
    profile = compute_profile(cfg, o)
    modelled = compute_model.stage_seconds(o.work, profile) if profile is not None else None
    metrics = tables.metrics_table(o.ledger, o.gen.stage_seconds, preset_networks(selected), labels,
                                   compute_measured=not cost, cpu_seconds=o.gen.stage_cpu_seconds,
                                   modelled_seconds=modelled, compute_profile=profile.label if profile else "",
                                   deploy_requests=int(cfg.get("deploy_requests", 1000)))
    metrics.insert(metrics.columns.get_loc("network") + 1, "network_preset", metrics.network)
    metrics.loc[metrics.network == selected.name, "network_preset"] = cfg.network.name
    metrics["plaintext_s"] = o.ref.stage_seconds["total"] if o.ref is not None else math.nan
    metrics["tokens_match"] = summary["match"] if o.ref is not None else math.nan
    metrics["max_logit_err"] = summary["max_logit_err"] if o.ref is not None else math.nan
    metrics["predicted_token_agreement"] = summary.get("predicted_agreement", math.nan)
    metrics["predicted_tokens_match"] = summary.get("predicted_match", math.nan)
    metrics.insert(metrics.columns.get_loc("network") + 1, "transport", cfg.transport.name)
    if o.transport is not None:
        add_socket_columns(metrics, o.transport)
    return metrics


SOCKET_COLUMNS = ("socket_bytes", "frame_overhead_bytes", "tls_overhead_bytes", "unpacked_excess_bytes",
                  "dealer_socket_bytes", "tokens_equal_inprocess", "ledger_equal_inprocess")


def add_socket_columns(metrics, t: dict) -> None:
    """transport=tcp: payload bytes the P0-P1 sockets carried (both directions, per stage) beside
    online_bytes; frame and TLS overhead, the dealer's bytes and the in-process check on the total rows."""
    from comet_core.results.tables import OFF_PATH

    at = metrics.columns.get_loc("online_bytes") + 1
    by_stage = t["socket_bytes_by_stage"]
    # total: the request's stages, as online_bytes (deploy and preprocess are rows of their own);
    # total_amortised: total + preprocess + deploy / deploy_requests, as tables._amortised
    on_path = t["socket_bytes"] - sum(by_stage.get(s, 0) for s in OFF_PATH)
    n = int(metrics.deploy_requests.iloc[0]) if "deploy_requests" in metrics else 1
    amortised = on_path + by_stage.get("preprocess", 0) + round(by_stage.get("deploy", 0) / n)
    metrics.insert(at, "socket_bytes", [on_path if ph == "total" else amortised if ph == "total_amortised"
                                        else by_stage.get(ph, 0) for ph in metrics.phase])
    total = metrics.phase == "total"
    for col in SOCKET_COLUMNS[1:]:
        v = t.get(col)
        metrics[col] = math.nan
        if v is not None:
            metrics[col] = metrics[col].astype(object)
            metrics.loc[total, col] = v


def generation_frame(o: Outcome):
    import pandas as pd

    rows = []
    for src, g in (("private", o.gen), ("plaintext", o.ref), *o.extra_refs):
        for step, t in enumerate(g.tokens):
            rows.append(dict(source=src, step=step, token_id=t, text=decode(o.tok, [t])))
    return pd.DataFrame(rows)


def write_results(cfg, o: Outcome, folder: Path) -> dict:
    """Every table of the run into ``folder`` (the staging folder); returns the printed summary."""
    from omegaconf import OmegaConf

    from comet_core.results import tables

    summary = dict(ids=o.ids, private=o.gen.tokens, network_label=network_label(cfg.network),
                   tokenizer=str(cfg.model.get("tokenizer", "bytes")), sparse=reference_needs_run(o.system))
    if o.ref is not None:
        summary.update(_comparison(o))
        gen = generation_frame(o)   # the texts as generation.csv lists them, one per source
        summary["texts"] = {src: (list(g.token_id), decode(o.tok, list(g.token_id)))
                            for src, g in gen.groupby("source", sort=False)}
    pred = predicted_outcome(o)
    if pred is not None:   # the independent reference: the model's own float predictors
        summary.update(predicted=pred.tokens, predicted_text=decode(o.tok, pred.tokens),
                       predicted_agreement=predicted_agreement(o.gen.tokens, pred.tokens),
                       predicted_match=o.gen.tokens == pred.tokens)
    metrics = metrics_frame(cfg, o, summary)
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["prompt"] = load_prompt(cfg)  # the text that ran (also when it came from prompt_file)
    OmegaConf.save(OmegaConf.create(saved), folder / "config.yaml")
    metrics.to_csv(folder / "metrics.csv", index=False)
    tables.ops_table(o.ledger).to_csv(folder / "ops.csv", index=False)
    if o.work is not None:   # the work counters, priced (comm/work.py, results/compute_model.py)
        from comet_core.results import compute_model

        work = compute_model.priced(o.work, compute_profile(cfg, o))
        work.to_csv(folder / "work.csv", index=False)
        if o.op_seconds is not None:   # exact mode: the model beside the measured seconds, op by op
            compute_model.by_op(work, o.op_seconds).to_csv(folder / "compute_ops.csv", index=False)
    if cfg.get("save_ledger", True):
        o.ledger.to_csv(folder / "ledger.csv.gz", index=False)
    if o.ref is not None:  # cost mode has no token values to list (docs/conventions.md)
        gen.to_csv(folder / "generation.csv", index=False)
    write_sparsity(o.system, cfg, folder, predicted_outcome(o))
    summary["metrics"] = metrics
    summary["transport"] = o.transport
    return summary


def run(cfg, out: Path, hydra_dir: Path | None = None) -> dict:
    """The experiment (plain function: the CLI, tests and scripts call it); results land in ``summary['out']``,
    which is ``out`` unless another run took that folder meanwhile."""
    from comet_core.results.run_info import RunInfo

    validate(cfg, out)
    info = RunInfo.start()
    try:
        return _run(cfg, out, hydra_dir, info)
    finally:
        info.stop()


def _run(cfg, out: Path, hydra_dir: Path | None, info) -> dict:
    from comet_core.results.run_info import usable_cores

    with RunFolder(out, overwrite=bool(cfg.overwrite), hydra_dir=hydra_dir) as folder:
        if cfg.transport.name == "tcp":
            from comet_core.roles.emulated import emulated
            from comet_core.roles.tcp_run import tcp_execute

            with emulated(cfg) as link:      # transport.emulate=netns: P0, P1 in namespaces (comet_core/roles/emulated.py)
                outcome = tcp_execute(cfg, folder.staging)
            if link is not None:
                outcome.transport["link"] = link
            info.extra["transport"] = outcome.transport
        else:
            outcome = execute(cfg, memory_checked=True)   # validate() checked the memory for this cfg
        summary = write_results(cfg, outcome, folder.staging)
        wrong = token_mismatch(summary, outcome) if outcome.ref is not None and equal_tokens_expected(cfg) else None
        if wrong:
            from comet_core.errors import CometError

            raise CometError(wrong)
        info.finish().save(folder.staging)
        summary["out"] = folder.publish()
    summary["load_max"], summary["cores"] = info.load_max, usable_cores()
    if Path(summary["out"]) != Path(out).resolve():   # both runs started at once: kept, never silent
        summary["taken"] = (f"output_dir {Path(out).resolve()} was taken by another run while this one worked; "
                            f"this run's results are in {summary['out']} (nothing was overwritten)")
    return summary


def predicted_outcome(o: Outcome):
    """The `plaintext_predicted` generation among the extra references, or None."""
    return next((g for src, g in o.extra_refs if src == "plaintext_predicted"), None)


def predicted_agreement(private: list[int], predicted: list[int]) -> float:
    """Fraction of generated positions where the private token equals the plaintext_predicted one."""
    return sum(p == q for p, q in zip(private, predicted)) / max(1, len(private))


def write_sparsity(system, cfg, out: Path, predicted=None) -> None:
    """sparsity.csv: per (layer, step, kind) the revealed count of active units (sparse systems only), and
    `jaccard`: the Jaccard index of the revealed mask (real coordinates) with the mask of the
    plaintext_predicted run at the same layer and step (NaN where either is missing: cost mode, tcp)."""
    records = getattr(getattr(system, "state", None), "records", None)
    if not records:
        return
    import pandas as pd

    from comet_core.config.typed import model_params, system_params
    from comet_core.sparse.predictors import density_note
    from comet_core.sparse.reference import jaccard

    def jac(r) -> float:
        table = None if predicted is None else (predicted.ffn_masks if r.kind == "ffn" else predicted.head_masks)
        other = None if table is None else table.get((r.layer, r.step))
        if other is None or getattr(r, "real_mask", None) is None:
            return float("nan")
        return jaccard(r.real_mask.bool(), other.bool())

    source = "revealed" if cfg.mode == "exact" else density_note(model_params(cfg.model), system_params(cfg.system))
    pd.DataFrame([dict(layer=r.layer, step=r.step, kind=r.kind, active=r.active, total=r.total,
                       density=r.active / r.total if r.total else float("nan"), flips=r.flips,
                       max_flip_margin=r.max_flip_margin, jaccard=jac(r), revealed=r.revealed, source=source)
                  for r in records]).to_csv(out / "sparsity.csv", index=False)
    kv = getattr(system.state, "kv", None)
    if kv:   # head-sparse attention: how often an active group found its past K/V (cache hits)
        rows = [dict(layer=l, hits=c.stats["hits"], misses=c.stats["misses"], prefetched=c.stats["prefetched"],
                     hit_rate=c.stats["hits"] / max(1, c.stats["hits"] + c.stats["misses"]),
                     refill=system.kv_refill, prefetch=system.kv_prefetch) for l, c in enumerate(kv)]
        pd.DataFrame(rows).to_csv(out / "kv.csv", index=False)


def run_experiment_task(cfg) -> str:
    """Hydra entry point: run, print a summary, and the output folder as the last line."""
    summary = run(cfg, output_dir(cfg), hydra_dir=hydra_dir())
    from experiments.run_summary import summary_text

    print(summary_text(summary))
    print(summary["out"])
    if summary.get("taken"):
        from comet_core.errors import CometError

        sys.stdout.flush()
        raise CometError(summary["taken"])   # one line, exit 2 (cli/hydra_launch.py); the folder stays last on stdout
    return str(summary["out"])
