"""Links between role processes: TLS 1.3 with mutual authentication, length-prefixed frames, counted bytes.

`SocketPipe` has the interface of `QueuePipe` (send / recv) over one TLS connection:
  * frame = u64 little-endian body length | body (wire.py: JSON header + safetensors, never pickle);
  * a frame longer than `max_frame` bytes, a body that does not decode, no frame within `timeout_s`, or
    a closed connection is a `PeerError` naming the peer's role and the step (`pipe.where()`);
  * counters: payload bytes (packed tensor bytes, what the ledger counts), frame bytes (payload plus the
    length prefix and headers), and the TCP payload the kernel moved (TCP_INFO: TLS records included),
    so that TLS overhead = tcp - frame and frame overhead = frame - payload;
  * an optional `shaper` (link emulation, another module) is called as `shaper.before_send(nbytes)`
    before each frame is written.

Contexts (`server_context`, `client_context`): TLS 1.3 minimum, CERT_REQUIRED on both sides, the CA of
`comet keys`. A connecting side names the role it expects (`server_hostname=role`: the certificate must
carry that DNS name); an accepting side reads the role from the client certificate's CN and accepts
only the roles it expects.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import struct
import threading
import time

from comet_core.comm.channel import PeerError
from comet_core.comm.keys import check_keys
from comet_core.comm.wire import WireError, decode, encode

log = logging.getLogger(__name__)

_LEN = struct.Struct("<Q")
STOP_POLL_S = 0.5


def server_context(keys_dir, role: str) -> ssl.SSLContext:
    ca, cert, key = check_keys(keys_dir, role)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    return ctx


def client_context(keys_dir, role: str) -> ssl.SSLContext:
    ca, cert, key = check_keys(keys_dir, role)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True          # the server's certificate must name the role we asked for
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    return ctx


def peer_role(sock: ssl.SSLSocket) -> str:
    """The CN of the (verified) peer certificate."""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


def tcp_bytes(sock) -> tuple[int, int]:
    """(bytes acked by the peer, bytes received) of a TCP socket from Linux TCP_INFO (-1, -1 elsewhere)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return -1, -1
    if len(raw) < 136:
        return -1, -1
    return struct.unpack_from("<QQ", raw, 120)   # tcpi_bytes_acked, tcpi_bytes_received


class SocketPipe:
    """One end of a TLS link carrying frames (the QueuePipe interface)."""

    packs = True   # PartyChannel passes each message's ledger width (bits, packed) to send

    def __init__(self, sock: ssl.SSLSocket, me: str, peer: str, max_frame: int, timeout_s: float,
                 shaper=None, where=None) -> None:
        self.sock, self.me, self.peer = sock, me, peer
        self.max_frame, self.timeout_s = int(max_frame), float(timeout_s)
        self.shaper = shaper
        self.where = where or (lambda: "")
        self.share_context = None   # shares received are rebuilt on this (a party's engine; wire.decode)
        self.sent_payload = self.recv_payload = 0
        self.sent_frame = self.recv_frame = 0
        self.unpacked_excess = 0
        self.closed = False
        self.failed: PeerError | None = None   # the first error on this link: every later use repeats it
        self.stop = None   # callable -> reason or None: checked every STOP_POLL_S while waiting for a frame
        self.since = None  # callable -> monotonic time a wait's timeout counts from (None: the wait's start)
        sock.settimeout(self.timeout_s)

    def _at(self) -> str:
        w = self.where()
        return f" at {w}" if w else ""

    def send(self, obj, bits=None, packed: int | None = None) -> int:
        """Send one message; returns its payload bytes."""
        if self.failed is not None:
            raise self.failed
        try:
            return self._send(obj, bits, packed)
        except PeerError as e:
            self.failed = e
            raise

    def recv(self):
        """The next message (PeerError if none comes in time, the link closed, or the frame is bad)."""
        if self.failed is not None:
            raise self.failed
        try:
            return self._recv()
        except PeerError as e:
            self.failed = e
            raise

    def _send(self, obj, bits, packed) -> int:
        enc = encode(obj, bits, packed)
        if len(enc.body) > self.max_frame:
            raise PeerError(f"{self.me}: a message to {self.peer} of {len(enc.body)} bytes exceeds "
                            f"transport.max_frame_bytes={self.max_frame}{self._at()}; raise the limit")
        frame = _LEN.pack(len(enc.body)) + enc.body
        if self.shaper is not None:
            self.shaper.before_send(len(frame))
        try:
            self.sock.sendall(frame)
        except socket.timeout:
            raise PeerError(f"{self.peer} did not take a message within {self.timeout_s:g} s{self._at()}") from None
        except (OSError, ssl.SSLError) as e:
            raise PeerError(f"the link to {self.peer} broke{self._at()} ({_reason(e)}): it stopped") from None
        self.sent_payload += enc.payload
        self.sent_frame += len(frame)
        self.unpacked_excess += enc.unpacked_excess
        return enc.payload

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        start = time.monotonic()
        while len(buf) < n:
            left = (self.since() if self.since is not None else start) + self.timeout_s - time.monotonic()
            if left <= 0:
                raise socket.timeout
            if self.stop is not None:   # a service thread: give up when the other party's link failed
                why = self.stop()
                if why:
                    raise PeerError(why)
            self.sock.settimeout(left if self.stop is None else min(left, STOP_POLL_S))
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _recv(self):
        try:
            head = self._read(_LEN.size)
            (n,) = _LEN.unpack(head)
            if n > self.max_frame:
                raise PeerError(f"{self.peer} sent an oversized frame ({n} bytes > transport.max_frame_bytes="
                                f"{self.max_frame}){self._at()}")
            body = self._read(n)
        except socket.timeout:
            raise PeerError(f"no message from {self.peer} within {self.timeout_s:g} s{self._at()} "
                            "(transport.timeout_s)") from None
        except EOFError:
            raise PeerError(f"{self.peer} closed the link{self._at()}: it stopped") from None
        except (OSError, ssl.SSLError) as e:
            raise PeerError(f"the link to {self.peer} broke{self._at()} ({_reason(e)})") from None
        try:
            obj, payload = decode(body, self.share_context)
        except WireError as e:
            raise PeerError(f"{self.peer} sent a malformed frame{self._at()}: {e}") from None
        except MemoryError:   # a frame within max_frame whose tensors do not fit this machine's memory
            raise PeerError(f"{self.peer} sent a frame of {n} bytes whose tensors do not fit in memory{self._at()}") \
                from None
        self.recv_payload += payload
        self.recv_frame += _LEN.size + n
        if isinstance(obj, dict) and "$error" in obj:
            raise PeerError(f"{self.peer} stopped: {obj['$error']}")
        return obj

    def send_error(self, message: str) -> None:
        """Tell the peer why this process stops (best effort)."""
        try:
            self.sock.settimeout(2.0)
            enc = encode({"$error": str(message)[:500]})
            self.sock.sendall(_LEN.pack(len(enc.body)) + enc.body)
        except Exception:  # noqa: BLE001 - the link may already be gone
            pass

    def counters(self) -> dict:
        acked, received = tcp_bytes(self.sock)
        return dict(peer=self.peer, sent_payload=self.sent_payload, recv_payload=self.recv_payload,
                    sent_frame=self.sent_frame, recv_frame=self.recv_frame, unpacked_excess=self.unpacked_excess,
                    tcp_acked=acked, tcp_received=received)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _reason(e: BaseException) -> str:
    text = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).splitlines()[0][:160]


# -- making links ------------------------------------------------------------------------------------


HANDSHAKE_TIMEOUT_S = 10.0   # one TLS handshake (milliseconds when the peer is a comet role)
MAX_PENDING = 32             # handshakes in progress at once; further connections are closed at once


class Listener:
    """A listening socket that accepts TLS connections from the given roles.

    Each connection's TLS handshake runs in its own thread with a short timeout (HANDSHAKE_TIMEOUT_S), so
    idle or unauthenticated connections (a port scan, a peer that never speaks) cannot hold up the roles
    the run waits for: they are dropped after that timeout, or at once beyond MAX_PENDING."""

    def __init__(self, me: str, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.me, self.ctx = me, ctx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, int(port)))
        except OSError as e:
            self.sock.close()
            raise PeerError(f"{me} cannot listen on {host}:{port} ({_reason(e)}); free the port or set "
                            f"transport.hosts.{me}") from None
        self.sock.listen(64)
        self.address = self.sock.getsockname()

    def _handshake(self, raw: socket.socket, addr, timeout_s: float, done: "queue.Queue") -> None:
        """One TLS handshake (a thread): puts (addr, conn or None, why) on `done`."""
        raw.settimeout(timeout_s)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            done.put((addr, None, f"TLS handshake from {addr[0]}:{addr[1]} failed: {_reason(e)}"))
            return
        done.put((addr, conn, ""))

    def accept(self, roles: set[str], timeout_s: float, each=None) -> dict[str, ssl.SSLSocket]:
        """Accept one connection from each role within timeout_s; others are refused and logged.
        `each(role, sock)` runs on every accepted connection at once (the hello: a mismatch stops here)."""
        got: dict[str, ssl.SSLSocket] = {}
        done: queue.Queue = queue.Queue()
        pending = 0
        deadline = time.monotonic() + timeout_s
        last = ""
        try:
            while set(got) != roles:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = ", ".join(sorted(roles - set(got)))
                    raise PeerError(f"{self.me}: no connection from {missing} within {timeout_s:g} s"
                                    + (f" (last refused: {last})" if last else ""))
                while True:   # finished handshakes first
                    try:
                        addr, conn, why = done.get_nowait()
                    except queue.Empty:
                        break
                    pending -= 1
                    if conn is None:
                        last = why
                        log.warning("%s: %s", self.me, last)
                        continue
                    role = peer_role(conn)
                    if role not in roles or role in got:
                        last = f"{addr[0]}:{addr[1]} presented role {role!r}, expected one of {sorted(roles - set(got))}"
                        log.warning("%s: %s", self.me, last)
                        conn.close()
                        continue
                    log.info("%s: %s connected from %s:%d", self.me, role, addr[0], addr[1])
                    conn.settimeout(None)
                    got[role] = conn
                    if each is not None:
                        each(role, conn)
                if set(got) == roles:
                    break
                self.sock.settimeout(min(left, 0.05))
                try:
                    raw, addr = self.sock.accept()
                except socket.timeout:
                    continue
                if pending >= MAX_PENDING:
                    last = f"{addr[0]}:{addr[1]} closed: {MAX_PENDING} handshakes already in progress"
                    log.warning("%s: %s", self.me, last)
                    raw.close()
                    continue
                pending += 1
                threading.Thread(target=self._handshake, args=(raw, addr, max(0.5, min(left, HANDSHAKE_TIMEOUT_S)), done),
                                 name=f"{self.me}-tls-{addr[1]}", daemon=True).start()
        finally:
            while True:   # connections whose handshake finished after the last role came: not ours
                try:
                    _addr, conn, _why = done.get_nowait()
                except queue.Empty:
                    break
                if conn is not None:
                    conn.close()
        return got

    def close(self) -> None:
        self.sock.close()


def connect(me: str, role: str, host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> ssl.SSLSocket:
    """Connect to `role` at host:port (retrying while it is not up yet, up to timeout_s) and check its
    certificate names `role`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            raw = socket.create_connection((host, int(port)), timeout=max(0.5, min(left, 10.0)))
        except OSError as e:
            if left <= 0:
                raise PeerError(f"{me}: cannot reach {role} at {host}:{port} within {timeout_s:g} s "
                                f"({_reason(e)}); is it running?") from None
            time.sleep(0.1)
            continue
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(max(1.0, left))
        try:
            return ctx.wrap_socket(raw, server_hostname=role)
        except ssl.SSLCertVerificationError as e:
            raw.close()
            raise PeerError(f"{me}: the certificate of {role} at {host}:{port} is refused ({_reason(e)}): "
                            "not signed by this CA or not issued to that role") from None
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise PeerError(f"{me}: the TLS handshake with {role} at {host}:{port} failed ({_reason(e)})") from None


# What the roles' messages mean, as one number: bump it whenever a message between roles changes meaning
# with the same shape (a peer of another release would compute silently wrong values). 2: the dealer hands
# out a comparison mask's bits in the LTZ tree's leaf order (ring.leaf_order), stop 8. 3: the parties relabel
# every oblivious permutation by sigma from their P0-P1 key, which P0 sends P1 in its hello (shuffle.py).
PROTOCOL = 3


def handshake(pipe: SocketPipe, hello: dict) -> dict:
    """Both sides send their hello (protocol number, role, config hash, flattened config, model hashes),
    then compare: another protocol number (another comet release) is refused, and so is a different
    config, naming the keys that differ. Returns the peer's hello."""
    hello = {"protocol": PROTOCOL, **hello}
    pipe.send({"hello": hello})
    try:
        got = pipe.recv()
    except PeerError as e:
        if "closed" in str(e) or "broke" in str(e):
            raise PeerError(f"{pipe.me}: {pipe.peer} dropped the link during the handshake ({e}); a certificate "
                            "from another CA, or a config mismatch on its side") from None
        raise
    if not isinstance(got, dict) or not isinstance(got.get("hello"), dict):
        raise PeerError(f"{pipe.peer} did not start with a hello message")
    theirs = got["hello"]
    if theirs.get("protocol") != hello["protocol"]:
        raise PeerError(f"{pipe.me}: {pipe.peer} speaks protocol {theirs.get('protocol')!r}, this process "
                        f"{hello['protocol']!r} (another comet release); run the same release on every machine")
    if theirs.get("config_sha256") != hello["config_sha256"]:
        mine_c, their_c = hello.get("config", {}), theirs.get("config", {}) or {}
        keys = sorted(k for k in set(mine_c) | set(their_c) if mine_c.get(k) != their_c.get(k))
        shown = "; ".join(f"{k}: {mine_c.get(k)!r} here, {their_c.get(k)!r} at {pipe.peer}" for k in keys[:4])
        more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
        raise PeerError(f"{pipe.me}: config mismatch with {pipe.peer}, refusing: {shown or 'hashes differ'}{more}")
    return theirs
