"""benchmarks/keystream_tally.py: counts the keystream a run draws by caller and puts PRG.fill_ back."""

import importlib.util
import sys
from pathlib import Path

from comet_core.mpc import prg

REPO = Path(__file__).resolve().parents[1]


def test_tally_counts_the_dealers_reads_and_restores_the_prg(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("keystream_tally_bench", REPO / "benchmarks" / "keystream_tally.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(sys, "argv", ["keystream_tally.py", "--model", "tiny-llama", "--gen", "2", "--prompt-len", "8",
                                      "--threads", "1", "--overrides", "model.hidden_size=128", "model.ffn_dim=512"])
    fill = prg.PRG.fill_
    assert mod.main() == 0
    assert prg.PRG.fill_ is fill
    out = capsys.readouterr().out
    assert "tokens equal plaintext: True" in out
    counted = [line for line in out.splitlines() if "dealer." in line and " GB " in line]
    assert counted, out                                   # the dealer's reads above SMALL_READ were counted
    assert "one decode step (mean): " in out and "ffn.gate_up" in out
