"""benchmarks/private_generation.py --isa avx2: the child runs with what an AVX2-only host has (numba compiled
for Haswell in its own cache, torch's AVX2 kernels, OpenSSL without AVX-512 and VAES), and its rows say so;
a native run's rows say native (positive control)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("private_generation_bench", REPO / "benchmarks" / "private_generation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_isa_avx2_reexecutes_with_an_avx2_environment(monkeypatch):
    mod = _module()
    seen = {}

    def call(argv, env):
        seen.update(argv=argv, env=env)
        return 0
    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.delenv("COMET_BENCH_ISA", raising=False)
    monkeypatch.setattr(sys, "argv", ["private_generation.py", "--isa", "avx2", "--out", "/tmp/x.csv"])
    assert mod.main() == 0
    env = seen["env"]
    assert env["COMET_BENCH_ISA"] == "avx2" and env["NUMBA_CPU_NAME"] == "haswell" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    mask = int(env["OPENSSL_ia32cap"].split(":~")[1], 16)
    assert mask & (1 << 16) and mask & (1 << 41) and mask & (1 << 42)    # AVX512F, VAES, VPCLMULQDQ cleared
    assert "haswell" in env["NUMBA_CACHE_DIR"] and seen["argv"][1:] == sys.argv
    assert mod._isa()["isa"] == "native"                                   # this process: not re-executed
    monkeypatch.setenv("COMET_BENCH_ISA", "avx2")
    assert mod._isa()["isa"] == "avx2-emulated"
