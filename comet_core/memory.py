"""Peak-memory estimates, checked before a run starts, so a big model fails in one line, not in the
kernel's OOM killer.

Exact run (``mode=exact``), for P weights of the layers that run (embedding and LM head included);
the peak of the run is the larger of its two phases when the ring product is torch's int64 matmul
(``int64_kernel``, the kernel chosen on AVX-512 hosts; ``matmul.int64_gemm_faster``):

A. sharing (before the private run): the float32 plaintext model 4 P, both parties' shares
   2 x 8 P = 16 P, one float64 temporary of the largest weight (still counted: MPC.share writes into the
   shares' buffer in 4 MiB blocks since mpc/sharing.py, so this term is slack now)
B. the private run: the shares 16 P; the plaintext model 4 P only when the reference runs after the run
   (Comet: ``plain_during_run``; any other system's reference runs first and the model is released); the
   weight masks kept for the inference: the embedding's and LM head's (their b shares 16, the dealer's
   b0 + b1 8 and the opening f 8 bytes per element) unless streamed (``streamed_masks``, the CPU default:
   weight_masks.StreamMask and Reopened keep their stream positions and operands, 0 bytes), every weight's with
   ``engine.reuse_weight_masks`` (+ 48 P: b, f, a selected product's b0 + b1 and digit caches); no
   weight-sized transient (a mask's opening is summed straight into f, MPC.open_masked); activations
   (below) and the stack (below).
   Measured peaks (2026-12-07, git 4cfaa0f, masks streamed; benchmarks/private_generation.py,
   tests/test_memory_peak.py): SmolLM2-135M 30 layers 32 + 8 tokens 3.40 GiB (estimate 4.34), 4 layers 1.65
   (2.86); opt-125m 4 layers 32 + 2 tokens 2.31 (3.38); opt-1.3b 1 layer 32 + 4 tokens 4.88 (6.72); with
   the masks kept as tensors (2026-11-26) 4.65, 3.3, 4.5 and 10.9. The slack is the stack (1.1 GB here,
   ~0.45 GB measured for these runs) and the activation bound.

With the limb kernel (AVX2 hosts, ``COMET_RING_KERNEL=limbs``), the calibration of 2026-11-26 (git 070fb22):

1. plaintext HF model, float32:                      4 P bytes
2. extracted plaintext weights (float64 copies):     8 P (the extraction makes views now; kept, as the
   calibration below included it)
3. shares of both parties, int64 over Z_2^64:        2 x 8 P = 16 P
4. with ``engine.reuse_weight_masks``: the dealer's weight masks and their openings kept: + 3 x 16 P
5. transient of the largest matmul (Beaver mask, opening, limb products, kernel workspaces): 17 x 8 bytes
   x its weight (8 x 8 until the 5-GEMM kernel and the weight-mask cache; re-measured 2026-11-26)

Both:

6. activations: 2 parties x 8 bytes x T x max(ffn_dim, vocab, heads x T) x 24 live tensors,
   KV cache 2 x layers x T x d x 2 parties x 8 bytes (T = prompt + generated positions)
7. interpreter, torch, transformers and the rest of the stack: 1.1 GB (a tiny-opt exact run peaks at ~1.0 GB)

Predictor collection (``comet train-predictor``): the float32 model while it is built and initialised
(2 x 4 P) plus one forward batch: the hooked activations of every layer (batch x seq_len x (hidden +
ffn + heads) x 4 bytes x layers x 2), the logits (x 3) and one layer's attention scores. Measured:
shakespeare-opt with predictor=tiny peaks at 0.46 GB (estimate 0.8 GiB, mostly the 0.8 GiB base).
Calibrated against measured peak RSS (2026-11-26, git 070fb22): opt-125m with 4 layers, 32 + 2 tokens,
exact: 8.7 GiB measured, 9.4 GiB estimated; opt-1.3b with 1 layer, 32 + 4 tokens: 21.4 GiB measured,
21.6 GiB estimated (the 8 x 8 transient said 6.8 and 14.7 GiB: a time_breakdown job was refused on a
machine where it fits and would have been let through where it does not).
"""

from __future__ import annotations

import os

BASE_BYTES = int(1.1 * 2 ** 30)   # the interpreter with torch, transformers, hydra, pandas, matplotlib, cryptography loaded (measured ~1.0 GiB peak for tiny-opt)


def _g(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def weight_counts(model_cfg, layers: int) -> tuple[int, int]:
    """(total weights of the running model, largest single weight matrix)."""
    d, F = int(_g(model_cfg, "hidden_size")), int(_g(model_cfg, "ffn_dim"))
    H, KV = int(_g(model_cfg, "num_heads")), int(_g(model_cfg, "num_kv_heads", _g(model_cfg, "num_heads")))
    V, P = int(_g(model_cfg, "vocab_size")), int(_g(model_cfg, "max_positions"))
    hd = d // H
    llama = _g(model_cfg, "family") == "llama"
    attn = 2 * d * H * hd + 2 * d * KV * hd
    ffn = (3 if llama else 2) * d * F
    per_layer = attn + ffn + 4 * d + (0 if llama else 4 * d + F + 2 * hd * (H + KV))
    tables = 1 if llama and _g(model_cfg, "tie_word_embeddings", False) else 2   # a tied LM head is shared once
    glob = tables * V * d + (0 if llama else P * d) + 2 * d  # embedding, LM head, positions
    return layers * per_layer + glob, max(V * d, d * F)


def exact_run_bytes(model_cfg, layers: int, positions: int, reuse_weight_masks: bool = False,
                    int64_kernel: bool = False, plain_during_run: bool = True, streamed_masks: bool = False) -> int:
    """Peak bytes of an exact-mode run (module docstring: phases A and B with the int64 kernel, steps
    1-7 with the limb kernel; the defaults give the limb kernel's larger bound). `streamed_masks`: the
    dealer streams reused masks and the parties' openings are computed again (weight_masks.StreamMask,
    Reopened: the CPU default), so the embedding's and LM head's kept masks cost nothing."""
    total, largest = weight_counts(model_cfg, layers)
    d, F = int(_g(model_cfg, "hidden_size")), int(_g(model_cfg, "ffn_dim"))
    V, H = int(_g(model_cfg, "vocab_size")), int(_g(model_cfg, "num_heads"))
    T = max(int(positions), 1)
    acts = 2 * 8 * T * max(F, V, H * T) * 24 + 2 * layers * T * d * 2 * 8
    if not int64_kernel:
        weights = (4 + 8 + 16 + (48 if reuse_weight_masks else 0)) * total
        return BASE_BYTES + weights + 17 * 8 * largest + acts
    sharing = 4 * total + 16 * total + 8 * largest
    masks = 48 * total if reuse_weight_masks else (0 if streamed_masks else 32 * 2 * V * d)   # every weight's,
    #                                                                   or the embedding's and head's
    run = 16 * total + (4 * total if plain_during_run else 0) + masks + acts
    return BASE_BYTES + max(sharing, run)


def collection_bytes(model_cfg, layers: int, batch: int, seq_len: int) -> int:
    """Peak bytes of predictor collection / evaluation with a float32 model (module docstring)."""
    total, _ = weight_counts(model_cfg, layers)
    d, F = int(_g(model_cfg, "hidden_size")), int(_g(model_cfg, "ffn_dim"))
    V, H = int(_g(model_cfg, "vocab_size")), int(_g(model_cfg, "num_heads"))
    tokens = batch * seq_len
    captured = tokens * (d + F + H) * 4 * max(layers, 1) * 2   # hooked activations of every layer, and a copy
    logits = tokens * V * 4 * 3                                  # logits, log-softmax, gathered
    scores = batch * H * seq_len * seq_len * 4 * 4               # one layer's attention scores and softmax
    return BASE_BYTES + 2 * 4 * total + captured + logits + scores


def release_free_heap(collect: bool = True) -> None:
    """Hand memory this process has freed back to the kernel (glibc keeps freed heap pages otherwise):
    the jobs of a sweep run one after another in one process, and the next job's check must not count
    the last job's freed tensors as used. `collect`: a full garbage collection first (objects in reference
    cycles; it scans every live object: 0.1-0.2 s once transformers is imported); False when the caller
    knows what it released is freed already."""
    import gc

    if collect:
        gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim
        pass


MADV_PAGEOUT = 21   # Linux 5.4+: reclaim these pages now (clean file pages are dropped; nothing is lost)


def drop_mapped_pages(t) -> None:
    """Let the kernel take back a CPU tensor's resident pages where they map a file (a safetensors
    checkpoint's parameters are views of its memory map): once the model owner has shared a plaintext
    weight, its 4 bytes per element need not stay in this process beside the 16 of its shares. A read
    afterwards (a reference run after the private one) takes them again from the page cache. Only a hint:
    MADV_PAGEOUT never changes a page's contents (anonymous memory stays; without swap nothing moves);
    a no-op off Linux, for data-free or non-CPU tensors, and where the kernel refuses."""
    try:
        if t.device.type != "cpu" or t.is_meta:
            return
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
    except (AttributeError, RuntimeError, NotImplementedError):   # a data-free stand-in (cost mode)
        return
    page = _page_size()
    lo, hi = -(-start // page) * page, (start + size) // page * page   # whole pages inside the storage
    if hi > lo and _madvise() is not None:
        _madvise()(lo, hi - lo, MADV_PAGEOUT)


def _page_size() -> int:
    import mmap

    return mmap.PAGESIZE


_MADVISE: list = []


def _madvise():
    """libc's madvise (None where there is none)."""
    if not _MADVISE:
        try:
            import ctypes

            f = ctypes.CDLL(None, use_errno=True).madvise
            f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _MADVISE.append(f)
        except (OSError, AttributeError):
            _MADVISE.append(None)
    return _MADVISE[0]


def available_bytes() -> int:
    """Memory the kernel can give this process now (MemAvailable, capped by a cgroup limit)."""
    release_free_heap()
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 2 ** 62
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = open(path).read().strip()
            used_path = path.replace("memory.max", "memory.current").replace("limit_in_bytes", "usage_in_bytes")
            if limit.isdigit():
                avail = min(avail, int(limit) - int(open(used_path).read().strip()))
        except (OSError, ValueError):
            continue
    return avail


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"
