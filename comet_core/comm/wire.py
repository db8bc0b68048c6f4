"""What goes on a TCP link: messages encoded without pickle, tensors packed to their ledger width.

A message is a tree of None, bool, int, float, str, lists, tuples, dicts with str keys, torch.Size,
torch tensors and shares (the share type registered from above, mpc/ashare.py's `AShare`: this module
knows no protocol type). It is encoded as

    body = u32 json_length | JSON header | safetensors blob

The JSON header holds the tree with every tensor replaced by a reference `{"$t": i, ...}` (shape, dtype,
packing); the safetensors blob holds the tensors' bytes as flat uint8 arrays. Nothing in a body can run
code on the receiver (no pickle): decoding only builds the listed containers and tensors, and a body that
does not match its header (wrong sizes, unknown dtype, bad JSON) is a `WireError`.

Packing (so that the bytes a socket carries equal the ledger's `wire_bytes(elements, bits)`):
  1. bits = 64: the int64 words as they are (8 bytes per element).
  2. `packed=n` (the words pack n fields of `bits` bits densely from bit 0, compare.py's AND tree):
     the first ceil(n * bits / 8) bytes of the little-endian words; the receiver zero-fills the rest of
     the words (bits beyond the n fields are never read by the protocol).
  3. bits < 64 otherwise (one field per word, e.g. 1-bit openings): each element's low `bits` bits,
     densely (np.packbits for 1 bit; the low bits/8 bytes of each word for a multiple of 8).
  If a tensor's words do not fit its width (case 3 with a value >= 2^bits) it is sent as whole words
  and the excess over the ledger is counted (`Encoded.unpacked_excess`): never a silent mismatch.
Payload = the tensors' packed bytes; everything else in a frame (length prefix, JSON header, safetensors
header) is frame overhead, counted apart.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from comet_core.comm.ledger import wire_bytes
from comet_core.errors import CometError

DTYPES = {"int64": torch.int64, "float64": torch.float64, "float32": torch.float32, "int32": torch.int32,
          "uint8": torch.uint8, "bool": torch.bool, "int8": torch.int8, "int16": torch.int16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DEPTH = 32


# The share type (mpc/ashare.py registers AShare at import): sent as {"$a": its .data, "frac": its .frac},
# rebuilt on the receiving link's context (a party's engine) as rebuild(data, frac, context).
_SHARE: tuple | None = None


def register_share_type(cls: type, rebuild) -> None:
    global _SHARE
    _SHARE = (cls, rebuild)


class WireError(CometError):
    """A frame that cannot be decoded (malformed, or not what the header says)."""


@dataclass
class Encoded:
    body: bytes             # what follows the length prefix
    payload: int            # tensor bytes (packed): what the ledger counts
    unpacked_excess: int    # bytes sent beyond the ledger's width (words that did not fit their bits)


# -- packing -----------------------------------------------------------------------------------------


def _pack(t: torch.Tensor, bits: int | None, packed: int | None) -> tuple[np.ndarray, dict, int]:
    """(uint8 bytes, header fields, excess bytes over the ledger) of one tensor."""
    t = t.detach().cpu()
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise WireError(f"cannot send a tensor of dtype {t.dtype}")
    words = np.ascontiguousarray(t.reshape(-1).numpy())   # numpy copes with any strides (size-1 dims)
    raw = words.view(np.uint8)
    head = {"shape": list(t.shape), "dtype": name}
    if bits is None or t.dtype != torch.int64 or (bits == 64 and packed is None):
        return raw, head, 0
    if packed is not None:
        nbytes = wire_bytes(packed, bits)
        if nbytes > raw.size:
            raise WireError(f"packed={packed} fields of {bits} bits do not fit {words.size} words")
        head.update(pack="words", nbytes=nbytes)
        return raw[:nbytes], head, 0
    n = words.size
    if bits >= 64 or (words >> np.int64(bits)).any() or (words < 0).any():
        return raw, head, max(0, raw.size - wire_bytes(n, bits))   # does not fit: whole words, excess counted
    head.update(pack="bits", bits=bits)
    if bits % 8 == 0:
        return raw.reshape(n, 8)[:, : bits // 8].reshape(-1).copy(), head, 0
    fields = ((words[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)   # (n, bits), LSB first
    return np.packbits(fields.reshape(-1), bitorder="little"), head, 0


def _unpack(data: np.ndarray, head: dict) -> torch.Tensor:
    """The tensor described by `head` from its (packed) bytes; WireError if they do not match."""
    try:
        shape = [int(s) for s in head["shape"]]
        dtype = DTYPES[head["dtype"]]
    except (KeyError, TypeError, ValueError):
        raise WireError(f"bad tensor header {str(head)[:80]}") from None
    if any(s < 0 for s in shape):
        raise WireError(f"negative tensor shape {shape}")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    itemsize = torch.empty(0, dtype=dtype).element_size()
    mode = head.get("pack")
    if mode is None:
        if data.size != n * itemsize:
            raise WireError(f"tensor of shape {shape} {head['dtype']} needs {n * itemsize} bytes, got {data.size}")
        return torch.from_numpy(data.copy()).view(dtype).reshape(shape)
    if dtype != torch.int64:
        raise WireError("only int64 tensors are packed")
    if mode == "words":
        nbytes = int(head.get("nbytes", -1))
        if data.size != nbytes or nbytes > n * 8:
            raise WireError(f"packed words: {data.size} bytes for {nbytes} announced, {n} words")
        if n > 8 * max(nbytes, 1):   # the sparsest real packing is one 1-bit field per word
            raise WireError(f"packed words: a header names {n} words for {nbytes} bytes (at most {8 * max(nbytes, 1)})")
        full = np.zeros(n * 8, np.uint8)
        full[:nbytes] = data
        return torch.from_numpy(full).view(torch.int64).reshape(shape)
    if mode == "bits":
        bits = int(head.get("bits", 0))
        if not 1 <= bits < 64 or data.size != wire_bytes(n, bits):
            raise WireError(f"packed bits: {data.size} bytes for {n} elements of {bits} bits")
        if bits % 8 == 0:
            full = np.zeros((n, 8), np.uint8)
            full[:, : bits // 8] = data.reshape(n, bits // 8)
            return torch.from_numpy(full.reshape(-1)).view(torch.int64).reshape(shape)
        fields = np.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits).astype(np.int64)
        words = (fields << np.arange(bits, dtype=np.int64)).sum(axis=1)
        return torch.from_numpy(words).reshape(shape)
    raise WireError(f"unknown packing {mode!r}")


# -- messages ----------------------------------------------------------------------------------------


def encode(obj, bits=None, packed: int | None = None) -> Encoded:
    """Encode a message. `bits` (int, or one int per top-level list item) and `packed` apply to the tensors
    of a P0-P1 message (PartyChannel); other links send whole words."""
    from safetensors.numpy import save

    blobs: dict[str, np.ndarray] = {}
    excess = 0

    def walk(o, b, depth):
        nonlocal excess
        if depth > MAX_DEPTH:
            raise WireError("message nested too deeply")
        if o is None or isinstance(o, (bool, int, float, str)):
            if isinstance(o, float) and not np.isfinite(o):
                return {"$f": repr(o)}
            return o
        if _SHARE is not None and isinstance(o, _SHARE[0]):
            return {"$a": walk(o.data, b, depth + 1), "frac": int(o.frac)}
        if isinstance(o, torch.Tensor):
            if o.is_meta:
                raise WireError("cannot send a data-free (meta) tensor")
            data, head, ex = _pack(o, b, packed)
            excess += ex
            key = f"t{len(blobs)}"
            blobs[key] = data
            head["$t"] = key
            return head
        if isinstance(o, torch.Size):
            return {"$s": [int(s) for s in o]}
        if isinstance(o, torch.dtype):
            return {"$d": _DTYPE_NAMES[o]}
        if isinstance(o, (list, tuple)):
            bs = b if isinstance(b, (list, tuple)) else [b] * len(o)
            items = [walk(x, bb, depth + 1) for x, bb in zip(o, bs)]
            return {"$l": items} if isinstance(o, list) else {"$u": items}
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                raise WireError("message dict keys must be strings")
            return {"$m": {k: walk(v, None, depth + 1) for k, v in o.items()}}
        raise WireError(f"cannot send an object of type {type(o).__name__}")

    tree = walk(obj, bits, 0)
    header = json.dumps(tree, separators=(",", ":")).encode()
    blob = save(blobs) if blobs else b""
    payload = sum(int(a.size) for a in blobs.values())
    return Encoded(struct.pack("<I", len(header)) + header + blob, payload, excess)


def decode(body: bytes, context=None):
    """(message, payload bytes) of a frame body. Shares are rebuilt on `context` (a party's engine) when given."""
    from safetensors.numpy import load

    if len(body) < 4:
        raise WireError("frame shorter than its header length")
    (hlen,) = struct.unpack_from("<I", body)
    if hlen > len(body) - 4:
        raise WireError(f"header length {hlen} exceeds the frame ({len(body)} bytes)")
    try:
        tree = json.loads(body[4:4 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON ({e})") from None
    rest = body[4 + hlen:]
    try:
        blobs = load(rest) if rest else {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
        raise WireError(f"tensor blob is not safetensors ({str(e)[:80]})") from None
    used = set()

    def walk(o, depth):
        if depth > MAX_DEPTH:
            raise WireError("message nested too deeply")
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, list):
            raise WireError("bare JSON list in a message")
        if not isinstance(o, dict) or not o:
            raise WireError("bad node in a message")
        if "$t" in o:
            key = o["$t"]
            if not isinstance(key, str) or key not in blobs or key in used:
                raise WireError(f"tensor reference {key!r} missing from the blob")
            used.add(key)
            arr = blobs[key]
            if arr.dtype != np.uint8 or arr.ndim != 1:
                raise WireError("tensor blob entries must be flat uint8")
            return _unpack(arr, o)
        if "$a" in o:
            if _SHARE is None:
                raise WireError("a share arrived but no share type is registered (import comet_core.mpc.ashare)")
            return _SHARE[1](walk(o["$a"], depth + 1), int(o.get("frac", 0)), context)
        if "$l" in o:
            return [walk(x, depth + 1) for x in _seq(o["$l"])]
        if "$u" in o:
            return tuple(walk(x, depth + 1) for x in _seq(o["$u"]))
        if "$m" in o:
            if not isinstance(o["$m"], dict):
                raise WireError("bad dict node")
            return {k: walk(v, depth + 1) for k, v in o["$m"].items()}
        if "$s" in o:
            return torch.Size([int(s) for s in _seq(o["$s"])])
        if "$d" in o:
            if o["$d"] not in DTYPES:
                raise WireError(f"unknown dtype {o['$d']!r}")
            return DTYPES[o["$d"]]
        if "$f" in o:
            return float(o["$f"])
        raise WireError(f"unknown node {sorted(o)[:3]}")

    out = walk(tree, 0)
    if used != set(blobs):
        raise WireError(f"{len(set(blobs) - used)} tensors in the blob are not referenced")
    return out, sum(int(a.size) for a in blobs.values())


def _seq(x):
    if not isinstance(x, list):
        raise WireError("bad list node")
    return x
