"""`comet run-experiment transport=tcp`: the five roles as OS processes on this machine, one command.

1. Keys: `transport.keys_dir`, or a fresh CA and role certificates in the run's staging folder (`keys/`).
2. Free ports for P0 and P1 where `transport.ports` are 0; the resolved config goes to `roles/config.yaml`
   without the prompt (P0, P1, the dealer and the owner never see it) and, with it, to `roles/client.yaml`.
3. Start p0, p1, dealer, owner, client (`comet party --role R --config ...`), each with its own log
   (`roles/<role>.log`) and `transport.exec_prefix.<role>` before its command (e.g. `ip netns exec ns-p0`).
4. Wait for all; the first role that fails gives the error line (the others stop within
   transport.timeout_s, or are killed after it; a role that a failed role found silent and that still runs
   is hung: killed at once and named as such): the run fails, the folder is never marked complete.
5. The plaintext reference is computed here, from the plaintext model, outside the parties; with
   transport.check_inprocess the same run is also simulated in this process (inprocess.execute) and the
   tcp run's tokens and ledger must equal it.
6. The Outcome carries the parties' ledger (P0's; P1's must be equal), the client's tokens and the link
   counters: socket payload bytes (both parties' sends on the P0-P1 link, per stage) beside the ledger's
   online bytes, frame and TLS overhead apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("comet.tcp")

ROOT = Path(__file__).resolve().parents[2]
START_ORDER = ("p0", "p1", "dealer", "owner", "client")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _last_error(logfile: Path) -> str:
    try:
        lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1][len("error: "):] if lines else ""


def role_configs(cfg, work: Path) -> dict:
    """{role: config file}: the resolved config, whose prompt only the client's file holds (the others: "")."""
    from omegaconf import OmegaConf, open_dict

    files = {}
    for name, prompt in (("client.yaml", cfg.prompt), ("config.yaml", "")):
        c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(c):
            c.prompt, c.prompt_file = prompt, None
        OmegaConf.save(c, work / name, resolve=True)
        files[name] = work / name
    return {r: files["client.yaml" if r == "client" else "config.yaml"] for r in START_ORDER}


def start_roles(cfg, work: Path, keys: str) -> dict:
    """Write the roles' configs (role_configs) and start the five role processes: {role: (Popen, log path)}."""
    cfg_files = role_configs(cfg, work)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = {}
    prefix = cfg.transport.get("exec_prefix") or {}
    for role in START_ORDER:
        cmd = [*[str(a) for a in (prefix.get(role) or [])], sys.executable, "-m", "cli.main", "party", "--role", role,
               "--config", str(cfg_files[role]), "--keys", str(keys), "--out", str(work / role)]
        logf = work / f"{role}.log"
        with open(logf, "w") as fh:
            procs[role] = (subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=fh, stderr=subprocess.STDOUT,
                                            start_new_session=True), logf)
        log.info("started %s (pid %d): %s", role, procs[role][0].pid, " ".join(cmd[-10:]))
    return procs


# what a role's error line says when a peer went silent: (peer, seconds)
_SILENT = re.compile(r"no message from (p0|p1|dealer|client|owner) within ([0-9.]+) s|"
                     r"(p0|p1|dealer|client|owner) did not take a message within ([0-9.]+) s")
HUNG_GRACE_S = 2.0   # a role another role found silent, still running after the failure: killed after this


def silent_peers(procs: dict) -> dict:
    """{role: (seconds, reporter, reporter's line)} for the roles that a failed role found silent."""
    out = {}
    for r, (p, logf) in procs.items():
        if p.returncode in (0, None):
            continue
        line = _last_error(logf)
        m = _SILENT.search(line)
        if m:
            peer, secs = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            out.setdefault(peer, (secs, r, line))
    return out


def wait_roles(procs: dict, grace_s: float) -> dict:
    """Wait for every role; after the first failure the others get grace_s to stop, then are killed, except
    a role that a failed role found silent (it sent nothing within transport.timeout_s) and that still
    runs: it is hung, killed after HUNG_GRACE_S. Raises CometError with the failing role's line (naming a
    hung role as hung); returns {} when every role succeeded."""
    from comet_core.errors import CometError

    failed_at = None
    hung: dict = {}
    try:
        while True:
            states = {r: p.poll() for r, (p, _) in procs.items()}
            if failed_at is None and any(s not in (None, 0) for s in states.values()):
                failed_at = time.monotonic()
            if all(s is not None for s in states.values()):
                break
            if failed_at is not None:
                waited = time.monotonic() - failed_at
                silent = silent_peers(procs)
                for r, (p, _) in procs.items():
                    if p.poll() is None and (waited > grace_s or (r in silent and waited > HUNG_GRACE_S)):
                        if r in silent:
                            hung[r] = silent[r]
                        log.warning("killing %s (pid %d): %s", r, p.pid, "hung" if r in silent else
                                    "it did not stop after another role failed")
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
            time.sleep(0.05)
    except BaseException:
        for _r, (p, _) in procs.items():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        raise
    if failed_at is not None:
        raise CometError(f"transport=tcp run failed: {failure_line(procs, hung)} (logs: {next(iter(procs.values()))[1].parent})")
    return {}


def failure_line(procs: dict, hung: dict | None = None) -> str:
    """One line: the root cause (a hung role, a role killed by a signal, or whose error is not just that a
    peer stopped) first, then what the parties saw (which peer, which step)."""
    hung = hung or {}
    lines = {}
    for r, (p, logf) in procs.items():
        code = p.returncode
        if code in (0, None):
            continue
        if r in hung:
            secs, reporter, seen = hung[r]
            lines[r] = f"{r} hung: it sent nothing for {secs} s ({seen}); the launcher killed it"
        elif code < 0:
            lines[r] = f"{r} was killed (signal {-code})"
        else:
            lines[r] = _last_error(logf) or f"{r} exited with status {code}"
    def secondary(text: str) -> bool:
        return any(w in text for w in ("stopped", "closed the link", "broke", "dropped the link"))
    order = sorted(lines, key=lambda r: (r not in hung, secondary(lines[r]), ROLE_RANK.get(r, 9)))
    root = lines[order[0]]
    seen = next((lines[r] for r in order[1:] if r in ("p0", "p1") and lines[r] not in root), None)
    return root + (f"; {seen}" if seen and seen != root else "")


ROLE_RANK = {"p0": 0, "p1": 1, "dealer": 2, "owner": 3, "client": 4}


def keep_logs(work: Path, staging: Path) -> Path:
    """A failed run's folder is deleted (never marked complete); its role logs are copied beside it
    into `<name>.failed-logs/` (no keys, no results) so that the failure can be read."""
    import shutil

    name = staging.name.lstrip(".").split(".tmp-")[0]
    dest = staging.parent / f"{name}.failed-logs"
    dest.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.log"):
        shutil.copy2(f, dest / f.name)
    return dest


def tcp_execute(cfg, staging: Path):
    """The tcp run and its checks; returns inprocess.Outcome with `transport` filled in."""
    from omegaconf import OmegaConf, open_dict

    from comet_core.comm.keys import make_keys
    from comet_core.errors import CometError
    from comet_core.models.generate import Generation
    from comet_core.roles.party import warn_insecure_seed
    from comet_core.roles.run_config import check_party_config

    check_party_config(cfg)
    warn_insecure_seed(cfg, "launcher")
    work = staging / "roles"
    work.mkdir(parents=True, exist_ok=True)
    keys = cfg.transport.keys_dir
    own_keys = not keys
    if own_keys:   # a one-run CA: its key is never stored; the roles' keys go when the roles are done
        keys = str(staging / "keys")
        make_keys(keys, keep_ca_key=False)
    run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(run_cfg):
        run_cfg.prompt = _prompt(cfg)
        run_cfg.prompt_file = None
        for r in ("p0", "p1"):
            if int(run_cfg.transport.ports[r]) == 0:
                run_cfg.transport.ports[r] = free_port(str(run_cfg.transport.bind or run_cfg.transport.hosts[r]))
    t0 = time.perf_counter()
    procs = start_roles(run_cfg, work, keys)
    try:
        wait_roles(procs, grace_s=float(cfg.transport.timeout_s) + 10)
    except CometError as e:
        kept = keep_logs(work, staging)
        raise CometError(str(e).replace(f"(logs: {work})", f"(role logs kept in {kept})")) from None
    finally:
        if own_keys:   # the run folder keeps the certificates (public), never a private key
            for f in Path(keys).glob("*.key"):
                f.unlink()
    wall = time.perf_counter() - t0
    res = {r: json.loads((work / r / "result.json").read_text()) for r in procs}
    import pandas as pd

    led0 = pd.read_csv(work / "p0" / "ledger.csv.gz", keep_default_na=False)
    led1 = pd.read_csv(work / "p1" / "ledger.csv.gz", keep_default_na=False)
    if not led0.equals(led1):
        raise CometError(f"P0's and P1's ledgers differ (logs: {work})")
    # the launcher's own reference (and, with check_inprocess, the in-process run of the same config)
    ref_outcome = _reference(cfg)
    client = res["client"]
    import torch

    gen = Generation(tokens=[int(t) for t in client["tokens"]],
                     logits=[torch.tensor(lg) for lg in client.get("logits", [])],
                     stage_seconds=res["p0"]["stage_seconds"],
                     stage_cpu_seconds=res["p0"].get("stage_cpu_seconds", {}))   # P0's process
    transport = transport_summary(cfg, res, procs, led0, ref_outcome, wall, keys)
    from comet_core.roles.party import owner_weights

    # the owner served the model the launcher's reference runs (hash of the plaintext tensors)
    transport["weights_equal_reference"] = owner_weights(cfg)[1] == res["owner"].get("weights_sha256")
    if not transport["weights_equal_reference"]:
        raise CometError("the owner process served other weights than the launcher's plaintext model "
                         f"(weights SHA-256 {res['owner'].get('weights_sha256')}); check model= and model_seed=")
    from comet_core.roles.inprocess import Outcome
    from comet_core.models.tokenizers import load_tokenizer

    tok = ref_outcome.tok if ref_outcome is not None else load_tokenizer(cfg.model.get("tokenizer", "bytes"))
    system = party_system(cfg, res, ref_outcome, transport)
    out = Outcome(ids=client["prompt_ids"], tok=tok, gen=gen, ref=ref_outcome.ref, ledger=led0,
                  n_layers=int(res["p0"]["n_layers"]), system=system,
                  extra_refs=ref_outcome.extra_refs, transport=transport)
    return out


def party_system(cfg, res: dict, ref_outcome, transport: dict):
    """What sparsity.csv / kv.csv are written from: the parties' own revealed counts (P0's; P1's must be
    equal). The flips against the float predictor need the plaintext input of each layer, which no party
    has: they are taken from the launcher's in-process run when its revealed counts are the same
    (transport.check_inprocess), else NaN."""
    from types import SimpleNamespace

    from comet_core.errors import CometError
    from comet_core.systems.step_record import StepRecord

    p0, p1 = res["p0"], res["p1"]
    if p0.get("records") != p1.get("records") or p0.get("kv") != p1.get("kv"):
        raise CometError("P0 and P1 report different revealed masks (records or KV counters)")
    if not p0.get("records"):
        return ref_outcome.system if ref_outcome is not None else None
    from comet_core.sparse.heads import HeadCache

    records = [StepRecord(**r) for r in p0["records"]]
    sim = getattr(getattr(getattr(ref_outcome, "system", None), "state", None), "records", None)
    if getattr(ref_outcome, "inprocess", False) and sim is not None:
        # what the servers saw: under count padding the padded count (a party cannot know the real one)
        key = lambda r: (r.layer, r.step, r.kind, r.active if r.revealed_count is None else r.revealed_count,  # noqa: E731
                         r.total, r.revealed)
        same = [key(r) for r in records] == [key(r) for r in sim]
        transport["sparsity_equal_inprocess"] = same
        if not same:
            raise CometError("the parties revealed other masks than the in-process run of the same config")
        for r, q in zip(records, sim):   # (the real masks too: sparsity.csv's jaccard)
            r.flips, r.max_flip_margin, r.real_mask = q.flips, q.max_flip_margin, q.real_mask
            r.active = q.active   # the real count, known to the simulation only
    kv = [HeadCache(groups=0, stats=dict(stats)) for stats in p0.get("kv", [])]   # the counters only
    return SimpleNamespace(name=cfg.system.name, state=SimpleNamespace(records=records, kv=kv),
                           kv_refill=cfg.system.get("kv_refill"), kv_prefetch=cfg.system.get("kv_prefetch"))


def _prompt(cfg) -> str:
    from comet_core.roles.run_config import load_prompt

    return load_prompt(cfg)


def _reference(cfg):
    """The plaintext reference (and the in-process run when transport.check_inprocess)."""
    from omegaconf import OmegaConf, open_dict

    from comet_core.roles.inprocess import Outcome, execute, plaintext_references

    sim_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(sim_cfg):
        sim_cfg.transport.name = "inprocess"
    if cfg.transport.check_inprocess:
        o = execute(sim_cfg)
        o.inprocess = True
        return o
    import torch

    from comet_core.models.tokenizers import load_tokenizer
    from comet_core.models.weights import extract
    from comet_core.models.zoo import load_plain_model
    from comet_core.systems import load_system
    from comet_core.roles.run_config import prompt_ids

    torch.manual_seed(cfg.model_seed)
    tok = load_tokenizer(cfg.model.get("tokenizer", "bytes"))
    ids = prompt_ids(tok, cfg)
    plain, tok = load_plain_model(cfg.model, seed=cfg.model_seed)
    system = load_system(cfg.system)
    ref, extra = plaintext_references(system, plain, extract(plain, cfg.model.family, cfg.model.activation),
                                      ids, cfg.gen_tokens)
    o = Outcome(ids=ids, tok=tok, gen=None, ref=ref, ledger=None, n_layers=0, system=system, extra_refs=extra)
    o.inprocess = False
    return o


def _serialised() -> str:
    """The protocol of rows whose sizes are serialised lengths (system.linear=he: ciphertexts and keys,
    zstd-compressed): two runs of the same config send as many, of lengths that differ by a few bytes."""
    from comet_core.mpc.he_linear import PROTOCOL

    return PROTOCOL


def ledgers_match(a, b, rel: float = 0.002) -> bool:
    """Two runs' ledgers are the same: every row equal, except the serialised rows (_serialised(), measured),
    which must match per round and direction in count, their bytes within `rel` (the same rounds either way)."""
    def split(led):
        led = led.reset_index(drop=True)
        var = (led.protocol.astype(str) == _serialised()) & (led.cost_source.astype(str) == "measured")
        return led[~var].reset_index(drop=True), led[var]
    (a0, av), (b0, bv) = split(a), split(b)
    if a0.shape != b0.shape or not all((a0[c].astype(str).values == b0[c].astype(str).values).all() for c in a0.columns):
        return False
    if av.empty and bv.empty:
        return True
    keys = ["phase", "stage", "layer", "op", "protocol", "sender", "receiver", "round"]
    ga, gb = (v.astype({k: str for k in keys}).groupby(keys)[["elements", "bytes"]].sum() for v in (av, bv))
    return bool(ga.index.equals(gb.index) and (ga.elements == gb.elements).all()
                and ((ga.bytes - gb.bytes).abs() <= rel * gb.bytes).all())


def transport_summary(cfg, res: dict, procs: dict, ledger, ref_outcome, wall: float, keys: str) -> dict:
    """Socket counters next to the ledger, the in-process comparison, and each role's pid and address."""
    p0, p1 = res["p0"], res["p1"]
    stages = sorted(set(p0["socket_bytes"]) | set(p1["socket_bytes"]))
    by_stage = {s: int(p0["socket_bytes"].get(s, 0)) + int(p1["socket_bytes"].get(s, 0)) for s in stages}
    l01, l10 = p0["links"]["p1"], p1["links"]["p0"]
    payload = l01["sent_payload"] + l10["sent_payload"]
    frames = l01["sent_frame"] + l10["sent_frame"]
    tcp = (l10["tcp_received"] + l01["tcp_received"]) if min(l01["tcp_received"], l10["tcp_received"]) >= 0 else -1
    summary = dict(
        socket_bytes_by_stage=by_stage, socket_bytes=payload,
        frame_overhead_bytes=frames - payload, tls_overhead_bytes=(tcp - frames) if tcp >= 0 else None,
        tcp_bytes=tcp, unpacked_excess_bytes=l01["unpacked_excess"] + l10["unpacked_excess"],
        recv_check=(l01["recv_payload"] == l10["sent_payload"] and l10["recv_payload"] == l01["sent_payload"]),
        dealer_socket_bytes=sum(res["dealer"]["links"][p]["sent_payload"] for p in ("p0", "p1")),
        owner_socket_bytes=sum(res["owner"]["links"][p]["sent_payload"] for p in ("p0", "p1")),
        client_socket_bytes=sum(res["client"]["links"][p]["sent_payload"] for p in ("p0", "p1")),
        to_client_socket_bytes=sum(res["client"]["links"][p]["recv_payload"] for p in ("p0", "p1")),
        wall_s=round(wall, 3), keys_dir=("keys/ (made for this run)" if cfg.transport.keys_dir in (None, "") else str(keys)),
        roles={r: dict(pid=res[r]["pid"], address=res[r]["address"], wall_s=res[r]["wall_s"],
                       log=f"roles/{r}.log") for r in res},
        link_wait_s_by_stage={r: res[r].get("link_wait_s") for r in ("p0", "p1")},
        shaper={r: res[r]["shaper"] for r in ("p0", "p1") if res[r].get("shaper")} or None,
        config_sha256=p0["config_sha256"], weights_sha256=res["owner"].get("weights_sha256"),
    )
    if getattr(ref_outcome, "inprocess", False):
        same = ledgers_match(ref_outcome.ledger, ledger)
        summary.update(inprocess_tokens=list(ref_outcome.gen.tokens),
                       tokens_equal_inprocess=list(ref_outcome.gen.tokens) == [int(t) for t in res["client"]["tokens"]],
                       ledger_equal_inprocess=bool(same))
    return summary
