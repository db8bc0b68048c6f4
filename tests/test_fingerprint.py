"""Published cost-mode tables are priced by HEAD's protocols (experiments/fingerprint.py): each records the
fingerprints of the protocols that made it, and this suite recomputes HEAD's (24 small cost-mode runs) and
names every table to reprice, with its command. The mechanism: a stamped table passes, a protocol change
(a positive control: PUMA's softmax swapped for dense's) and a forged or missing fingerprint are caught."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments import fingerprint as fp


def test_published_tables_match_head_protocols():
    tables = {fp._rel(t) for t in fp.cost_tables()}
    assert {"results/end_to_end/data.csv", "results/cost/opt-6.7b-dense/metrics.csv", *fp.KNOWN} <= tables
    stale = fp.stale_tables()
    assert not stale, ("tables priced by other protocols than HEAD's; reprice each with its command:\n"
                       + "\n".join(s.line() for s in stale))


def _table(tmp_path, systems, rev=None):
    """A tidy cost-mode table; without `rev` it has no git_rev column (fingerprinted at this tree)."""
    t = tmp_path / "art" / "data.csv"
    t.parent.mkdir()
    cols = dict(system=systems, mode="cost", online_bytes=1) | ({} if rev is None else dict(git_rev=rev))
    pd.DataFrame(cols).to_csv(t, index=False)
    return t


def test_stamped_table_passes_and_a_forged_hash_is_named(tmp_path):
    t = _table(tmp_path, ["dense", "puma"])
    out = fp.stamp(t, reprice="comet plot art --overwrite")
    doc = json.loads(out.read_text())
    entry = doc["data.csv"]
    assert entry["verified"] and set(entry["systems"]) == {"dense", "puma"}
    assert fp.check_table(t) is None
    entry["systems"]["puma"]["hash"] = "0" * 16
    entry["systems"]["puma"]["runs"][0]["rounds"] += 1
    out.write_text(json.dumps(doc))
    s = fp.check_table(t)
    assert s is not None and "puma" in s.why and "dense" not in s.why and s.command == "comet plot art --overwrite"


def test_tables_of_one_folder_keep_their_own_entries(tmp_path):
    t = _table(tmp_path, ["dense"])
    other = t.parent / "other.csv"
    pd.DataFrame(dict(system=["dense"], mode="cost")).to_csv(other, index=False)
    fp.stamp(t, reprice="a")
    doc = json.loads(fp.stamp(other, reprice="b").read_text())
    assert set(doc) == {"data.csv", "other.csv"} and doc["data.csv"]["reprice"] == "a"
    assert fp.check_table(t) is None and fp.check_table(other) is None


def test_missing_dirty_or_unknown_revisions_are_stale(tmp_path):
    t = _table(tmp_path, ["dense"], "abc1234-dirty")
    s = fp.check_table(t)
    assert s is not None and "no fingerprint.json entry" in s.why
    doc = json.loads(fp.stamp(t).read_text())["data.csv"]
    assert not doc["verified"] and doc["systems"] == {}
    assert "dirty or several" in fp.check_table(t).why


def test_a_protocol_change_changes_the_fingerprint(monkeypatch):
    """Positive control: PUMA priced with dense's softmax is no longer PUMA's fingerprint, dense's is kept."""
    from comet_core.mpc import approx, nonlinear as nl

    before = fp.fingerprints(("puma", "dense"))
    monkeypatch.setattr(fp, "_CACHE", {})
    monkeypatch.setattr(approx, "softmax_clipped_exp", lambda s, m, iters: nl.softmax(s, -1, m))
    after = fp.fingerprints(("puma", "dense"))
    assert after["dense"] == before["dense"]
    assert after["puma"]["hash"] != before["puma"]["hash"]


def test_canonical_runs_cover_both_maxima_and_every_swept_switch():
    runs = {" ".join(r) for s in fp.SYSTEMS for r in fp.canonical_runs(s)}
    assert all(f"system={s} " in " ".join(runs) for s in fp.SYSTEMS)
    for switch in ("engine.reuse_weight_masks=true", "system.indexing=oblivious", "system.kv_refill=naive",
                   "system.heads=false", "model=tiny-opt", "model=tiny-llama"):
        assert switch in " ".join(runs), switch
    # 64 prompt tokens: a prefill row of 64 scores takes the tournament, a decode row all pairs
    from comet_core.mpc.pairmax import use_pairs

    assert not use_pairs(4 * 64, 64, "auto") and use_pairs(4, 65, "auto")


@pytest.mark.parametrize("name", ["end_to_end", "mask_reuse"])
def test_reprice_commands_name_the_sweep_and_the_plot(name):
    cmd = fp.reprice_command(fp.REPO / "results" / name / "data.csv")
    assert cmd == f"comet run-experiment -m experiment={name} && comet plot {name} --overwrite"


def test_a_run_folders_reprice_command_writes_back_into_it():
    """A published run folder made elsewhere (a reprice outside the tree, copied in): its command line with
    output_dir pointing at the folder itself, overwrite=true, then the stamp."""
    cmd = fp.reprice_command(fp.REPO / "results" / "cost" / "opt-6.7b-comet" / "metrics.csv")
    assert "output_dir=results/cost/opt-6.7b-comet " in cmd and "/reprice/" not in cmd
    assert cmd.endswith("overwrite=true && comet fingerprint results/cost/opt-6.7b-comet")


@pytest.mark.parametrize("args, msg", [((), "give either tables to stamp or --check"),
                                       (("no/such/table.csv",), "does not exist"),
                                       (("--check", "results/end_to_end"), "give either")])
def test_cli_bad_input_is_one_line(tmp_path, args, msg):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cli.main", "fingerprint", *args], cwd=fp.REPO, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(fp.REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_exported_revision_is_fingerprinted_in_its_own_tree():
    """stamp's path for a table made at another revision: that revision exported and fingerprinted there
    (HEAD's commit here, dense only: ~3 s); equal to this tree's when no protocol source differs."""
    rev = fp._git("rev-parse", "--short", "HEAD").stdout.strip()
    there = fp.fingerprints_at(rev, ("dense",))
    assert set(there) == {"dense"} and len(there["dense"]["runs"]) == len(fp.canonical_runs("dense"))
    if fp.protocols_equal(rev):
        assert there == fp.fingerprints(("dense",))


def test_a_table_priced_by_other_compute_units_is_stale(tmp_path):
    """Modelled compute_s is a function of the profile too: a table stamped with units the reference profile
    no longer holds is stale (naming the unit), one without recorded units is stale, an added kind is not;
    a table without modelled compute is never stale for this."""
    t = tmp_path / "data.csv"
    pd.DataFrame(dict(system=["dense"], mode=["cost"], compute_source=["modelled"], compute_s=[1.0])).to_csv(t, index=False)
    assert fp.modelled_compute(t)
    assert "records no profile units" in fp.compute_stale(t, {}, "cmd").why
    doc = dict(compute_units={"round": 1e-4, "matmul_mac": 1e-9})
    assert fp.compute_stale(t, doc, "cmd", units={"round": 1e-4, "matmul_mac": 1e-9, "he_rotate": 2e-3}) is None
    s = fp.compute_stale(t, doc, "cmd", units={"round": 2e-4, "matmul_mac": 1e-9})
    assert s is not None and "(round)" in s.why and s.command.startswith("COMET_COMPUTE_PROFILE=")
    pd.DataFrame(dict(system=["dense"], mode=["cost"], compute_source=["none"])).to_csv(t, index=False)
    assert not fp.modelled_compute(t) and fp.compute_stale(t, {}, "cmd") is None


def test_committed_tables_record_the_units_that_priced_them():
    """Every committed table with modelled compute records the reference profile's units at its revision."""
    for t in fp.cost_tables():
        if fp.modelled_compute(t):
            doc = fp.read_entry(t)
            assert doc and doc.get("compute_units"), f"{t}: no compute_units"
            now = fp.reference_units()
            assert all(now.get(k) == v for k, v in doc["compute_units"].items()), t
