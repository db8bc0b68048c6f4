"""Large AES-128-CTR keystream reads on two cores: OpenSSL's libcrypto through ctypes, the GIL released.

The `cryptography` package (prg.PRG's cipher) holds the GIL while it encrypts, so one process makes
keystream on one core. A CTR stream is a function of the counter alone, so a read of n bytes from
counter block k splits into two halves made independently: bytes [0, m) from block k and [m, n) from
block k + m / 16 (m a multiple of 16). `fill` makes the second half in a worker thread while the caller
makes the first, both with the system's libcrypto (EVP AES-128-CTR: the same OpenSSL cipher, the same
bytes as `cryptography`; tests/test_security.py compares them), whose calls release the GIL.

Used by PRG.fill_ for reads of at least PARALLEL_MIN bytes when torch runs on more than one thread
and libcrypto.so.3 loads; otherwise (no libcrypto, one thread) PRG.fill_ reads as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

log = logging.getLogger(__name__)

PARALLEL_MIN = 1 << 20   # bytes: below this the hand-off to the worker costs more than it saves
_PIECE = 1 << 20         # bytes per EVP_EncryptUpdate call (its length is a C int)
_ZEROS = ctypes.create_string_buffer(_PIECE)
_lock = threading.Lock()
_lib = None
_pool = None
_state = "untried"


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: it starts its own worker when it needs one."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _load():
    """libcrypto with the EVP calls typed, or None (logged once) when it is missing or too old."""
    global _lib, _state
    with _lock:
        if _state != "untried":
            return _lib
        _state = "tried"
        for name in ("libcrypto.so.3", ctypes.util.find_library("crypto")):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
                lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
                lib.EVP_aes_128_ctr.restype = ctypes.c_void_p
                lib.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                   ctypes.c_char_p, ctypes.c_char_p]
                lib.EVP_EncryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                                  ctypes.c_void_p, ctypes.c_int]
                lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
                _lib = lib
                return _lib
            except (OSError, AttributeError):
                continue
        log.info("libcrypto (OpenSSL 3) not found: keystream is made on one core (cryptography)")
        return None


def _keystream(key: bytes, block: int, addr: int, n: int) -> None:
    """n bytes of AES-128-CTR keystream from counter block `block` (16-byte big-endian counter) at addr."""
    lib = _lib
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        if lib.EVP_EncryptInit_ex(ctx, lib.EVP_aes_128_ctr(), None, key, block.to_bytes(16, "big")) != 1:
            raise RuntimeError("EVP_EncryptInit_ex failed")
        outl = ctypes.c_int(0)
        done = 0
        while done < n:
            k = min(_PIECE, n - done)
            if lib.EVP_EncryptUpdate(ctx, addr + done, ctypes.byref(outl), _ZEROS, k) != 1 or outl.value != k:
                raise RuntimeError("EVP_EncryptUpdate failed")
            done += k
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def fill(key: bytes, block: int, out: torch.Tensor) -> bool:
    """Write the keystream from counter block `block` into contiguous CPU `out` (8 * numel bytes) on two
    cores; False (nothing written) when this path does not apply, so the caller reads as usual."""
    global _pool
    n = out.numel() * out.element_size()
    if n < PARALLEL_MIN or torch.get_num_threads() < 2 or _load() is None:
        return False
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comet-aes")
    half = (n // 2) // 16 * 16
    addr = out.data_ptr()
    second = _pool.submit(_keystream, key, block + half // 16, addr + half, n - half)
    try:
        _keystream(key, block, addr, half)
    finally:
        second.result()
    return True
