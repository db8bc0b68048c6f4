#!/usr/bin/env python3
"""Publish one sitting of `make bench` into results/engine_ops/engine_vs_anchors.csv and regenerate the performance
section of the docs (docs/results.md) from it.

Steps:
  1. Read outputs/bench/<stamp>/anchors.csv (the combined table of one sitting) and check it holds the
     engine (a sitting without it has nothing to compare).
  2. Copy it to --out (default results/engine_ops/engine_vs_anchors.csv); an existing file is replaced only with --overwrite.
  3. Replace the text between docs/results.md's `<!-- performance:start ... -->` and `<!-- performance:end -->`
     markers with the section rendered from --out (comet_core/results/anchors.py).
With --readme-only, only step 3 runs, from the table already at --out.

Usage: python benchmarks/bench_publish.py outputs/bench/<stamp> [--overwrite]
       python benchmarks/bench_publish.py --readme-only
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from comet_core.errors import CometError  # noqa: E402
from comet_core.results import anchors  # noqa: E402
from comet_core.results.machine import refuse_existing  # noqa: E402

log = logging.getLogger("bench_publish")

DEFAULT_OUT = "results/engine_ops/engine_vs_anchors.csv"
DEFAULT_PAGE = "docs/results.md"   # the page with the performance markers


def publish(sitting: Path, out: Path, overwrite: bool) -> bool:
    """Copy the sitting's anchors.csv to out; False (one line on stderr) if out exists without overwrite."""
    src = sitting / "anchors.csv"
    table = anchors.read_table(src)
    if "engine" not in set(table.system):
        raise CometError(f"{src} has no engine rows: the sitting's engine run failed (see {sitting}/engine.log)")
    absent = [s for s in anchors.SYSTEMS if s not in set(table.system)]
    if absent:
        log.warning("%s lacks %s: the README will say so", src, ", ".join(absent))
    reps = set(table.reps.dropna().astype(int))
    if reps and min(reps) < 3:
        log.warning("%s was a quick sitting (%d reps): medians of so few reps are noisy", src, min(reps))
    if refuse_existing(out, overwrite):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    log.info("wrote %s", out)
    return True


def regenerate_readme(table_path: Path, readme: Path, source_label: str) -> None:
    """Rewrite the README's performance section from the table at table_path."""
    body = anchors.performance_section(anchors.read_table(table_path), source=source_label)
    text = readme.read_text()
    new = anchors.replace_section(text, body)
    if new != text:
        readme.write_text(new)
    log.info("%s: performance section %s", readme, "rewritten" if new != text else "unchanged")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sitting", nargs="?", help="a sitting's folder, outputs/bench/<stamp>")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"table to write (default {DEFAULT_OUT} in the repo root)")
    ap.add_argument("--readme", default=DEFAULT_PAGE, help=f"the page to update (default {DEFAULT_PAGE} in the repo)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--readme-only", action="store_true", help="only regenerate the performance section from --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if bool(args.sitting) == args.readme_only:
        ap.error("give a sitting folder, or --readme-only (not both)")
    out = REPO / args.out if args.out == DEFAULT_OUT else Path(args.out).expanduser().resolve()
    readme = REPO / args.readme if args.readme == DEFAULT_PAGE else Path(args.readme).expanduser().resolve()
    label = args.out if args.out == DEFAULT_OUT else str(out)
    try:
        if args.sitting and not publish(Path(args.sitting).expanduser().resolve(), out, args.overwrite):
            return 2
        regenerate_readme(out, readme, label)
    except CometError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
