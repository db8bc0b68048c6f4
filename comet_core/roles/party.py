"""`comet party --role p0|p1|dealer|client|owner`: one role of a two-party run, as its own OS process.

Links (TLS 1.3, mutual authentication, comet_core/comm/tls.py): P0 and P1 listen; P1 connects to P0; the
dealer, the client and the model owner connect to both parties. On every link both sides first send a
hello (the SHA-256 of the resolved config, the config itself, and for the owner the SHA-256 of the
weights) and refuse a peer whose config differs, naming the keys.

What each role holds:
  * p0 / p1: its own shares only. It builds the decoder from the model config (shapes, no weights),
    receives every weight share from the owner and the client's one-hot rows as shares; its token ids
    are placeholders (they only give the lengths); it sends its output shares to the client.
  * dealer: a full dealer from the seed (as LocalPeers); also the trusted party of ideal functionalities.
  * owner: the plaintext model (and, for system=comet, the predictor checkpoint: the parties build the
    predictors from shapes); sends each party its share of each weight, in the parties' order, and the
    system's public setup in the clear (Comet: per-layer predictor ranks and thresholds), then leaves.
  * client: the prompt; shares each step's one-hot rows, opens the output shares, picks the next token.
Each role writes `<out>/result.json` (pid, address, link counters, timings; the parties also
`ledger.csv.gz`, the client the tokens). An error is one line on stderr (`error: <role>: ...`), exit 2,
and `<out>/error.txt`. An `--out` that holds an earlier role's files is refused before any work (one line)
unless `overwrite`, which removes them first: a folder never mixes two runs' files. Files are written
atomically (a temporary name, then rename).
"""

from __future__ import annotations

from comet_core.config.typed import model_params

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("comet.party")

from comet_core.roles.run_config import ROLES, check_party_config  # noqa: F401 (re-exported)
# keys that may differ between the roles' configs (where results go; the client's private text)
UNHASHED = ("output_dir", "overwrite", "force", "save_ledger", "prompt", "prompt_file",
            "transport.keys_dir", "transport.exec_prefix", "transport.check_inprocess", "transport.bind")


# -- config --------------------------------------------------------------------------------------------


def compose(overrides: list[str]):
    """The run config from conf/config.yaml and Hydra overrides (as `comet run-experiment` composes it)."""
    from hydra import compose as hcompose, initialize_config_dir

    from comet_core.config.groups import CONF_DIR
    from comet_core.config.overrides import quote_unicode_values
    from comet_core.config.schema import register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose(config_name="config", overrides=quote_unicode_values(list(overrides)))


def load_config(path: str):
    from omegaconf import OmegaConf

    from comet_core.config.schema import RunSchema, register

    register()
    return OmegaConf.merge(OmegaConf.structured(RunSchema), OmegaConf.load(path))


def flat_config(cfg) -> dict:
    """The resolved config as {dotted key: value}, less the keys that may differ between roles."""
    from omegaconf import OmegaConf

    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if key in UNHASHED:
                continue
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v
    data = {k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k])
            for k in cfg.keys() if k not in ("hydra", "output_dir")}
    walk(data, "")
    return out


def config_hash(flat: dict) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def warn_insecure_seed(cfg, who: str) -> None:
    """A declared insecure seed (transport.insecure_seed=true): every role says so in its log."""
    if cfg.seed is not None:
        log.warning("%s: INSECURE: seed=%s (transport.insecure_seed=true): every role derives every key from the "
                    "seed, so any of them can recover the prompt and every share; for tests and reproducible "
                    "ledgers only", who, cfg.seed)


# -- links -----------------------------------------------------------------------------------------------


def _addr(cfg, role: str) -> tuple[str, int]:
    return str(cfg.transport.hosts[role]), int(cfg.transport.ports[role])


def open_links(cfg, role: str, keys: str, hello: dict, shaper=None, extra: dict | None = None) -> dict:
    """Listen/connect as `role`, then hello on every link: {peer role: SocketPipe}. `extra[peer]` is added
    to the hello on that link only (P0's P0-P1 key, for P1)."""
    from comet_core.comm.tls import Listener, SocketPipe, client_context, connect, handshake, server_context

    t = cfg.transport
    mk = lambda sock, peer: SocketPipe(sock, role, peer, int(t.max_frame_bytes), float(t.timeout_s),  # noqa: E731
                                      shaper=shaper if {role, peer} == {"p0", "p1"} else None)
    links: dict = {}

    def link(peer: str, sock) -> None:
        pipe = mk(sock, peer)
        links[peer] = pipe
        pipe.hello = handshake(pipe, {**hello, **(extra or {}).get(peer, {})})
        log.info("%s: handshake with %s ok (config %s)", role, peer, hello["config_sha256"][:12])

    try:
        if role in ("p0", "p1"):
            host, port = _addr(cfg, role)
            if port <= 0:
                from comet_core.errors import ConfigError

                raise ConfigError(f"transport.ports.{role} must be a port number for `comet party` (0 is for run-experiment)")
            listener = Listener(role, t.bind or host, port, server_context(keys, role))
            log.info("%s listening on %s:%d", role, *listener.address[:2])
            try:
                if role == "p1":
                    link("p0", connect(role, "p0", *_addr(cfg, "p0"), client_context(keys, role), float(t.connect_timeout_s)))
                expected = {"dealer", "client", "owner"} | ({"p1"} if role == "p0" else set())
                listener.accept(expected, float(t.connect_timeout_s), each=link)
            finally:
                listener.close()
        else:
            ctx = client_context(keys, role)
            for party in ("p0", "p1"):
                link(party, connect(role, party, *_addr(cfg, party), ctx, float(t.connect_timeout_s)))
    except BaseException as e:
        for pipe in links.values():
            pipe.send_error(str(e) if str(e).startswith(f"{role}:") else f"{role}: {e}")
            pipe.close()
        raise
    return links


# -- roles -----------------------------------------------------------------------------------------------


def _engine(cfg):
    from comet_core.roles.run_config import engine_config

    return engine_config(cfg)


def pair_key(cfg, rank: int, links: dict, drawn: bytes | None) -> bytes:
    """The P0-P1 key: P0's (drawn from the OS, or the seed's), which P0 sent P1 in its hello over their
    TLS link; the dealer, client and owner never see it (it keys MPC.relabel)."""
    from comet_core.comm.channel import PeerError

    if rank == 0:
        return drawn
    got = links["p0"].hello.get("pair_key")
    try:
        key = bytes.fromhex(got)
    except (TypeError, ValueError):
        key = b""
    if len(key) != 16:
        raise PeerError("p0's hello carries no P0-P1 key (16 bytes in hex): another comet release?")
    return key


def draw_pair_key(cfg) -> bytes:
    from comet_core.mpc.prg import Keys

    return Keys.from_os().key("P0", "P1") if cfg.seed is None else Keys.from_seed(cfg.seed).key("P0", "P1")


def run_party(cfg, rank: int, links: dict, out: Path, key: bytes | None = None) -> dict:
    import torch

    from comet_core.roles.remote import RemotePeers
    from comet_core.models.generate import private_generate
    from comet_core.models.secure import SecureDecoder
    from comet_core.models.weights import share_weights, weight_shapes
    from comet_core.models.zoo import n_layers
    from comet_core.mpc.engine import MPC
    from comet_core.systems import load_system

    torch.manual_seed(cfg.model_seed)
    peers = RemotePeers(rank, links, pair_key(cfg, rank, links, key))
    mpc = MPC(_engine(cfg), seed=cfg.seed, device=cfg.device, party=rank, peers=peers)
    system = load_system(cfg.system)
    t0 = time.perf_counter()
    weights = share_weights(mpc, weight_shapes(cfg.model, n_layers(cfg.model)),   # shapes only: shares from the owner
                            held=system.owner_held())
    system.prepare(mpc, weights, model_params(cfg.model))
    links["owner"].send({"op": "bye"})
    owner_counters = links["owner"].counters()
    links["owner"].close()
    setup_s = time.perf_counter() - t0
    model = SecureDecoder(mpc, weights, system)
    prompt_tokens = int(links["client"].hello["prompt_tokens"])
    placeholder = [0] * prompt_tokens    # the party never sees the tokens: lengths only
    gen = private_generate(mpc, model, placeholder, int(cfg.gen_tokens), int(cfg.model.vocab_size),
                           output=cfg.get("output", "token"))
    for r in ("dealer", "client"):
        links[r].send({"op": "bye"})
    peer = f"p{1 - rank}"
    links[peer].send({"op": "done"})      # a last message each way: both have read everything the other sent
    if links[peer].recv() != {"op": "done"}:
        raise RuntimeError(f"{peer} did not end with done")
    counters = {p: links[p].counters() for p in links if not links[p].closed}
    counters["owner"] = owner_counters
    mpc.ledger.frame().to_csv(out / "ledger.csv.gz", index=False)
    return dict(stage_seconds=gen.stage_seconds, stage_cpu_seconds=gen.stage_cpu_seconds, weights_setup_s=setup_s, n_layers=model.n_layers,
                socket_bytes=mpc.channel.socket_bytes, link_wait_s=mpc.channel.link_wait_s, links=counters,
                placeholder_tokens=gen.tokens, **revealed_state(system))


def revealed_state(system) -> dict:
    """What a sparse system revealed to this party (both parties see the same): per (layer, step, kind) the
    count and, for head groups, the opened mask in permuted coordinates; the KV cache's hit counters."""
    state = getattr(system, "state", None)
    out: dict = {}
    if getattr(state, "records", None):
        out["records"] = [dict(layer=r.layer, step=r.step, kind=r.kind, active=r.active, total=r.total,
                               revealed=r.revealed, revealed_count=r.revealed_count) for r in state.records]
    if getattr(state, "kv", None):
        out["kv"] = [dict(c.stats) for c in state.kv]
    return out


def service_timeout(cfg) -> float:
    """How long the dealer, client and owner wait for a party: twice transport.timeout_s, so that when a
    party hangs, the other party's own wait for it (transport.timeout_s) ends first and names it."""
    return 2 * float(cfg.transport.timeout_s)


def run_service(cfg, role: str, links: dict, ctx: dict) -> dict:
    from comet_core.roles.remote import ClientService, DealerService, serve_links

    timeout = service_timeout(cfg)
    for pipe in links.values():
        pipe.timeout_s = timeout
    if role == "dealer":
        svc = DealerService(_engine(cfg), cfg.seed, cfg.device, timeout)
    elif role == "owner":
        svc = ctx["owner_service"]
    else:
        svc = ClientService(_engine(cfg), cfg.seed, cfg.device, timeout, ctx["ids"], int(cfg.model.vocab_size),
                            int(cfg.gen_tokens), cfg.get("output", "token"))
    serve_links(svc, links)
    res = {"links": {p: links[p].counters() for p in links}}
    if role == "client":
        res.update(tokens=svc.tokens, prompt_ids=ctx["ids"],
                   logits=[lg.tolist() for lg in svc.logits])
    return res


def owner_weights(cfg):
    """The owner's plaintext weights (extract layout) and the SHA-256 of their bytes (the hello's model hash)."""
    import torch

    from comet_core.models.weights import extract
    from comet_core.models.zoo import load_plain_model

    torch.manual_seed(cfg.model_seed)
    plain, _ = load_plain_model(cfg.model, seed=cfg.model_seed)
    pw = extract(plain, cfg.model.family, cfg.model.activation,
                 tied=bool(cfg.model.get("tie_word_embeddings", False)))
    h = hashlib.sha256()
    for t in [t for layer in pw.layers for t in layer.values()] + list(pw.globals.values()):
        h.update(t.detach().cpu().contiguous().reshape(-1).numpy().tobytes())
    return pw, h.hexdigest()


def owner_items(cfg, pw) -> tuple[list, dict]:
    """Every share the parties will ask the owner for, in their order (share_weights, then the system's
    setup): [(shares (2, ...), frac, phase)], made as LocalPeers makes them (the simulation's sharing);
    and the system's public setup ({system name: metadata}, e.g. Comet's predictor ranks and thresholds,
    which the owner sends in the clear: `CometSystem.public_setup`)."""
    from comet_core.models.weights import share_weights
    from comet_core.mpc.engine import MPC
    from comet_core.systems import load_system

    full = MPC(_engine(cfg), seed=cfg.seed, device=cfg.device, mode="exact")
    items = []
    orig = full.share

    def recording(x, owner="client", frac=None, phase="input", to_p0=False):
        s = orig(x, owner=owner, frac=frac, phase=phase, to_p0=to_p0)
        if owner == "model_owner":
            items.append((s.data, s.frac, phase, bool(to_p0)))
        return s
    full.share = recording
    system = load_system(cfg.system)
    weights = share_weights(full, pw, held=system.owner_held())
    system.prepare(full, weights, model_params(cfg.model))
    public = {system.name: system.public_setup()} if hasattr(system, "public_setup") else {}
    return items, public


OUTPUTS = ("result.json", "error.txt", "ledger.csv.gz")   # what a role writes into its --out


def prepare_out(out_dir: Path, role: str, overwrite: bool) -> None:
    """Refuse an --out holding an earlier role's files (CometError), or with `overwrite` remove them."""
    from comet_core.errors import CometError

    if out_dir.exists() and not out_dir.is_dir():
        raise CometError(f"--out {out_dir} is a file; give a folder")
    old = [n for n in OUTPUTS if (out_dir / n).exists()]
    if old and not overwrite:
        raise CometError(f"--out {out_dir} already holds an earlier run's {', '.join(old)}; give another --out, "
                         "or --overwrite to replace them")
    for n in old:
        (out_dir / n).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(role: str, cfg, keys: str, out: str, shaper=None, overwrite: bool = False) -> int:
    """Run one role; returns the exit status (0, or 2 after one `error:` line on stderr)."""
    from comet_core.comm.channel import PeerError
    from comet_core.errors import CometError
    from comet_core.roles.run_config import validate_config

    out_dir = Path(out)
    try:
        prepare_out(out_dir, role, overwrite)
    except (CometError, OSError) as e:   # nothing written: the folder keeps what it held
        print(f"error: {role}: {e}", file=sys.stderr, flush=True)
        return 2
    links: dict = {}
    t0 = time.time()
    try:
        if role not in ROLES:
            raise CometError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.force = True   # the launcher (or the operator) checked memory for the run; a role holds less
        validate_config(cfg, role=role)
        check_party_config(cfg)
        warn_insecure_seed(cfg, role)
        flat = flat_config(cfg)
        hello = dict(role=role, pid=os.getpid(), config_sha256=config_hash(flat), config=flat)
        ctx: dict = {}
        if role == "owner":
            plain_weights, wsha = owner_weights(cfg)
            hello["weights_sha256"] = wsha
        if role == "client":
            from comet_core.models.tokenizers import load_tokenizer
            from comet_core.roles.run_config import prompt_ids

            ctx["ids"] = prompt_ids(load_tokenizer(cfg.model.get("tokenizer", "bytes")), cfg)
            hello["prompt_tokens"] = len(ctx["ids"])
        log.info("role %s is pid %d", role, os.getpid())
        if shaper is None:
            from comet_core.roles.emulated import party_shaper

            shaper = party_shaper(cfg, role)
        key = draw_pair_key(cfg) if role == "p0" else None
        links = open_links(cfg, role, keys, hello, shaper=shaper,
                           extra={"p1": {"pair_key": key.hex()}} if key is not None else None)
        if role == "owner":
            from comet_core.roles.remote import OwnerService

            items, public = owner_items(cfg, plain_weights)
            ctx["owner_service"] = OwnerService(items, service_timeout(cfg), wsha, public)
        res = run_party(cfg, int(role[1]), links, out_dir, key) if role in ("p0", "p1") else run_service(cfg, role, links, ctx)
        if role in ("p0", "p1"):
            res["owner_weights_sha256"] = links["owner"].hello.get("weights_sha256") if "owner" in links else None
        if shaper is not None:
            res["shaper"] = shaper.summary()
        res.update(role=role, pid=os.getpid(), address=_address(cfg, role), wall_s=round(time.time() - t0, 3),
                   config_sha256=hello["config_sha256"], weights_sha256=hello.get("weights_sha256"))
        write_atomic(out_dir / "result.json", json.dumps(res, indent=1, default=str) + "\n")
        return 0
    except (CometError, PeerError) as e:
        msg = str(e) if str(e).startswith(f"{role}:") else f"{role}: {e}"
    except KeyboardInterrupt:
        msg = f"{role}: interrupted"
    except Exception as e:  # noqa: BLE001 - a bug: the traceback goes to the log, one line to stderr
        log.exception("%s failed", role)
        msg = f"{role}: internal error {type(e).__name__}: {e}"
    for pipe in links.values():
        pipe.send_error(msg)
        pipe.close()
    write_atomic(out_dir / "error.txt", msg + "\n")
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return 2


def _address(cfg, role: str) -> str:
    host = str(cfg.transport.hosts[role])
    return f"{host}:{int(cfg.transport.ports[role])}" if role in ("p0", "p1") else host
