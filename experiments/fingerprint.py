"""Protocol fingerprints: is a published table still what HEAD's protocols would price?

A table of results/ made in cost mode (a sweep's data.csv, a run folder's metrics.csv, ...) is a function
of the protocols that ran. The fingerprint.json beside it (one per folder, an entry per table name) records
the revisions that made it and, per system in it, a hash of the ledgers of a few small canonical cost-mode
runs (two-layer tiny-opt and tiny-llama, a 64-token prompt so that prefill takes the tournament maximum and
decode the all-pairs one; the switches the artifacts sweep). A protocol change moves some system's ledger,
hence its hash.

Steps:
1. ``fingerprints()``: the canonical runs at this tree (cost mode, ~0.3 s each), hashed per system.
2. ``stamp(table)``: write the table's entry of ``fingerprint.json`` beside it: its revisions and the
   fingerprints of the code that made it. That is this tree's when no protocol source (PROTOCOL_PATHS)
   differs between the table's revisions and this tree; otherwise the table's single clean revision is
   exported into a temporary folder and fingerprinted there; a dirty or mixed revision is marked unverified.
3. ``stale_tables()``: every cost-mode table under results/ (a `mode` column holding cost, or KNOWN) whose
   entry is missing, unverified or differs from this tree's fingerprints for a system in it, with the
   command that reprices it (tests/test_fingerprint.py; ``comet fingerprint --check``).
A table with modelled compute (`compute_source` holding `modelled`) also records the reference profile's
units when stamped (`compute_units`; its tables are priced with COMET_COMPUTE_PROFILE set to it): a unit that
has changed since makes it stale too, as its compute_s is no longer what this tree's profile gives.
Library code: logs, never prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("comet.fingerprint")

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("comet", "dense", "mpcformer", "secformer", "puma", "iron", "bolt")
FILE = "fingerprint.json"
# what a ledger is made of: the engine, the protocols, the models' shapes, the systems and their configs
PROTOCOL_PATHS = ("comet_core", "conf", "experiments/run.py")
REFERENCE_PROFILE = REPO / "results" / "calibration" / "reference-host.json"   # what prices the published compute
LEDGER_COLUMNS = ["phase", "stage", "layer", "op", "sender", "receiver", "elements", "bytes", "round",
                  "cost_source"]
KNOWN = {  # cost-mode tables that are neither an artifact nor a run folder: the script that remakes each
    # (and stamps it) and, where the table has no `system` column, the systems it depends on
    "results/baselines/runs.csv": dict(reprice="python benchmarks/baseline_runs.py --overwrite"),
    "results/iron_bolt_restated/restated.csv": dict(
        reprice="python experiments/restate_iron_bolt.py --overwrite && "
                "comet fingerprint results/iron_bolt_restated/restated.csv"),
    "results/kv_refill_hit_rate/shakespeare-opt.csv": dict(
        reprice="python benchmarks/kv_refill_ablation.py --overwrite && "
                "comet fingerprint results/kv_refill_hit_rate/shakespeare-opt.csv", systems=("comet",)),
    "results/cost/opt-6.7b-comet/breakdown.csv": dict(
        reprice="python benchmarks/comet_breakdown.py results/cost/opt-6.7b-dense results/cost/opt-6.7b-comet "
                "--out results/cost/opt-6.7b-comet/breakdown.csv && comet fingerprint "
                "results/cost/opt-6.7b-comet/breakdown.csv", systems=("comet", "dense")),
}
COMMON = ("mode=cost", "prompt_len=64", "save_ledger=false", "seed=0")
BASE = (("model=tiny-opt", "gen_tokens=2"), ("model=tiny-llama", "gen_tokens=2"),
        ("model=tiny-llama", "gen_tokens=2", "engine.reuse_weight_masks=true"))
VARIANTS = {  # the switches the artifacts sweep for one system (conf/experiment/*.yaml, results/cost/*)
    "comet": (("model=tiny-opt", "gen_tokens=4", "system.kv_refill=naive"),   # 4 tokens: a group refilled
              ("model=tiny-opt", "gen_tokens=2", "system.heads=false"),
              ("model=tiny-llama", "gen_tokens=2", "system.heads=false", "system.indexing=oblivious")),
}


def canonical_runs(system: str) -> list[tuple[str, ...]]:
    """The overrides of each canonical cost-mode run of `system`."""
    return [(f"system={system}", *COMMON, *v) for v in BASE + VARIANTS.get(system, ())]


def _compose(overrides) -> object:
    from hydra import compose, initialize_config_dir

    import experiments.run  # registers the config schemas; its tree's conf/ (an old revision's in fingerprints_at)

    conf = Path(experiments.run.__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def ledger_digest(ledger) -> str:
    """sha256 of the ledger's rows (every column that a table's bytes and rounds are made of)."""
    cols = [c for c in LEDGER_COLUMNS if c in ledger.columns]
    return hashlib.sha256(ledger[cols].to_csv(index=False).encode()).hexdigest()


def system_fingerprint(system: str) -> dict:
    """{hash, runs: [{overrides, online_bytes, rounds}]} of `system`'s canonical runs at this tree."""
    from experiments.run import execute

    h, runs = hashlib.sha256(), []
    for over in canonical_runs(system):
        led = execute(_compose(over)).ledger
        h.update(ledger_digest(led).encode())
        on = led[led.phase == "online"]
        runs.append(dict(overrides=" ".join(o for o in over if o not in COMMON), online_bytes=int(on.bytes.sum()),
                         rounds=int(on["round"].nunique())))
    return dict(hash=h.hexdigest()[:16], runs=runs)


_CACHE: dict[str, dict] = {}


def fingerprints(systems=SYSTEMS) -> dict[str, dict]:
    """Per system, the fingerprint of this tree's protocols (computed once per process)."""
    for s in systems:
        if s not in _CACHE:
            _CACHE[s] = system_fingerprint(s)
    return {s: _CACHE[s] for s in systems}


# -- revisions -----------------------------------------------------------------------------------------


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def head_revision() -> str:
    from comet_core.results.tables import git_revision

    return git_revision()


def known_clean(rev: str) -> bool:
    """A revision of this repository, recorded from a clean tree (no `-dirty`)."""
    return not rev.endswith("-dirty") and _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode == 0


def protocols_equal(rev: str) -> bool:
    """Whether the protocol sources of the clean revision `rev` are this tree's (working tree included)."""
    if not known_clean(rev):
        return False
    return _git("diff", "--quiet", rev, "--", *PROTOCOL_PATHS).returncode == 0


def fingerprints_at(rev: str, systems) -> dict[str, dict]:
    """The fingerprints of revision `rev`'s protocols: its tree exported to a temporary folder, this
    module run there as a script (so `experiments.run` and the engine are that revision's)."""
    with tempfile.TemporaryDirectory(prefix="comet-fp-") as tmp:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, timeout=120, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True, timeout=120)
        env = dict(os.environ, PYTHONPATH=tmp)
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--print", *systems], cwd=tmp,
                             env=env, capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise RuntimeError(f"fingerprinting {rev} failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


# -- tables --------------------------------------------------------------------------------------------


def table_columns(table: Path) -> tuple[set, set, set]:
    """(modes, systems, git revisions) of a tidy table (empty sets where a column is absent)."""
    import pandas as pd

    head = pd.read_csv(table, nrows=0).columns
    cols = [c for c in ("mode", "system", "git_rev") if c in head]
    df = pd.read_csv(table, usecols=cols, dtype=str) if cols else pd.DataFrame()
    get = lambda c: set(df[c].dropna()) if c in df else set()   # noqa: E731
    return get("mode"), get("system") & set(SYSTEMS), get("git_rev")


def modelled_compute(table: Path) -> bool:
    """Whether the table's compute_s is modelled (cost mode priced by a profile)."""
    import pandas as pd

    if "compute_source" not in pd.read_csv(table, nrows=0).columns:
        return False
    return "modelled" in set(pd.read_csv(table, usecols=["compute_source"], dtype=str).compute_source.dropna())


def reference_units(rev: str | None = None) -> dict[str, float]:
    """The reference profile's units: this tree's, or at revision `rev` (the one a table was priced with)."""
    if rev is None or rev == head_revision():
        text = REFERENCE_PROFILE.read_text() if REFERENCE_PROFILE.is_file() else "{}"
    else:
        r = _git("show", f"{rev}:{_rel(REFERENCE_PROFILE)}")
        text = r.stdout if r.returncode == 0 else "{}"
    return dict(json.loads(text).get("units_s", {}))


def reprice_command(table: Path) -> str:
    """The command(s) that remake `table` at this tree (what stale_tables names)."""
    from experiments.artifacts import how_to_run, is_artifact

    folder = table.parent
    if _rel(table) in KNOWN:
        return KNOWN[_rel(table)]["reprice"]
    if folder.parent.name == "results" and is_artifact(folder.name):
        return f"{how_to_run(folder.name)} && comet plot {folder.name} --overwrite"
    info = folder / "run_info.json"
    if info.is_file() and table.name == "metrics.csv":   # a run folder: its own command line, replacing it
        argv = [a for a in json.loads(info.read_text()).get("argv", []) if not a.startswith("overwrite=")]
        # the folder it describes, not the one it was made in (a reprice runs outside the tree and is copied in)
        argv = [f"output_dir={_rel(folder)}" if a.startswith("output_dir=") else a for a in argv]
        if argv:
            return " ".join([argv[0], *map(shlex.quote, argv[1:]), "overwrite=true",
                             f"&& comet fingerprint {_rel(folder)}"])
    entry = read_entry(table)
    if entry and entry.get("reprice"):
        return entry["reprice"]
    return f"the command that README.md names for {_rel(table)}, then comet fingerprint {_rel(table)}"


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def stamp(table: Path, reprice: str | None = None) -> Path:
    """Write `table`'s entry of the fingerprint.json beside it (a folder means its data.csv, else its
    metrics.csv). A table without a git_rev column is taken as made at this tree: stamp it when it is made."""
    table = resolve_table(Path(table))
    modes, systems, revs = table_columns(table)
    head = head_revision()
    systems = table_systems(table, systems)
    verified, made_at = True, head
    if revs and not all(protocols_equal(r) for r in revs):
        rev = next(iter(revs))
        if len(revs) == 1 and known_clean(rev):
            made_at = rev
            log.info("%s was made at %s, whose protocols differ from this tree's: fingerprinting %s", table, rev, rev)
            fps = fingerprints_at(rev, systems)
        else:
            verified, made_at, fps = False, None, {}
            log.warning("%s was made at %s (dirty, unknown or several revisions): its protocols cannot be "
                        "fingerprinted; reprice it", table, ", ".join(sorted(revs)))
    else:
        fps = fingerprints(systems)
    entry = dict(modes=sorted(modes), revisions=sorted(revs), fingerprinted_at=made_at, verified=verified,
                 canonical=dict(common=" ".join(COMMON), base=[" ".join(b) for b in BASE],
                                variants={k: [" ".join(v) for v in vs] for k, vs in VARIANTS.items()}),
                 systems=fps, reprice=reprice or reprice_command(table))
    if modelled_compute(table):   # the units that priced it: the reference profile at the revision it was made
        entry.update(compute_profile=_rel(REFERENCE_PROFILE),
                     compute_units=reference_units(next(iter(revs)).removesuffix("-dirty") if len(revs) == 1 else None))
    out = table.parent / FILE
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[table.name] = entry
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    return out


def read_entry(table: Path) -> dict | None:
    """The fingerprint.json entry of `table` (None when absent)."""
    f = Path(table).parent / FILE
    return json.loads(f.read_text()).get(Path(table).name) if f.is_file() else None


def table_systems(table: Path, listed: set) -> list[str]:
    """The systems a table depends on: its `system` column, else KNOWN's list, else all seven."""
    return sorted(listed) or list(KNOWN.get(_rel(table), {}).get("systems", SYSTEMS))


def resolve_table(p: Path) -> Path:
    if p.is_dir():
        for name in ("data.csv", "metrics.csv"):
            if (p / name).is_file():
                return p / name
        from comet_core.errors import CometError

        raise CometError(f"{p} holds no data.csv or metrics.csv; name the table file")
    return p


def cost_tables(results: Path = REPO / "results") -> list[Path]:
    """Every table under results/ with a `mode` column that holds `cost`, and KNOWN's tables."""
    out = []
    for p in sorted(Path(results).rglob("*.csv")):
        modes, _, _ = table_columns(p)
        if "cost" in modes or _rel(p) in KNOWN:
            out.append(p)
    return out


@dataclass
class Stale:
    table: Path
    why: str
    command: str

    def line(self) -> str:
        return f"{_rel(self.table)}: {self.why}; reprice: {self.command}"


def check_table(table: Path, current: dict[str, dict] | None = None) -> Stale | None:
    """None when `table`'s fingerprint.json matches this tree's protocols, else why not."""
    doc = read_entry(table)
    if doc is None:
        revs = sorted(table_columns(table)[2])
        return Stale(table, f"no {FILE} entry (made at {', '.join(revs) or 'an unrecorded revision'}; "
                            "protocols unknown)", reprice_command(table))
    cmd = doc.get("reprice") or reprice_command(table)
    if not doc.get("verified"):
        return Stale(table, f"made at {', '.join(doc.get('revisions', [])) or '?'} (dirty or several revisions)", cmd)
    _, systems, revs = table_columns(table)
    if sorted(revs) != doc.get("revisions"):
        return Stale(table, f"its revisions {sorted(revs)} are not those fingerprinted {doc.get('revisions')}", cmd)
    systems = table_systems(table, systems)
    now = current if current is not None else fingerprints(systems)
    changed = []
    for s in systems:
        old = doc.get("systems", {}).get(s)
        if old is None or old.get("hash") != now[s]["hash"]:
            diff = [f"{a['overrides']}: {a['online_bytes']} B/{a['rounds']} r -> {b['online_bytes']} B/{b['rounds']} r"
                    for a, b in zip((old or {}).get("runs", []), now[s]["runs"]) if a != b]
            changed.append(f"{s} ({'; '.join(diff[:2]) or 'ledger rows differ'})")
    if changed:
        return Stale(table, f"protocols changed since {doc.get('fingerprinted_at')}: {', '.join(changed)}", cmd)
    return compute_stale(table, doc, cmd)


def compute_stale(table: Path, doc: dict, cmd: str, units: dict | None = None) -> Stale | None:
    """A table with modelled compute is stale when it records no profile units, or when a unit it was priced
    with differs from the reference profile's now (`units`: that profile's units_s)."""
    if not modelled_compute(table):
        return None
    if "compute_units" not in doc:
        return Stale(table, "its modelled compute_s records no profile units (stamped before they were kept)",
                     f"COMET_COMPUTE_PROFILE={_rel(REFERENCE_PROFILE)} {cmd}")
    now = reference_units() if units is None else units
    moved = sorted(k for k, v in doc["compute_units"].items() if now.get(k) != v)
    if moved:
        return Stale(table, f"its compute_s was priced by other units than {_rel(REFERENCE_PROFILE)} holds now "
                            f"({', '.join(moved[:4])}{' ...' if len(moved) > 4 else ''})",
                     f"COMET_COMPUTE_PROFILE={_rel(REFERENCE_PROFILE)} {cmd}")
    return None


def stale_tables(results: Path = REPO / "results") -> list[Stale]:
    """Every cost-mode table under `results` that HEAD's protocols would price differently (or unknown)."""
    out = []
    for t in cost_tables(results):
        s = check_table(t)
        if s is not None:
            out.append(s)
    return out


if __name__ == "__main__":   # fingerprints_at: `python fingerprint.py --print SYSTEM...` inside an old tree
    if sys.argv[1:2] == ["--print"]:
        logging.disable(logging.INFO)
        print(json.dumps(fingerprints(tuple(sys.argv[2:]) or SYSTEMS)))
