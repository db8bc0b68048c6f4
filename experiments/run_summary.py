"""What `comet run-experiment` prints: a summary that cannot be misread (issue 29).

1. the run: system, model (layers, weights), mode, network, transport;
2. the prompt and what a token is for this model's tokenizer (bytes for the byte tokenizer);
3. the texts, one line per ``source`` of generation.csv, each labelled with what it is and whether it
   equals the private text: for a sparse system the plaintext model with the private run's masks
   (what private must equal), the unmodified model (``plaintext_dense``: whether sparsity changed the
   text) and, where written, the model with its own float predictors (``plaintext_predicted``);
4. the cost table of the run's network, and every preset's totals (metrics.csv prices each);
5. how the times were made (comm modelled from the ledger, compute measured, CPU beside wall seconds)
   and a note when the machine was oversubscribed during the run.
The caller prints the output folder after this (the contract's last line).
"""

from __future__ import annotations

import math

# generation.csv sources in display order, and what each text is
SOURCES = ("private", "plaintext", "plaintext_dense", "plaintext_predicted")


def token_note(tokenizer: str) -> str:
    """What one token is for a model's tokenizer (conf/model/<name>.yaml `tokenizer`)."""
    if tokenizer == "bytes":
        return "a token is one byte of UTF-8 text for this model's byte tokenizer"
    return f"a token is a subword of the {tokenizer} tokenizer"


def _label(source: str, sparse: bool, system: str) -> str:
    if source == "private":
        return f"the 2PC run (system={system})"
    if source == "plaintext":
        if sparse:
            return "plaintext model with the private run's masks (what private must equal)"
        if system == "dense":
            return "the unmodified plaintext model"
        return "plaintext model with the system's approximations (what private must equal)"
    if source == "plaintext_dense":
        return "the unmodified plaintext model (no sparsity)" if sparse else "the unmodified plaintext model"
    if source == "plaintext_predicted":
        return "plaintext model with its own float predictors and thresholds"
    return source


def text_lines(texts: dict[str, tuple[list[int], str]], sparse: bool, system: str,
               max_logit_err: float | None) -> list[str]:
    """One line per text: source, the text, what it is, and its agreement with the private text.
    ``texts``: source -> (token ids, decoded text), as in generation.csv."""
    private = texts["private"][0]
    order = [s for s in SOURCES if s in texts] + [s for s in texts if s not in SOURCES]
    width = max(len(s) for s in order)
    quoted = {s: repr(texts[s][1]) for s in order}
    qwidth = max(len(q) for q in quoted.values())
    lines = []
    for s in order:
        ids = texts[s][0]
        line = f"  {s.ljust(width)}  {quoted[s].ljust(qwidth)}  {_label(s, sparse, system)}"
        if s != "private":
            same = sum(a == b for a, b in zip(ids, private))
            equal = ids == private
            line += f"; = private: {'yes' if equal else 'NO'} ({same} of {len(private)} tokens)"
            if s == "plaintext" and max_logit_err is not None and not math.isnan(max_logit_err):
                line += f", max |logit error| {max_logit_err:.3g}"
            if s == "plaintext_dense" and sparse and not equal:
                line += ": sparsity changed the text"
        lines.append(line)
    return lines


def load_note(load_max: float | None, cores: int) -> str | None:
    """A warning when the 1-minute load average exceeded the cores while the run worked."""
    if load_max is None or not cores or not load_max > cores:   # NaN: no load average here
        return None
    return (f"note: the load average reached {load_max:.1f} on {cores} cores during this run: other processes "
            "competed for the CPU, so the measured compute (wall) times are inflated; compare CPU seconds, or "
            "rerun on a quiet machine for timings")


def network_totals(metrics) -> str:
    """Every priced network's total row: the run's network first."""
    from comet_core.results.units import fmt_bps, fmt_bytes, fmt_seconds

    t = metrics[metrics.phase == "total"]
    rows = [("network", "bandwidth", "latency", "online", "rounds", "comm", "total")]
    for r in t.itertuples(index=False):
        rows.append((r.network, fmt_bps(r.bandwidth_bps), fmt_seconds(r.latency_s), fmt_bytes(r.online_bytes),
                     str(int(r.rounds)), fmt_seconds(r.comm_s), fmt_seconds(r.total_s)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def timing_lines(metrics, mode: str, transport: str) -> list[str]:
    """How the times were made: comm modelled (per preset), compute measured (wall and CPU seconds)."""
    from comet_core.results.units import fmt_seconds

    comm = ("comm is modelled from the ledger for each network preset (rounds x one-way latency + "
            "busiest-direction bytes / bandwidth), not measured on a link")
    tot = metrics[metrics.phase == "total"].iloc[0]
    profile = tot.get("compute_profile", "")
    if mode != "exact":
        if tot.get("compute_source", "none") != "modelled":
            return [comm, "compute is not measured in mode=cost (shapes only) and no compute profile was found "
                          "(run `comet calibrate`): total = comm"]
        return [comm, f"compute is modelled in mode=cost: {fmt_seconds(tot.compute_s)} = the run's work counters "
                      f"(work.csv) x unit costs of the profile {profile} (docs/compute-model.md states the "
                      f"model's error against measured wall time); "
                      f"total = compute + comm; communication only: comm"]
    cpu = tot.get("compute_cpu_s", math.nan)
    who = "P0's process" if transport == "tcp" else "this process: both parties and the dealer"
    modelled = tot.get("compute_modelled_s", math.nan)
    model = (f"; the compute model says {fmt_seconds(modelled)} (work.csv, profile {profile}; op by op beside the "
             "measured wall time in compute_ops.csv; its error: docs/compute-model.md)" if modelled == modelled else "")
    return [comm, f"compute is measured on this machine: {fmt_seconds(tot.compute_s)} wall, {fmt_seconds(cpu)} "
                  f"CPU ({who}, all threads){model}; total = compute + comm"]


def summary_text(s: dict) -> str:
    """The stdout summary of a run (module docstring); ``s`` is experiments/run.py's summary."""
    from comet_core.results.units import readable_table

    m = s["metrics"]
    first = m[m.network == m.network.iloc[0]]
    head = first.iloc[0]
    lines = [f"system={head.system}  model={head.model} ({int(head.layers)} layers)  mode={head['mode']}  "
             f"network={head.network}  transport={head.transport}"]
    n_prompt, n_gen = int(head.prompt_tokens), int(head.gen_tokens)
    note = token_note(s.get("tokenizer", "bytes"))
    if "texts" in s:
        lines.append(f"prompt ({n_prompt} tokens; {note}): {s['prompt_text']!r}")
        lines.append(f"generated {n_gen} tokens:")
        lines += text_lines(s["texts"], s.get("sparse", False), str(head.system), s.get("max_logit_err"))
    else:
        lines.append(f"prompt: {n_prompt} tokens, {n_gen} generated ({note}); mode=cost runs on shapes: no text")
    lines.append(f"cost per phase on {head.network}:")
    lines.append(readable_table(first))
    if "deploy_requests" in first:
        lines.append(f"weight_masks={head.get('weight_masks', 'call')}  permutation={head.get('permutation', 'none')}  "
                     f"count_padding={head.get('count_padding', 'none')}: deploy (once per deployment) is amortised "
                     f"over deploy_requests={int(head.deploy_requests)} requests in total_amortised (+ preprocess); "
                     "total is the request's online work")
    if m.network.nunique() > 1:
        lines.append("every network preset (phase total):")
        lines.append(network_totals(m))
    lines += timing_lines(m, str(head["mode"]), str(head.transport))
    t = s.get("transport")
    if t:
        lines.append(f"tcp: socket payload {t['socket_bytes']} B (ledger online {int(first[first.phase == 'total'].online_bytes.iloc[0])} B), "
                     f"frame overhead {t['frame_overhead_bytes']} B, TLS overhead {t['tls_overhead_bytes']} B; "
                     f"tokens = in-process: {t.get('tokens_equal_inprocess')}, ledger = in-process: {t.get('ledger_equal_inprocess')}")
    warn = load_note(s.get("load_max"), s.get("cores", 0))
    if warn and str(head["mode"]) == "exact":
        lines.append(warn)
    return "\n".join(lines)
