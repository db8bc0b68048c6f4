"""benchmarks/he_anchor.py: SPU profile parsing (CHEETAH's per-run setup taken off, SEMI2K's not), the
toolkit rows equal the cost model, and a clear skip without the SPU venv."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import he_anchor as H  # noqa: E402

from comet_core.mpc import ideal  # noqa: E402

LOG = """[info] [api.cc:172] [Profiling] SPU execution <lambda> completed, input processing took 2e-06s, execution took 1.0s, output processing took 4e-06s, total time 1.0s.
[info] [api.cc:233] Link details: total send bytes 1000, recv bytes 2000, send actions 900, recv actions 900
[info] [api.cc:172] [Profiling] SPU execution _gelu completed, input processing took 2e-06s, execution took 4.5s, output processing took 4e-06s, total time 4.5s.
[info] [api.cc:233] Link details: total send bytes 11000, recv bytes 7000, send actions 1000, recv actions 950
RESULT {"protocol": "CHEETAH", "op": "gelu", "shape": "1x8", "max_abs_err": 0.01}
"""


def test_parse_profile_takes_cheetahs_setup_off():
    c = H.parse_profile(LOG, "CHEETAH")
    assert (c["online_bytes"], c["raw_bytes"], c["setup_bytes"], c["rounds"]) == (15000, 18000, 3000, 100)
    assert c["seconds"] == 3.5 and c["max_abs_err"] == 0.01
    s = H.parse_profile(LOG, "SEMI2K")
    assert (s["online_bytes"], s["rounds"], s["seconds"]) == (18000, 1000, 4.5)


def test_parse_profile_refuses_a_log_without_profile():
    import pytest

    with pytest.raises(RuntimeError, match="no SPU profile"):
        H.parse_profile("RESULT {}\n", "SEMI2K")


def test_toolkit_rows_are_the_cost_model_and_the_he_product():
    """Non-linear rows: the ideal functionality's modelled bytes and rounds; the matmul: iron's and bolt's own
    HE product run (its ciphertexts as measured, P1's keys apart in setup_bytes, wall seconds)."""
    from comet_core.mpc import he_linear

    r = H.toolkit_rows("bolt", "gelu", "2x8", "silent")
    assert r["online_bytes"] == ideal.steps_cost(ideal.bolt_gelu_steps(ideal.Params(ot="silent"), 16)).online_bytes
    assert "seconds" not in r
    pytest.importorskip("tenseal")
    for system, packing in (("iron", "iron"), ("bolt", "bolt")):
        m = H.toolkit_rows(system, "matmul", "2x3x4")
        f = he_linear.he_linear_cost(ideal.Params(), 2, 3, 4, packing)
        keys = sum(he_linear.key_bytes(k) for k in he_linear.keys_of(packing, 52, 2, 3, 4))
        assert m["rounds"] == f.rounds and m["online_bytes"] == pytest.approx(f.online_bytes, rel=0.002)
        assert m["setup_bytes"] == pytest.approx(keys, rel=0.002) and m["seconds"] > 0


def test_skips_in_one_line_without_spu(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "he_anchor.py"), "--spu-python",
                        str(tmp_path / "none" / "python"), "--out", str(tmp_path / "a.csv")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and p.stdout.startswith("skip: no SPU 0.9.5 venv") and not (tmp_path / "a.csv").exists()
