#!/usr/bin/env python3
"""Before/after of private generation for two commits, in one sitting, interleaved (A B A B ...).

    python benchmarks/generation_ab.py --before <rev> --after <rev> [--reps 3]
        [--out results/private_generation/revisions.csv] [--overwrite] [-- extra args of private_generation.py]

1. Each revision's tree is exported with `git archive <rev>` into a temporary folder (no worktree, no
   checkout: the working tree is untouched).
2. For rep = 1..reps, the two revisions run back to back, each in a fresh process of THIS tree's
   benchmarks/private_generation.py with `--repo <exported tree> --label <rev>`, so the same harness
   measures both engines; every row records the load average before and after. Both use one model
   cache (COMET_CACHE, default this tree's .cache/comet), warmed by a 1-layer run first.
3. The rows go to --out; the medians of wall_s / private_compute_s / peak_rss_gib per label and the
   speed-up after/before are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` unpacked under `into` (git archive | tar)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = into / sha
    dest.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def _model_arg(extra: list[str]) -> list[str]:
    """The --model option among the extra arguments (for the warm-up run), if any."""
    for i, x in enumerate(extra):
        if x == "--model" and i + 1 < len(extra):
            return extra[i:i + 2]
        if x.startswith("--model="):
            return [x]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "results" / "private_generation" / "revisions.csv"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to private_generation.py")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        print(f"error: {out} exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    if out.exists():
        out.unlink()
    extra = [x for x in a.extra if x != "--"]
    bench = REPO / "benchmarks" / "private_generation.py"
    # one model cache for both trees (this tree's, unless COMET_CACHE is set), warmed before timing
    env = dict(os.environ)
    env.setdefault("COMET_CACHE", str(REPO / ".cache" / "comet"))
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in (a.before, a.after)}
        warm = [sys.executable, str(bench), "--repo", str(trees[a.after]), "--out", str(Path(tmp) / "warm.csv"),
                "--overwrite", "--gen", "1", *_model_arg(extra), "--overrides", "model.layers=1"]
        print("warm-up (model cache)", file=sys.stderr, flush=True)
        subprocess.run(warm, check=True, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        for rep in range(a.reps):
            for rev, tree in trees.items():
                cmd = [sys.executable, str(bench), "--repo", str(tree), "--label", f"{rev}@{tree.name}",
                       "--out", str(out), "--append", *extra]
                print(f"rep {rep + 1}/{a.reps}: {rev} ({tree.name})", file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL)
    import pandas as pd

    df = pd.read_csv(out)
    med = df.groupby("label", sort=False)[["wall_s", "private_compute_s", "peak_rss_gib", "load_avg_1m"]].median()
    print(med.to_string())
    walls = med["wall_s"].tolist()
    if len(walls) == 2:
        print(f"speed-up (median wall_s, before / after): {walls[0] / walls[1]:.2f}x")
    print(f"tokens_match: {df.tokens_match.all()}  rows: {len(df)}  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
