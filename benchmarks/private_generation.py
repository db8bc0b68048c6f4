#!/usr/bin/env python3
"""Benchmark: exact-mode private generation with a real model, beside plaintext.

Default: SmolLM2-135M (all 30 layers), a 32-token prompt from a held-out play, 8 new tokens.
Prints one table (wall time, peak memory, online/offline bytes, rounds, plaintext time, whether the
private tokens equal plaintext greedy decoding, max logit error) and writes it as CSV.

    python benchmarks/private_generation.py [--model smollm2-135m] [--prompt-len 32] [--gen 8]
        [--out results/private_generation/smollm2-135m.csv] [--overwrite | --append] [--threads 2] [--label NAME]
        [--repo PATH] [--profile PATH] [--isa native|avx2]
Targets (issue 15): under 30 s and under 5 GiB on the 2-core development machine.

--repo runs the engine of another source tree (e.g. `git archive <commit>` unpacked; see
benchmarks/generation_ab.py, which compares two commits in one sitting) with this harness.
--profile writes a cProfile summary (top functions by own time and by cumulative time) of the run.
--isa avx2 runs it as on an AVX2-only host of the same machine (numba compiled for Haswell, torch's AVX2
kernels, OpenSSL without AVX-512/VAES: AVX2_ENV); the row records isa, torch_cpu_capability, numba_cpu.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _engine_repo(argv: list[str]) -> Path:
    """The source tree whose engine runs (--repo, else this one): first on sys.path before any import."""
    for i, a in enumerate(argv):
        if a == "--repo" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--repo="):
            return Path(a.split("=", 1)[1]).resolve()
    return REPO


ENGINE = _engine_repo(sys.argv[1:])
sys.path.insert(0, str(ENGINE))
sys.path.insert(1, str(REPO))
log = logging.getLogger("bench.generation")

DEFAULT_PROMPT = ("Duncan. What bloody man is that? He can report, As seemeth by his plight, of the revolt "
                  "The newest state. Malcolm. This is the sergeant Who like a good and hardy soldier fought")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="text; truncated to --prompt-len tokens")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--out", default=str(REPO / "results" / "private_generation" / "smollm2-135m.csv"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--append", action="store_true", help="add the row to an existing CSV (same columns)")
    ap.add_argument("--label", default="", help="a name for this row (e.g. a commit)")
    ap.add_argument("--repo", default=str(REPO), help="source tree whose engine runs (default: this one)")
    ap.add_argument("--profile", default=None, help="write a cProfile summary (top functions) here")
    ap.add_argument("--isa", choices=("native", "avx2"), default="native",
                    help="avx2: run as on an AVX2-only host (numba compiled for Haswell, torch's AVX2 kernels, "
                         "OpenSSL without AVX-512 and VAES), re-executed with those settings")
    a = ap.parse_args()
    if a.isa == "avx2" and os.environ.get("COMET_BENCH_ISA") != "avx2":
        return _reexec_avx2()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out)
    if not a.append and _refuse_existing(out, a.overwrite):
        return 2

    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir

    from experiments.run import run

    torch.set_num_threads(a.threads)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={a.model}", f"prompt_len={a.prompt_len}", "save_ledger=false",
                                           f"gen_tokens={a.gen}", *a.overrides])
    cfg.prompt = a.prompt  # set directly: Hydra's override grammar would split text at commas
    load_avg = os.getloadavg()[0]
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        s = run(cfg, Path(tmp) / "run")
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    m = s["metrics"]
    tot = m[(m.network == cfg.network.name) & (m.phase == "total")].iloc[0]
    row = dict(label=a.label, model=a.model, prompt_tokens=len(s["ids"]), new_tokens=a.gen, layers=int(tot.layers),
               wall_s=round(wall, 2), private_compute_s=round(float(tot.compute_s), 2),
               plaintext_s=round(float(tot.plaintext_s), 3),
               peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               online_bytes=int(tot.online_bytes), offline_bytes=int(tot.offline_bytes), rounds=int(tot.rounds),
               lan_comm_s=round(float(tot.comm_s), 2), tokens_match=bool(s["match"]),
               max_logit_err=float(s["max_logit_err"]), private_text=s["private_text"],
               plaintext_text=s["plaintext_text"], threads=a.threads, load_avg_1m=load_avg,
               truncation=cfg.engine.truncation, frac_bits=cfg.engine.frac_bits, torch=torch.__version__,
               load_avg_1m_after=round(os.getloadavg()[0], 2), cpu=_cpu(),
               # CPU seconds of this process during the run (user + system): less sensitive than wall_s to
               # other jobs on a shared machine (but OpenMP spin-waiting counts too)
               cpu_s=round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 2),
               minor_faults=ru1.ru_minflt - ru0.ru_minflt, **_isa())
    if str(cfg.device).startswith("cuda"):  # the GPU and its peak allocation beside the host's RSS
        row.update(device=torch.cuda.get_device_name(),
                   peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    # time per decode step against its rounds (the modelled lan time of those rounds beside it)
    dec = m[(m.network == cfg.network.name) & (m.phase == "decode")]
    steps = max(a.gen - 1, 1)
    if len(dec):
        d = dec.iloc[0]
        row.update(decode_compute_s_per_step=round(float(d.compute_s) / steps, 3),
                   decode_rounds_per_step=round(float(d.rounds) / steps, 1),
                   decode_compute_us_per_round=round(1e6 * float(d.compute_s) / max(float(d.rounds), 1), 1),
                   decode_lan_comm_s_per_step=round(float(d.comm_s) / steps, 3))
    df = pd.DataFrame([row])
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.append and out.exists():
        df = pd.concat([pd.read_csv(out), df], ignore_index=True)
    df.to_csv(out, index=False)
    print(df.iloc[[-1]].T.to_string(header=False))
    if prof is not None:
        _write_profile(prof, Path(a.profile), row)
    return 0


# CPUID leaf 7 bits OpenSSL may use that an AVX2-only CPU lacks: EBX AVX-512 F, DQ, IFMA, CD, BW, VL (low
# word) and ECX VAES, VPCLMULQDQ (high word); OPENSSL_ia32cap's second field masks them
AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "ATEN_CPU_CAPABILITY": "avx2", "OPENSSL_ia32cap": ":~0x600D0230000"}


def _reexec_avx2() -> int:
    """This benchmark again, in a child whose numba, torch and OpenSSL use only what an AVX2-only host
    has (numba's cache in its own folder: code compiled for Haswell is not this host's cached code)."""
    import subprocess

    env = dict(os.environ, COMET_BENCH_ISA="avx2", **AVX2_ENV,
               NUMBA_CACHE_DIR=os.path.join(tempfile.gettempdir(), "comet-numba-haswell"))
    return subprocess.call([sys.executable, *sys.argv], env=env)


def _isa() -> dict:
    import torch

    return dict(isa="avx2-emulated" if os.environ.get("COMET_BENCH_ISA") == "avx2" else "native",
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                numba_cpu=os.environ.get("NUMBA_CPU_NAME", "host"))


def _refuse_existing(out: Path, overwrite: bool) -> bool:
    from comet_core.results.machine import refuse_existing

    return refuse_existing(out, overwrite)


def _cpu() -> str:
    from comet_core.results.machine import cpu_info

    return cpu_info()[0]


def _write_profile(prof, path: Path, row: dict, top: int = 45) -> None:
    """A text summary of a cProfile run: the run's numbers, then the top functions by own time and by
    cumulative time (paths shortened to the repository)."""
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.strip_dirs()
    buf.write(f"# benchmarks/private_generation.py --profile (label {row['label']!r}); wall_s {row['wall_s']} "
              f"under cProfile, load_avg_1m {row['load_avg_1m']:.2f}, cpu {row['cpu']}, tokens_match "
              f"{row['tokens_match']}\n\n## top {top} by own time (tottime)\n")
    st.sort_stats("tottime").print_stats(top)
    buf.write(f"\n## top {top} by cumulative time\n")
    st.sort_stats("cumulative").print_stats(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
