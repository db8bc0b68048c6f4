#!/usr/bin/env python3
"""One sitting: CrypTen 0.4.1, SecretFlow-SPU 0.9.5 and the engine, one after the other, on this machine.

What `make bench` runs. Steps:
  1. Set up the anchors' virtualenvs if missing (before anything is timed; idempotent):
     CrypTen by its own `setup.sh` (venv $ANCHOR_CRYPTEN_VENV, default ${TMPDIR:-/tmp}/anchor-crypten-venv),
     SPU by `python3 -m venv` + `pip install spu==0.9.5` ($ANCHOR_SPU_VENV, default
     ${TMPDIR:-/tmp}/anchor-spu-venv; SPU forces numpy<2, hence its own venv). A failed setup (offline,
     no wheel) is reported in one line; the other systems still run.
  2. CrypTen: its harness `crypten/bench.py`, 2 party processes x 1 torch thread (gloo on loopback).
  3. SPU: its harness `spu/spu_bench.py`, SEMI2K FM64, 16 fractional bits, 2 party processes x 1 thread
     (YACL/OMP), brpc link on loopback, reciprocal before the broadcast in softmax (--denominator-opt).
  4. The engine: `benchmarks/engine_ops.py`, 1 process (both parties) x --engine-threads torch/OpenMP
     threads (default 2: the same 2 cores the two anchor processes share).
  Every system: ops matmul, relu, softmax, ffn_decode (same shapes, input domains, 16-bit fixed point,
  secret weights, the dealer's work inside the timed op), 1 warm-up + --reps timed reps, median.
  5. Write outputs/bench/<stamp>/: crypten.csv (+ .json), spu.csv (+ .json), engine.csv, anchors.csv
     (comet_core/results/anchors.py: one row per op x system, ratio engine/anchor, CPU model, vector
     extensions, load averages, dates, versions), sitting.json (statuses, durations, command) and one
     log per system.

The anchor harnesses are read where they are (--anchors, default ../shared/benchmarks); nothing of
theirs is copied into the repository. Publish a sitting with benchmarks/bench_publish.py.

Usage: python benchmarks/bench_sitting.py [--reps 5] [--anchors ../shared/benchmarks] [--systems crypten,spu,engine]
                                          [--ops matmul,relu,softmax,ffn_decode]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from comet_core.results import anchors  # noqa: E402
from comet_core.results.machine import cpu_info  # noqa: E402

log = logging.getLogger("bench_sitting")

SPU_VERSION = "0.9.5"
SYSTEMS = ("crypten", "spu", "engine")  # the order of the sitting


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def _tmp() -> Path:
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir())


def crypten_venv() -> Path:
    return Path(os.environ.get("ANCHOR_CRYPTEN_VENV") or _tmp() / "anchor-crypten-venv")


def spu_venv() -> Path:
    return Path(os.environ.get("ANCHOR_SPU_VENV") or _tmp() / "anchor-spu-venv")


def _run(cmd: list[str], logfile: Path, timeout: float, env: dict | None = None, cwd: Path | None = None) -> int:
    """Run cmd with stdout+stderr appended to logfile; the exit status (124 on timeout, 127 not found)."""
    with open(logfile, "a") as fh:
        fh.write(f"$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env,
                                  cwd=cwd).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"timed out after {timeout:.0f} s\n")
            return 124
        except OSError as e:
            fh.write(f"{e}\n")
            return 127


def _tail(logfile: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def setup_crypten(harness: Path, logfile: Path) -> str | None:
    """None when the CrypTen venv is ready, else why not (one line)."""
    script = harness / "setup.sh"
    if not script.is_file():
        return f"no CrypTen harness at {harness} (set ANCHORS= / --anchors)"
    rc = _run(["bash", str(script)], logfile, timeout=1800)
    return None if rc == 0 else f"CrypTen setup failed (exit {rc}; offline or no wheel?): {_tail(logfile)}"


def setup_spu(harness: Path, logfile: Path) -> str | None:
    """None when the SPU venv imports spu == SPU_VERSION (created and pip-installed if not), else why not."""
    if not (harness / "spu_bench.py").is_file():
        return f"no SPU harness at {harness} (set ANCHORS= / --anchors)"
    venv = spu_venv()
    py = venv / "bin" / "python"
    check = [str(py), "-c", f"import spu, sys; sys.exit(spu.__version__ != {SPU_VERSION!r})"]
    if py.exists() and _run(check, logfile, timeout=300) == 0:
        return None
    if not py.exists() and _run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)],
                                 logfile, timeout=300) != 0:
        return f"could not create the SPU venv {venv}: {_tail(logfile)}"
    rc = _run([str(py), "-m", "pip", "install", "-q", f"spu=={SPU_VERSION}"], logfile, timeout=1800)
    if rc != 0 or _run(check, logfile, timeout=300) != 0:
        return f"SPU setup failed (pip exit {rc}; offline or no wheel for this Python?): {_tail(logfile)}"
    return None


def run_crypten(harness: Path, folder: Path, args) -> str | None:
    py = crypten_venv() / "bin" / "python"
    rc = _run([str(py), str(harness / "bench.py"), "--cases", args.ops, "--reps", str(args.reps),
               "--threads", "1", "--csv", str(folder / "crypten.csv"), "--json", str(folder / "crypten.json")],
              folder / "crypten.log", timeout=args.timeout)
    if rc != 0 or not (folder / "crypten.json").is_file():
        return f"CrypTen run failed (exit {rc}): {_tail(folder / 'crypten.log')}"
    return None


def run_spu(harness: Path, folder: Path, args) -> str | None:
    py = spu_venv() / "bin" / "python"
    work = Path(tempfile.mkdtemp(prefix="spu-sitting-"))  # party pickles (output shares) stay out of the folder
    try:
        rc = _run([str(py), str(harness / "spu_bench.py"), "--ops", args.ops, "--reps", str(args.reps),
                   "--threads", "1", "--fxp", "16", "--denominator-opt", "--tag", "sitting", "--outdir", str(work)],
                  folder / "spu.log", timeout=args.timeout)
        result = work / "spu_results.sitting.json"
        (folder / "spu-logs").mkdir(exist_ok=True)
        for f in work.glob("*.log"):
            shutil.copy(f, folder / "spu-logs" / f.name)
        if rc != 0 or not result.is_file():
            return f"SPU run failed (exit {rc}): {_tail(folder / 'spu.log')}"
        records = json.loads(result.read_text())
        (folder / "spu.json").write_text(json.dumps(records, indent=1))
        pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
                      for r in records]).to_csv(folder / "spu.csv", index=False)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_engine(folder: Path, args) -> str | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.engine_threads))
    rc = _run([sys.executable, str(REPO / "benchmarks" / "engine_ops.py"), "--ops", args.ops, "--reps", str(args.reps), "--threads",
               str(args.engine_threads), "--out", str(folder / "engine.csv")], folder / "engine.log",
              timeout=args.timeout, env=env)
    if rc != 0 or not (folder / "engine.csv").is_file():
        return f"engine run failed (exit {rc}): {_tail(folder / 'engine.log')}"
    return None


def collect(folder: Path, ran: list[str]) -> list[dict]:
    """The rows of every system that finished, from the files it left in the folder."""
    rows: list[dict] = []
    if "crypten" in ran:
        rows += anchors.crypten_rows(pd.read_csv(folder / "crypten.csv"),
                                     json.loads((folder / "crypten.json").read_text()))
    if "spu" in ran:
        rows += anchors.spu_rows(json.loads((folder / "spu.json").read_text()))
    if "engine" in ran:
        rows += anchors.engine_rows(pd.read_csv(folder / "engine.csv"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed reps per op after 1 warm-up, every system (median)")
    ap.add_argument("--anchors", default=str(REPO.parent / "shared" / "benchmarks"),
                    help="folder holding crypten/ and spu/ (default ../shared/benchmarks)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    ap.add_argument("--ops", default=",".join(anchors.OPS), help=f"subset of {','.join(anchors.OPS)}")
    ap.add_argument("--engine-threads", type=int, default=2, help="engine torch/OpenMP threads (default 2)")
    ap.add_argument("--out-root", default=str(REPO / "outputs" / "bench"), help="parent of the sitting's folder")
    ap.add_argument("--stamp", default=None, help="the sitting's folder name (default: UTC date-time)")
    ap.add_argument("--no-setup", action="store_true", help="skip the venv setup (an anchor without one is skipped)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per system run (default 1800)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        ap.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops or any(o not in anchors.OPS for o in ops):
        ap.error(f"--ops: choose from {', '.join(anchors.OPS)}")
    args.ops = ",".join(ops)
    if args.reps < 1 or args.engine_threads < 1:
        ap.error("--reps and --engine-threads must be >= 1")
    started = dt.datetime.now(dt.timezone.utc)
    stamp = args.stamp or started.strftime("%Y%m%d-%H%M%S")
    folder = Path(args.out_root).expanduser().resolve() / stamp
    if folder.exists():
        print(f"error: {folder} exists; choose another --stamp", file=sys.stderr)
        return 2
    folder.mkdir(parents=True)
    root = Path(args.anchors).expanduser().resolve()
    harness = {"crypten": root / "crypten", "spu": root / "spu"}
    status: dict[str, str] = {}

    # 1. venvs first, so that no pip install runs beside a timed op
    for name, setup in (("crypten", setup_crypten), ("spu", setup_spu)):
        if name not in systems:
            continue
        py = (crypten_venv() if name == "crypten" else spu_venv()) / "bin" / "python"
        why = (None if py.exists() else f"no venv at {py.parent.parent} and --no-setup") if args.no_setup \
            else setup(harness[name], folder / f"setup-{name}.log")
        if why:
            status[name] = f"skipped: {why}"
            log.error("%s: %s; the other systems still run", name, why)

    # 2.-4. the sitting
    model, vec = cpu_info()
    load_before = _load()
    log.info("sitting %s on %s (%s), load average %.2f, %d reps", stamp, model, vec, load_before, args.reps)
    seconds: dict[str, float] = {}
    runners = {"crypten": lambda: run_crypten(harness["crypten"], folder, args),
               "spu": lambda: run_spu(harness["spu"], folder, args),
               "engine": lambda: run_engine(folder, args)}
    for name in SYSTEMS:
        if name not in systems or name in status:
            continue
        log.info("%s ...", name)
        t0 = time.perf_counter()
        why = runners[name]()
        seconds[name] = round(time.perf_counter() - t0, 1)
        status[name] = "ok" if why is None else f"failed: {why}"
        (log.info if why is None else log.error)("%s: %s (%.0f s)", name, status[name], seconds[name])
    load_after = _load()

    # 5. the combined table
    ran = [s for s in SYSTEMS if status.get(s) == "ok"]
    meta = dict(stamp=stamp, started_utc=started.isoformat(timespec="seconds"),
                finished_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                reps=args.reps, engine_threads=args.engine_threads, anchors=str(root), cpu_model=model,
                vector_ext=vec, cpus=os.cpu_count(), malloc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                load_avg_1m_before=load_before,
                load_avg_1m_after=load_after, status=status, run_seconds=seconds,
                venvs=dict(crypten=str(crypten_venv()), spu=str(spu_venv())))
    (folder / "sitting.json").write_text(json.dumps(meta, indent=1))
    if not ran:
        log.error("nothing ran; see %s", folder)
        return 1
    table = anchors.combine(collect(folder, ran), stamp, model, vec, os.cpu_count(),
                            malloc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
    table.to_csv(folder / "anchors.csv", index=False)
    show = table[["op", "system", "seconds", "bytes", "rounds", "engine_over_anchor", "speedup", "target_speedup",
                  "target_met"]]
    print(f"# sitting {stamp}: {model} ({vec}); load average {load_before:.2f} -> {load_after:.2f}")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name in systems:
        if status.get(name) != "ok":
            print(f"WARNING: {name} not in this sitting: {status.get(name)}", file=sys.stderr)
    print(folder)
    return 0 if "engine" not in systems or status.get("engine") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
