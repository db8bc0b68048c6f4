"""transport=tcp: the wire format, TLS links, the five roles and their faults.

Fast tests run the roles as threads of this process (`comet_core.roles.party.main`, the function each
`comet party` process runs); two tests start real processes through `comet run-experiment transport=tcp`
(tokens and ledger equal the in-process run, socket bytes equal the ledger; a killed party).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from comet_core.comm.channel import PeerError
from comet_core.comm.keys import make_keys
from comet_core.comm.ledger import wire_bytes
from comet_core.comm.tls import Listener, SocketPipe, client_context, connect, handshake, server_context
from comet_core.comm.wire import WireError, decode, encode
from comet_core.errors import CometError
from tests.helpers_load import scaled

CONF = str(Path(__file__).resolve().parent.parent / "conf")
ROLES = ("p0", "p1", "dealer", "owner", "client")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    make_keys(d / "a")
    make_keys(d / "b")      # another CA
    return d


def _cfg(tmp_path, *over, timeout_s: int = 30):
    from comet_core.config.schema import register

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path / 'run'}", "model=tiny-opt", "model.layers=1",
                                            "gen_tokens=2", "prompt=To be", "transport=tcp",
                                            # reproducible, INSECURE (every role derives every key): the
                                            # tcp run must equal the in-process run bit for bit
                                            "seed=3", "transport.insecure_seed=true",
                                            f"transport.timeout_s={timeout_s}",
                                            f"transport.connect_timeout_s={timeout_s}", "force=true", *over])


def _equals_inprocess(cfg, tmp_path) -> pd.DataFrame:
    """The threads' run (client tokens, P0's ledger) equals the in-process run of the same config; P0's ledger."""
    from experiments.run import execute

    sim_cfg = cfg.copy()
    sim_cfg.transport.name = "inprocess"
    sim = execute(sim_cfg)
    client = json.loads((tmp_path / "client" / "result.json").read_text())
    assert client["tokens"] == sim.gen.tokens
    led = pd.read_csv(tmp_path / "p0" / "ledger.csv.gz", keep_default_na=False)
    assert led.shape == sim.ledger.shape and (led.astype(str).values == sim.ledger.astype(str).values).all()
    return led


def _ports(cfg):
    from omegaconf import open_dict

    from comet_core.roles.tcp_run import free_port

    with open_dict(cfg):
        cfg.transport.ports.p0 = free_port("127.0.0.1")
        cfg.transport.ports.p1 = free_port("127.0.0.1")
    return cfg


def _run_threads(cfgs: dict, keys: dict, out: Path, skip=()) -> dict:
    """Run the roles as threads (party.main); returns {role: exit status}."""
    from comet_core.roles.party import main

    rc = {}
    threads = []
    for role in ROLES:
        if role in skip:
            continue
        t = threading.Thread(target=lambda r=role: rc.__setitem__(r, main(r, cfgs[r], str(keys[r]), str(out / r))),
                             daemon=True, name=f"role-{role}")
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a role hung"
    return rc


def _err(out: Path, role: str) -> str:
    p = out / role / "error.txt"
    return p.read_text().strip() if p.exists() else ""


# -- the SPMD path runs a whole private generation -------------------------------------------------


def test_private_generation_under_run_pair_equals_the_simulation():
    from omegaconf import OmegaConf

    from comet_core.models.generate import private_generate
    from comet_core.models.secure import SecureDecoder
    from comet_core.models.weights import extract, share_weights
    from comet_core.models.zoo import load_plain_model
    from comet_core.mpc.engine import MPC, EngineConfig
    from comet_core.mpc.parties import run_pair
    from comet_core.systems import load_system

    mcfg = OmegaConf.load(Path(CONF) / "model" / "tiny-opt.yaml")
    mcfg.layers = 1
    plain, _ = load_plain_model(mcfg, seed=0)
    pw = extract(plain, "opt", "relu")
    sysc = OmegaConf.load(Path(CONF) / "system" / "dense.yaml")

    def gen(m):
        model = SecureDecoder(m, share_weights(m, pw), load_system(sysc))
        return private_generate(m, model, [84, 111, 32], 3, 256).tokens

    sim = MPC(EngineConfig(), seed=4)
    ref = gen(sim)
    t0, t1, (p0, p1) = run_pair(gen, EngineConfig(), seed=4, timeout_s=60)
    assert t0 == t1 == ref
    assert p0.ledger.rows == sim.ledger.rows == p1.ledger.rows


# -- wire format --------------------------------------------------------------------------------------


def test_wire_packs_each_tensor_to_its_ledger_width():
    g = torch.Generator().manual_seed(0)
    bits1 = torch.randint(0, 2, (7, 13), generator=g)
    byte = torch.randint(0, 256, (9,), generator=g)
    word = torch.randint(-2 ** 62, 2 ** 62, (5,), generator=g)
    e = encode([bits1, byte, word], bits=[1, 8, 64])
    assert e.payload == wire_bytes(91, 1) + 9 + 40 and e.unpacked_excess == 0
    got, payload = decode(e.body)
    assert payload == e.payload and all(torch.equal(a, b) for a, b in zip(got, [bits1, byte, word]))
    # packed words: only ceil(n * bits / 8) bytes of the words travel; the rest arrives as zeros
    words = torch.tensor([0x3FF_FFFF_FFFF, 0], dtype=torch.int64)
    e = encode([words], bits=2, packed=21)
    assert e.payload == wire_bytes(21, 2) == 6
    (back,), _ = decode(e.body)
    assert int(back[0]) == 0xFFFF_FFFF_FFFF & 0x3FF_FFFF_FFFF and int(back[1]) == 0
    # a word that does not fit its width is sent whole and the excess is counted, not hidden
    e = encode([torch.tensor([3, 1])], bits=1)
    assert e.unpacked_excess == 16 - 1 and torch.equal(decode(e.body)[0][0], torch.tensor([3, 1]))


def test_wire_structures_round_trip_and_bad_bodies_are_refused():
    msg = {"a": (1, 2.5, None, torch.Size([2, 3]), "s", True), "b": [torch.zeros(2, dtype=torch.float64)],
           "c": {"d": torch.tensor([True, False])}}
    got, _ = decode(encode(msg).body)
    assert got["a"] == msg["a"] and torch.equal(got["b"][0], msg["b"][0]) and torch.equal(got["c"]["d"], msg["c"]["d"])
    body = encode([torch.arange(4)]).body
    import pickle

    bad = [b"", b"\x05\x00\x00\x00{bad}", struct.pack("<I", 10 ** 6) + b"{}",
           body[:-3],                                           # truncated tensor bytes
           body.replace(b'"shape":[4]', b'"shape":[5]'),        # header does not match the tensor
           struct.pack("<I", 2) + b"{}" + pickle.dumps(object()),   # pickle is never read
           struct.pack("<I", 14) + b'{"$t":"t0"}   '.replace(b"   ", b"")[:14]]
    for b in bad:
        with pytest.raises(WireError):
            decode(b)


# -- TLS links ----------------------------------------------------------------------------------------


def _pair(keys_srv, keys_cli, srv_role="p0", cli_role="p1", expect="p0", max_frame=1 << 20, timeout=3.0):
    lst = Listener(srv_role, "127.0.0.1", 0, server_context(keys_srv, srv_role))
    got = {}

    def acc():
        try:
            got.update(lst.accept({cli_role}, timeout))
        except PeerError as e:
            got["error"] = e
    th = threading.Thread(target=acc, daemon=True)
    th.start()
    try:
        c = connect(cli_role, expect, "127.0.0.1", lst.address[1], client_context(keys_cli, cli_role), timeout)
    finally:
        th.join(timeout + 5)
        lst.close()
    if "error" in got:
        raise got["error"]
    return (SocketPipe(got[cli_role], srv_role, cli_role, max_frame, timeout),
            SocketPipe(c, cli_role, srv_role, max_frame, timeout))


def test_tls13_mutual_auth_and_counted_bytes(keys):
    a, b = _pair(keys / "a", keys / "a")
    assert a.sock.version() == "TLSv1.3" and b.sock.version() == "TLSv1.3"
    n = b.send([torch.randint(0, 2, (1000,))], bits=1)
    assert n == 125 and a.recv()[0].shape == (1000,)
    c = b.counters()
    assert c["sent_payload"] == 125 and c["sent_frame"] > 125
    a.close(), b.close()


def test_a_certificate_from_another_ca_is_refused(keys):
    with pytest.raises(PeerError, match="certificate of p0 .* is refused"):
        _pair(keys / "a", keys / "b")          # the client does not trust the server's CA


def test_a_certificate_for_another_role_is_refused(keys):
    with pytest.raises(PeerError, match="certificate of p1 .* is refused"):
        _pair(keys / "a", keys / "a", expect="p1")   # p0's certificate presented where p1 is expected


def test_oversized_malformed_and_late_frames(keys):
    a, b = _pair(keys / "a", keys / "a", max_frame=4096, timeout=1.0)
    b.where = lambda: "stage decode, layer 2"
    a.where = b.where
    b.sock.sendall(struct.pack("<Q", 10 ** 9))
    with pytest.raises(PeerError, match="p1 sent an oversized frame .* at stage decode, layer 2"):
        a.recv()
    a.close(), b.close()
    a, b = _pair(keys / "a", keys / "a", timeout=1.0)
    b.sock.sendall(struct.pack("<Q", 6) + b"\x02\x00\x00\x00{x")
    with pytest.raises(PeerError, match="p1 sent a malformed frame"):
        a.recv()
    with pytest.raises(PeerError, match="p1 sent a malformed frame"):
        a.send([torch.zeros(1)])    # a failed link repeats its first error
    a.close(), b.close()
    a, b = _pair(keys / "a", keys / "a", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="no message from p1 within 1 s"):
        a.recv()
    assert time.monotonic() - t0 < scaled(3)
    a.close(), b.close()


def _idle_sockets(port: int, n: int = 2) -> list:
    """n TCP connections to a listener that never speak (no TLS hello): a port scan, a stuck peer."""
    import socket

    out = []
    deadline = time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        try:
            out.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            time.sleep(0.05)
    return out


def test_idle_connections_do_not_stall_the_listener(keys):
    """Two idle connections before the real peer (issue 22, T1): the listener's handshakes are concurrent
    with a short timeout each, so the peer is accepted at once (before: one handshake at a time, each
    waiting min(timeout, 30 s) on the idle socket, and the peer was never reached)."""
    lst = Listener("p0", "127.0.0.1", 0, server_context(keys / "a", "p0"))
    idle = _idle_sockets(lst.address[1])
    got = {}
    th = threading.Thread(target=lambda: got.update(_catch(lambda: lst.accept({"p1"}, 15)) or {}), daemon=True)
    th.start()
    c = connect("p1", "p0", "127.0.0.1", lst.address[1], client_context(keys / "a", "p1"), 15)
    th.join(20)
    lst.close()
    assert "p1" in got, got      # before: "no connection from p1 within 15 s" (the first idle socket held 15 s)
    c.close(), got["p1"].close(), [s.close() for s in idle]


def _huge_words_body() -> bytes:
    """A 1-byte packed tensor whose header names 2^40 words (8 TiB once unpacked)."""
    body = encode([torch.zeros(4, dtype=torch.int64)], bits=1, packed=4).body
    (hlen,) = struct.unpack_from("<I", body)
    head = json.loads(body[4:4 + hlen])
    head["$l"][0]["shape"] = [1 << 40]
    new = json.dumps(head).encode()
    return struct.pack("<I", len(new)) + new + body[4 + hlen:]


def test_a_header_naming_a_huge_tensor_is_refused_in_one_line(keys):
    """issue 22, T2: a small frame whose header names 2^40 words made the receiver allocate 8 TiB
    (MemoryError traceback); now a malformed frame naming the peer."""
    with pytest.raises(WireError, match="names 1099511627776 words for 1 bytes"):
        decode(_huge_words_body())
    a, b = _pair(keys / "a", keys / "a", timeout=2.0)
    body = _huge_words_body()
    b.sock.sendall(struct.pack("<Q", len(body)) + body)
    with pytest.raises(PeerError, match="p1 sent a malformed frame: .*names 1099511627776 words"):
        a.recv()
    a.close(), b.close()


def test_handshake_names_the_differing_keys(keys):
    a, b = _pair(keys / "a", keys / "a")
    mine = dict(config_sha256="x", config={"engine.frac_bits": 16, "seed": 1})
    theirs = dict(config_sha256="y", config={"engine.frac_bits": 18, "seed": 1})
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("e", _catch(lambda: handshake(b, theirs))), daemon=True)
    th.start()
    with pytest.raises(PeerError, match="config mismatch with p1, refusing: engine.frac_bits: 16 here, 18 at p1"):
        handshake(a, mine)
    th.join(5)
    a.close(), b.close()


def test_handshake_refuses_a_peer_of_another_protocol(keys):
    """A role of another release (another protocol number, or none: before the number existed) is refused
    before any config comparison: its messages could mean something else (e.g. the dealer's mask bits)."""
    for other in (2, None):
        a, b = _pair(keys / "a", keys / "a")
        hello = dict(config_sha256="x", config={})
        theirs = dict(hello, protocol=other)
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("e", _catch(lambda: handshake(b, theirs))), daemon=True)
        th.start()
        with pytest.raises(PeerError, match=f"p1 speaks protocol {other!r}, this process 3 .another comet release"):
            handshake(a, hello)
        th.join(5)
        a.close(), b.close()


def _catch(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return e


def test_keys_are_not_overwritten(tmp_path):
    make_keys(tmp_path)
    with pytest.raises(CometError, match="already holds keys"):
        make_keys(tmp_path)
    (tmp_path / "dealer.key").chmod(0o644)        # an old key made readable by others
    make_keys(tmp_path, overwrite=True)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "dealer.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=dealer"
    assert all((tmp_path / f"{r}.key").stat().st_mode & 0o777 == 0o600 for r in ROLES)   # issue 22, K1
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_a_one_run_ca_keeps_no_ca_key_and_readable_keys_are_refused(tmp_path):
    """issue 22, K1: run-experiment's one-run CA never stores ca.key; a private key that others may read
    is refused on load in one line."""
    from comet_core.comm.keys import check_keys

    make_keys(tmp_path, keep_ca_key=False)
    assert not (tmp_path / "ca.key").exists() and (tmp_path / "ca.pem").exists()
    check_keys(tmp_path, "p0")
    (tmp_path / "p0.key").chmod(0o644)
    with pytest.raises(CometError, match=r"role p0: the private key .*p0.key may be read by others \(mode 0644\); `chmod 600"):
        check_keys(tmp_path, "p0")


# -- roles as threads: what a party holds, and faults ---------------------------------------------------


def test_roles_run_and_a_party_receives_only_its_own_shares(tmp_path, keys, monkeypatch):
    cfg = _ports(_cfg(tmp_path))
    seen: dict = {"p0": [], "p1": []}
    orig = SocketPipe.recv

    def rec(self):
        obj = orig(self)
        if self.me in seen and self.peer == "owner" and "share" in obj:
            seen[self.me].append(obj["share"])
        return obj
    monkeypatch.setattr(SocketPipe, "recv", rec)
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path)
    assert rc == {r: 0 for r in ROLES}, {r: _err(tmp_path, r) for r in ROLES}
    client = json.loads((tmp_path / "client" / "result.json").read_text())
    p0 = json.loads((tmp_path / "p0" / "result.json").read_text())
    assert p0["placeholder_tokens"] == [0, 0] and len(client["tokens"]) == 2
    # the owner's shares: each party got one half; only their sum is the weight
    from comet_core.models.weights import extract
    from comet_core.models.zoo import load_plain_model
    from comet_core.mpc import ring

    plain, _ = load_plain_model(cfg.model, seed=cfg.model_seed)
    pw = extract(plain, "opt", "relu")
    flat = [t for layer in pw.layers for t in layer.values()] + list(pw.globals.values())
    assert len(seen["p0"]) == len(seen["p1"]) == len(flat)
    for s0, s1, w in zip(seen["p0"], seen["p1"], flat):
        enc = ring.encode(w.double(), 16)
        assert torch.equal(s0 + s1, enc) and not torch.equal(s0, enc) and not torch.equal(s1, enc)
    led = pd.read_csv(tmp_path / "p0" / "ledger.csv.gz")
    sent = p0["links"]["p1"]["sent_payload"]
    assert sent == led[(led.phase == "online") & (led.sender == "P0")].bytes.sum()


def test_a_run_completes_with_two_idle_connections_to_p0(tmp_path, keys):
    """Two idle connections to P0's port as it starts listening (issue 22, T1): the run still completes."""
    cfg = _ports(_cfg(tmp_path, timeout_s=20))
    idle: list = []
    th = threading.Thread(target=lambda: idle.extend(_idle_sockets(int(cfg.transport.ports.p0))), daemon=True)
    th.start()
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path)
    th.join(5)
    assert len(idle) == 2
    assert rc == {r: 0 for r in ROLES}, {r: _err(tmp_path, r) for r in ROLES}
    for s in idle:
        s.close()


def test_config_mismatch_stops_every_role(tmp_path, keys):
    cfg = _ports(_cfg(tmp_path))
    cfg.transport.connect_timeout_s = 8.0   # roles the refusing party never reached give up after this
    other = cfg.copy()
    other.engine.frac_bits = 18
    t0 = time.monotonic()
    rc = _run_threads({**{r: cfg for r in ROLES}, "dealer": other}, {r: keys / "a" for r in ROLES}, tmp_path)
    assert time.monotonic() - t0 < scaled(30)
    assert rc["dealer"] == 2 and rc["p0"] == 2 and rc["p1"] == 2
    assert "config mismatch" in _err(tmp_path, "dealer") and "engine.frac_bits" in _err(tmp_path, "dealer")


def test_wrong_certificate_stops_every_role(tmp_path, keys):
    cfg = _ports(_cfg(tmp_path))
    cfg.transport.connect_timeout_s = 8.0
    t0 = time.monotonic()
    rc = _run_threads({r: cfg for r in ROLES}, {**{r: keys / "a" for r in ROLES}, "p1": keys / "b"}, tmp_path)
    assert time.monotonic() - t0 < scaled(30)
    assert all(rc[r] == 2 for r in ROLES), rc
    assert "certificate of p0" in _err(tmp_path, "p1")
    assert "no connection from" in _err(tmp_path, "p0") and "p1" in _err(tmp_path, "p0")


@pytest.mark.parametrize("fault", ["malformed", "oversized"])
def test_a_bad_frame_from_the_dealer_stops_the_parties(tmp_path, keys, fault):
    """A fake dealer passes the handshake, then answers the first request with a bad frame."""
    from comet_core.roles.party import config_hash, flat_config

    cfg = _ports(_cfg(tmp_path))
    flat = flat_config(cfg)

    def fake_dealer():
        ctx = client_context(keys / "a", "dealer")
        pipes = []
        for p in ("p0", "p1"):
            s = connect("dealer", p, "127.0.0.1", int(cfg.transport.ports[p]), ctx, 30)
            pipes.append(SocketPipe(s, "dealer", p, 1 << 20, 30))
            handshake(pipes[-1], dict(role="dealer", config_sha256=config_hash(flat), config=flat))
        for pipe in pipes:
            _catch(pipe.recv)
            frame = struct.pack("<Q", 1 << 40) if fault == "oversized" else struct.pack("<Q", 5) + b"\x01\x00\x00\x00["
            pipe.sock.sendall(frame)
        time.sleep(1)
    th = threading.Thread(target=fake_dealer, daemon=True)
    th.start()
    t0 = time.monotonic()
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path, skip=("dealer",))
    th.join(10)
    assert time.monotonic() - t0 < scaled(30)
    assert rc["p0"] == 2 and rc["p1"] == 2
    line = _err(tmp_path, "p0")
    assert (f"dealer sent an {fault} frame" if fault == "oversized" else "dealer sent a malformed frame") in line
    assert "stage setup" in line or "stage prefill" in line, line


# -- real processes ----------------------------------------------------------------------------------------


def test_run_experiment_over_tcp_equals_inprocess(tmp_path):
    from experiments.run import run

    cfg = _cfg(tmp_path)
    s = run(cfg, tmp_path / "run")
    t = s["transport"]
    assert t["tokens_equal_inprocess"] and t["ledger_equal_inprocess"] and t["recv_check"]
    assert t["weights_equal_reference"] and t["unpacked_excess_bytes"] == 0
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    assert tot.socket_bytes == tot.online_bytes > 0 and tot.tls_overhead_bytes > 0 and tot.frame_overhead_bytes > 0
    for ph in ("prefill", "decode"):
        row = m[(m.network == "lan") & (m.phase == ph)].iloc[0]
        assert row.socket_bytes == row.online_bytes
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert set(info["transport"]["roles"]) == set(ROLES)
    assert all(v["pid"] > 0 and v["address"] for v in info["transport"]["roles"].values())
    assert (tmp_path / "run" / "COMPLETE").exists()
    roles = tmp_path / "run" / "roles"      # issue 22, V1: only the client's config holds the prompt
    assert "To be" in (roles / "client.yaml").read_text() and "To be" not in (roles / "config.yaml").read_text()
    keys = tmp_path / "run" / "keys"        # issue 22, K1: certificates only, no private key
    assert (keys / "p0.pem").exists() and not list(keys.glob("*.key"))


@pytest.mark.parametrize("system", ["iron", "bolt"])
def test_he_linear_over_tcp_equals_inprocess(tmp_path, system):
    """system.linear=he over tcp (issue 26): the model owner hands P0 the linear layers' weights in the clear
    (P1 a zero share: Iron's and BOLT's server is the model owner); P1's keys and encrypted shares and P0's
    masked results cross the P0-P1 socket as serialised bytes, booked at their lengths, so the socket payload
    equals the ledger's online bytes in every stage; tokens equal the in-process run, and its ledger up to
    the serialised rows' few bytes of zstd (same counts per round, bytes within 0.2%: tcp_run.ledgers_match)."""
    pytest.importorskip("tenseal")
    from experiments.run import run

    s = run(_cfg(tmp_path, f"system={system}", "system.linear=he"), tmp_path / "run")
    t = s["transport"]
    assert t["tokens_equal_inprocess"] and t["ledger_equal_inprocess"] and t["recv_check"]
    assert t["weights_equal_reference"] and t["unpacked_excess_bytes"] == 0
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for ph in ("total", "prefill", "decode"):   # the ideal functionalities' modelled bytes are not sent
        row = m[(m.network == "lan") & (m.phase == ph)].iloc[0]
        assert row.socket_bytes == row.online_bytes_measured > 0 and row.online_bytes_model > 0, ph
    led = pd.read_csv(tmp_path / "run" / "ledger.csv.gz", keep_default_na=False)
    assert set(led[led.phase == "setup"].receiver) == {"P0", "P1"}   # the linear layers' weights go to P0
    he = led[(led.protocol == "he.linear") & (led.cost_source == "measured")]
    assert len(he) and set(he.sender) == {"P0", "P1"}
    assert s["match"], s["max_logit_err"]              # the private tokens are the plaintext reference's


def test_ledgers_match_tolerates_only_serialised_lengths():
    """tcp_run.ledgers_match: a serialised row a few bytes longer matches; a ciphertext more, a Beaver row's
    byte or a serialised row 1% longer does not (positive controls)."""
    from comet_core.comm.ledger import COLUMNS
    from comet_core.roles.tcp_run import ledgers_match

    rows = [("online", "prefill", 0, "attn.qkv", "he.linear", "P1", "P0", 2, 8 * 370_229, 740_458, 5, "measured"),
            ("online", "prefill", 0, "attn.qkv", "arith.mul", "P0", "P1", 64, 64, 512, 6, "measured")]
    a = pd.DataFrame(rows, columns=COLUMNS)
    b = a.copy()
    b.loc[0, ["bits", "bytes"]] = [8 * 370_231, 740_462]
    assert ledgers_match(a, b)
    for col, val in (("elements", 3), ("bytes", 7_478_000)):
        c = a.copy()
        c.loc[0, col] = val
        assert not ledgers_match(a, c), col
    d = a.copy()
    d.loc[1, "bytes"] = 513
    assert not ledgers_match(a, d)


def _start_faulty_tcp_run(out: Path):
    """A tcp run of six tokens whose roles a test then disturbs (short timeouts, no in-process check)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cli.main", "run-experiment", f"output_dir={out}", "model=tiny-opt", "model.layers=1",
           "gen_tokens=6", "prompt=To be", "transport=tcp", "transport.timeout_s=8", "transport.connect_timeout_s=20",
           "transport.check_inprocess=false", "force=true"]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_party_fails_the_run_within_the_timeout(tmp_path):
    """P1 is killed (SIGKILL) right after its handshakes: one line naming it, the folder is not complete."""
    out = tmp_path / "run"
    proc = _start_faulty_tcp_run(out)
    t0 = time.monotonic()
    killed = False
    while proc.poll() is None and time.monotonic() - t0 < scaled(120):
        for log in tmp_path.glob(".run.tmp-*/roles/p1.log"):
            text = log.read_text()
            if not killed and "handshake with owner ok" in text:
                import re

                pid = int(re.search(r"role p1 is pid (\d+)", text).group(1))
                os.kill(pid, signal.SIGKILL)     # the role process this run started (its own log names it)
                killed = True
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=scaled(60))
    assert killed, stderr
    assert proc.returncode != 0
    assert "p1 was killed" in stderr and "Traceback" not in stderr, stderr
    assert not (out / "COMPLETE").exists()


def test_a_hung_party_is_named_as_hung(tmp_path):
    """issue 22: P1 stopped (SIGSTOP) right after its handshakes. Before, the dealer's wait for P0 (which
    waited for P1) ran out first and the run ended after the launcher's grace with "p1 was killed
    (signal 9); p0: dealer stopped: no message from p0", naming the clean-up. Now the services wait twice
    transport.timeout_s, P0's own wait names P1, and the launcher kills the silent P1 as hung."""
    import re

    out = tmp_path / "run"
    proc = _start_faulty_tcp_run(out)
    t0 = time.monotonic()
    pid = None
    try:
        while proc.poll() is None and time.monotonic() - t0 < 120:
            for log in tmp_path.glob(".run.tmp-*/roles/p1.log"):
                text = log.read_text()
                if pid is None and "handshake with owner ok" in text:
                    pid = int(re.search(r"role p1 is pid (\d+)", text).group(1))
                    os.kill(pid, signal.SIGSTOP)     # the role process this run started (its own log names it)
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert pid is not None, stderr
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert "p1 hung: it sent nothing for 8 s (p0: no message from p1 within 8 s" in stderr, stderr
    assert not (out / "COMPLETE").exists()


def test_an_ideal_functionality_runs_through_the_dealer(tmp_path, keys):
    """system=iron: the parties hand their shares to the dealer process (the trusted party); tokens and
    ledger equal the in-process run."""

    cfg = _ports(_cfg(tmp_path, "system=iron"))
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path)
    assert rc == {r: 0 for r in ROLES}, {r: _err(tmp_path, r) for r in ROLES}
    led = _equals_inprocess(cfg, tmp_path)
    assert (led.cost_source == "model").any()


def test_only_the_clients_config_holds_the_prompt(tmp_path):
    """issue 22, V1: the launcher wrote the prompt into every role's config; now only the client's. Every
    role's config passes that role's checks (the others need no prompt), and all hash alike."""
    from comet_core.roles.party import config_hash, flat_config, load_config
    from experiments.run import validate_config
    from comet_core.roles.tcp_run import role_configs

    cfg = _cfg(tmp_path, "prompt=a secret prompt")
    files = role_configs(cfg, tmp_path)
    for role, f in files.items():
        text = f.read_text()
        assert ("a secret prompt" in text) == (role == "client"), role
        loaded = load_config(str(f))
        validate_config(loaded, role=role)
        assert config_hash(flat_config(loaded)) == config_hash(flat_config(load_config(str(files["client"]))))


def test_a_reused_party_out_is_refused_or_cleared(tmp_path, capsys):
    """issue 22, T3: a reused `comet party --out` kept an old result.json beside the new error.txt. Now
    it is refused in one line before any work (the old files untouched), or cleared with --overwrite."""
    from comet_core.roles.party import main

    cfg = _ports(_cfg(tmp_path))
    out = tmp_path / "p0"
    out.mkdir()
    (out / "result.json").write_text("{}\n")
    assert main("p0", cfg, str(tmp_path / "nokeys"), str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds an earlier run's result.json" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    assert main("p0", cfg, str(tmp_path / "nokeys"), str(out), overwrite=True) == 2   # missing keys: fails
    assert sorted(p.name for p in out.iterdir()) == ["error.txt"] and "missing key files" in _err(tmp_path, "p0")


def test_party_config_from_overrides_hashes_like_the_launchers_file(tmp_path):
    """Two machines compose the config from overrides; run-experiment passes a saved file: same hash.
    Keys that may differ per role (output_dir, the prompt, keys_dir) are not hashed."""
    from omegaconf import OmegaConf

    from comet_core.roles.party import compose, config_hash, flat_config, load_config

    over = ["transport=tcp", "model=tiny-opt", "seed=2", "transport.ports.p0=29500", "transport.ports.p1=29501"]
    a = compose(over)
    OmegaConf.save(a, tmp_path / "c.yaml", resolve=False)
    b = load_config(str(tmp_path / "c.yaml"))
    c = compose([*over, "prompt=secret text", "transport.keys_dir=/elsewhere", "output_dir=x"])
    assert config_hash(flat_config(a)) == config_hash(flat_config(b)) == config_hash(flat_config(c))
    assert "prompt" not in flat_config(a)
    d = compose([*over[:-1], "transport.ports.p1=29502"])
    assert config_hash(flat_config(d)) != config_hash(flat_config(a))


def test_comet_party_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "cli.main", "party", "--role", "p0", "transport=tcp",
                        "transport.ports.p0=29500", "transport.ports.p1=29501", f"transport.keys_dir={tmp_path}",
                        "--out", str(tmp_path / "out")],   # not the default party-p0/ in the repository
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [ln for ln in r.stderr.splitlines() if "error" in ln.lower() and "INFO" not in ln]
    assert len(errors) == 1 and "missing key files" in errors[0] and "comet keys" in errors[0]


# -- system=comet: the predictors come from the owner process -------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictors(tmp_path_factory):
    from tests.test_comet import make_predictors

    tmp = tmp_path_factory.mktemp("pred")
    return make_predictors(_cfg(tmp).model, tmp / "tiny-opt.pt")


@pytest.fixture(scope="module")
def tiny_block2_predictors(tmp_path_factory):
    """Predictors of blocks of 2 neurons (system.block=2)."""
    from tests.test_comet import make_predictors

    tmp = tmp_path_factory.mktemp("pred2")
    return make_predictors(_cfg(tmp).model, tmp / "tiny-opt-block2.pt", block=2)


def test_comet_parties_hold_one_half_of_each_predictor_weight(tmp_path, keys, tiny_predictors, monkeypatch):
    """system=comet with heads: only the owner reads the predictor checkpoint; each party receives one
    half of every model and predictor weight (their sum is the weight); tokens and ledger equal in-process."""
    import comet_core.sparse.predictors as P
    from comet_core.mpc import ring
    from comet_core.predictor.checkpoint import load_predictors

    cfg = _ports(_cfg(tmp_path, "system=comet", f"system.predictor_checkpoint={tiny_predictors}"))
    loaded_by: list = []
    orig_load = P.load_for_system
    monkeypatch.setattr(P, "load_for_system", lambda *a: loaded_by.append(threading.current_thread().name) or orig_load(*a))
    seen: dict = {"p0": [], "p1": [], "public": []}
    orig = SocketPipe.recv

    def rec(self):
        obj = orig(self)
        if self.me in ("p0", "p1") and self.peer == "owner" and isinstance(obj, dict):
            if "share" in obj:
                seen[self.me].append(obj["share"])
            if "public" in obj:
                seen["public"].append(obj["public"])
        return obj
    monkeypatch.setattr(SocketPipe, "recv", rec)
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path)
    assert rc == {r: 0 for r in ROLES}, {r: _err(tmp_path, r) for r in ROLES}
    assert set(loaded_by) == {"role-owner"}, loaded_by          # the parties never read the checkpoint
    from comet_core.models.weights import extract
    from comet_core.models.zoo import load_plain_model

    plain, _ = load_plain_model(cfg.model, seed=cfg.model_seed)
    pw = extract(plain, "opt", "relu")
    ps = load_predictors(tiny_predictors, cfg.model)
    preds = [dict(w1=p.w1.weight.t(), b1=p.w1.bias, w2=p.w2.weight.t(), b2=p.w2.bias) for p in ps.ffn[:1] + ps.head[:1]]
    flat = [t for layer in pw.layers for t in layer.values()] + list(pw.globals.values())
    flat += [t for p in preds for t in p.values()]
    assert len(seen["p0"]) == len(seen["p1"]) == len(flat)
    for s0, s1, w in zip(seen["p0"], seen["p1"], flat):
        enc = ring.encode(w.detach().double(), 16)
        assert torch.equal(s0 + s1, enc) and not torch.equal(s0, enc) and not torch.equal(s1, enc)
    # the public setup: ranks and thresholds only, the checkpoint's
    assert seen["public"] == [dict(ffn=[dict(rank=8, threshold=float(ps.ffn[0].threshold))],
                                   head=[dict(rank=4, threshold=float(ps.head[0].threshold))])] * 2
    led = _equals_inprocess(cfg, tmp_path)
    assert (led.op == "ffn.reveal").any() and (led.op == "attn.shuffle").any()


@pytest.mark.parametrize("extra", [(), ("system.predictor_bits=16",), ("engine.comparison=fss",),
                                   ("engine.weight_masks=deployment",), ("engine.weight_masks=request",),
                                   ("system.permutation=preprocessed",), ("system.permutation=deployment",),
                                   ("system.count_padding=bucket",), ("system.count_padding=dp",), ("system.block=2",)],
                         ids=["bits64", "bits16", "fss", "masks-deployment", "masks-request", "perm-preprocessed",
                              "perm-deployment", "pad-bucket", "pad-dp", "block2"])
def test_run_experiment_comet_over_tcp_equals_inprocess(tmp_path, tiny_predictors, tiny_block2_predictors, extra):
    """system=comet through `run-experiment transport=tcp` (real processes): tokens, ledger and revealed
    masks equal the in-process run; socket payload = ledger online bytes (1-bit reveals and the shuffle's
    one-way messages packed to their width); sparsity.csv from the parties, flips from the in-process run.
    bits16: the threshold test on Z_2^16 after the local truncation (issue 25); fss: every comparison from the
    dealer's DCF keys (issue 27). Both ask the dealer process for items of their own (DEALER_ITEMS).
    The deployment regimes (issue 24): weight masks per request or per deployment, the permutation
    preprocessed or per deployment (the socket's total is the request's stages, as online_bytes), count
    padding by buckets or DP noise (the dealer's `dp_padding`; the parties record the padded count, the
    in-process check the real one) and predictors of blocks of 2 neurons."""
    from experiments.run import run

    ckpt = tiny_block2_predictors if "system.block=2" in extra else tiny_predictors
    cfg = _cfg(tmp_path, "system=comet", f"system.predictor_checkpoint={ckpt}", *extra)
    s = run(cfg, tmp_path / "run")
    t = s["transport"]
    assert t["tokens_equal_inprocess"] and t["ledger_equal_inprocess"] and t["sparsity_equal_inprocess"]
    assert t["recv_check"] and t["weights_equal_reference"] and t["unpacked_excess_bytes"] == 0
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for ph in ("total", "prefill", "decode"):
        row = m[(m.network == "lan") & (m.phase == ph)].iloc[0]
        assert row.socket_bytes == row.online_bytes > 0, ph
    for row in m[m.network == "lan"].itertuples():   # deploy, preprocess, setup and the amortised total too
        assert abs(row.socket_bytes - row.online_bytes) <= 1, row.phase
    led = pd.read_csv(tmp_path / "run" / "ledger.csv.gz", keep_default_na=False)
    assert (led[led.op == "ffn.reveal"].bits == 1).any() and (led.op == "ffn.shuffle").any()
    sp = pd.read_csv(tmp_path / "run" / "sparsity.csv")
    assert set(sp.kind) == {"ffn", "head"} and len(sp) == 2 * 2 and sp.flips.notna().all()
    assert sp.jaccard.between(0, 1).all()             # the in-process run's masks vs plaintext_predicted
    assert (tmp_path / "run" / "kv.csv").exists() and (tmp_path / "run" / "COMPLETE").exists()


# -- issue 22, D1: what the online dealer learns ------------------------------------------------------


def _dealer_rebuilds(cfg, monkeypatch, weak: bool) -> tuple[int, int]:
    """The dealer's attack on a reused weight mask's selections: every `select` index it is sent, mapped
    back through each permutation it made (it knows pi), compared with the real active neurons of the
    run. Returns (selections it rebuilt exactly, selections of 0 < k < n). `weak`: the parties do not
    relabel (sigma = identity: the code before the fix)."""
    from omegaconf import open_dict

    from comet_core.mpc.dealer import Dealer
    from comet_core.mpc.engine import MPC
    from experiments.run import execute

    seen = []
    orig = Dealer.matmul_triple

    def recording(self, shape_a, shape_b, reuse_key=None, select=None):
        if select is not None:
            seen.append((select[1].clone(), [self.permutation(h) for h in self._perms]))
        return orig(self, shape_a, shape_b, reuse_key=reuse_key, select=select)
    monkeypatch.setattr(Dealer, "matmul_triple", recording)
    if weak:
        monkeypatch.setattr(MPC, "relabel", lambda self, n: torch.arange(n))
    sim = cfg.copy()
    with open_dict(sim):
        sim.transport.name = "inprocess"
        sim.engine.reuse_weight_masks = True
    o = execute(sim)
    monkeypatch.undo()
    real = [set(torch.nonzero(r.real_mask).flatten().tolist()) for r in o.system.state.records if r.kind == "ffn"]
    rebuilt = tried = 0
    for idx, perms in seen:
        for pi in perms:
            if 0 < idx.numel() < pi.numel() and int(idx.max()) < pi.numel():
                tried += 1
                rebuilt += set(pi[idx].tolist()) in real
    return rebuilt, tried


def test_the_dealer_cannot_rebuild_the_active_neurons_from_reused_mask_selections(tmp_path, tiny_predictors, monkeypatch):
    """issue 22, D1: with reused weight masks the parties ask the dealer for a triple of the selected rows
    or columns; the dealer made pi, so before the fix it rebuilt the real active neurons from those
    indices (the positive control, sigma = identity, shows the attack working). The parties now relabel
    every permutation by sigma from their P0-P1 key: the same attack rebuilds none."""
    cfg = _cfg(tmp_path, "system=comet", f"system.predictor_checkpoint={tiny_predictors}", "gen_tokens=3")
    weak_rebuilt, weak_tried = _dealer_rebuilds(cfg, monkeypatch, weak=True)
    assert weak_tried > 0 and weak_rebuilt > 0, "the positive control (no relabelling) must be caught"
    rebuilt, tried = _dealer_rebuilds(cfg, monkeypatch, weak=False)
    assert tried > 0 and rebuilt == 0, (rebuilt, tried)


def test_the_dealer_serves_only_its_items():
    """issue 22, D1: the dealer process served any public Dealer method by name, `permutation` (pi itself)
    included; now only DEALER_ITEMS, anything else stops the run in one line."""
    from comet_core.roles.remote import DEALER_ITEMS, DealerService
    from comet_core.mpc.engine import EngineConfig

    assert "permutation" not in DEALER_ITEMS
    svc = DealerService(EngineConfig(), 3, "cpu", 5.0)
    for r in (0, 1):   # a served item works (positive control)
        got = svc.handle(r, {"op": "dealer", "name": "new_permutation", "args": [8, 0], "kwargs": {}})
        assert got["result"].shape == (1, 8)
    for name in ("permutation", "blocked_matmul_triple", "_rand", "ideal"):
        with pytest.raises(PeerError, match=f"P0 asked the dealer for {name!r}, which it does not serve"):
            svc.handle(0, {"op": "dealer", "name": name, "args": [0], "kwargs": {}})


def test_p0_and_p1_agree_on_their_relabelling_without_a_seed(tmp_path, keys, tiny_predictors, monkeypatch):
    """seed=null (OS keys in every process): P0 draws the P0-P1 key and sends it to P1 in its hello over
    their TLS link, so both relabel alike (sigma); the dealer's, client's and owner's hellos carry no key."""
    from comet_core.mpc.engine import MPC

    cfg = _ports(_cfg(tmp_path, "system=comet", f"system.predictor_checkpoint={tiny_predictors}", "seed=null"))
    sigmas: dict = {}
    orig = MPC.relabel
    monkeypatch.setattr(MPC, "relabel", lambda self, n: sigmas.setdefault(self.rank, []).append(orig(self, n))
                        or sigmas[self.rank][-1])
    hellos: list = []
    import comet_core.comm.tls as tls

    real_hs = tls.handshake
    monkeypatch.setattr(tls, "handshake", lambda pipe, hello: hellos.append((pipe.me, pipe.peer, dict(hello)))
                        or real_hs(pipe, hello))
    rc = _run_threads({r: cfg for r in ROLES}, {r: keys / "a" for r in ROLES}, tmp_path)
    assert rc == {r: 0 for r in ROLES}, {r: _err(tmp_path, r) for r in ROLES}
    assert sigmas[0] and len(sigmas[0]) == len(sigmas[1])
    assert all(torch.equal(a, b) for a, b in zip(sigmas[0], sigmas[1]))
    with_key = {(me, peer) for me, peer, h in hellos if "pair_key" in h}
    assert with_key == {("p0", "p1")}, with_key

