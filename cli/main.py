"""`comet`: the toolkit's command-line entry point.

Each command is a thin wrapper: it hands every argument it does not own to Hydra
(see cli/hydra_launch.py), and Hydra calls a plain function in `experiments/`.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Comet toolkit: private LLM inference under 2PC with activation-sparsity prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        from comet_core.results.run_info import toolkit_version
        from comet_core.results.tables import git_revision

        typer.echo(f"comet {toolkit_version()} (git {git_revision()})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the toolkit's version and git revision, then exit.")) -> None:
    """Comet toolkit: private LLM inference under 2PC with activation-sparsity prediction."""


HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
HELP_FLAGS = ("--help", "-h")


def hydra_help(ctx: typer.Context, config_name: str, prog: str) -> None:
    """`--help` / `-h` of a Hydra command: its keys, types, defaults and groups (cli/help.py), not Hydra's page."""
    if any(a in HELP_FLAGS for a in ctx.args):
        from cli.help import config_help

        doc = (ctx.command.help or "").strip()
        typer.echo(config_help(config_name, prog, doc))
        raise typer.Exit()


def check_run(cfg, multirun: bool) -> None:
    """Preflight of one `run-experiment` job: its config, and (single runs) its output folder."""
    from pathlib import Path

    from comet_core.results.run_folder import check_destination, probe_writable
    from comet_core.roles.run_config import validate_config

    validate_config(cfg)
    if not multirun:
        probe_writable(Path(cfg.output_dir))
        check_destination(Path(cfg.output_dir).resolve(), bool(cfg.overwrite))


@app.command("run-experiment", context_settings=HYDRA_ARGS)
def run_experiment(ctx: typer.Context) -> None:
    """Run one private-inference experiment (Hydra overrides: model=, system=, network=, mode=, ...).

    Writes config.yaml, metrics.csv, ops.csv, run_info.json (and generation.csv, ledger.csv.gz) into a
    staging folder that moves into place when complete (COMPLETE marks it), and prints the output
    folder's absolute path as the last line of stdout. Every value, of every job of a -m sweep, is
    checked first.
    """
    hydra_help(ctx, "config", "comet run-experiment")
    from cli.hydra_launch import launch
    from experiments.run import run_experiment_task

    launch(run_experiment_task, "config", list(ctx.args), "comet run-experiment", check=check_run)


@app.command("train-lm", context_settings=HYDRA_ARGS)
def train_lm(ctx: typer.Context) -> None:
    """Train the toolkit's ReLU OPT-architecture model on the Shakespeare texts."""
    hydra_help(ctx, "train_lm", "comet train-lm")
    from cli.hydra_launch import launch
    from comet_core.models.lm_train_task import train_lm_task

    from comet_core.config.schema import check_train_config

    launch(train_lm_task, "train_lm", list(ctx.args), "comet train-lm", check=lambda cfg, multirun: check_train_config(cfg))


@app.command("train-predictor", context_settings=HYDRA_ARGS)
def train_predictor(ctx: typer.Context) -> None:
    """Train and evaluate the activation-sparsity predictors for a model."""
    hydra_help(ctx, "train_predictor", "comet train-predictor")
    from cli.hydra_launch import launch
    from comet_core.predictor.train_task import check_train_predictor, train_predictor_task

    launch(train_predictor_task, "train_predictor", list(ctx.args), "comet train-predictor", check=check_train_predictor)


@app.command("predictor-tradeoff", context_settings=HYDRA_ARGS)
def predictor_tradeoff(ctx: typer.Context) -> None:
    """Train FFN predictors over a grid of labels, ranks and blocks; recall, sparsity, perplexity per point."""
    hydra_help(ctx, "train_predictor", "comet predictor-tradeoff")
    from cli.hydra_launch import launch
    from experiments.cost_accuracy import check_tradeoff, tradeoff_task

    launch(tradeoff_task, "train_predictor", list(ctx.args), "comet predictor-tradeoff", check=check_tradeoff)


@app.command("keys")
def keys(out: Path = typer.Option(..., "--out", help="folder for ca.pem, ca.key and <role>.pem/.key"),
         overwrite: bool = typer.Option(False, "--overwrite", help="replace keys already in --out"),
         days: int = typer.Option(30, "--days", help="validity of the certificates in days")) -> None:
    """Make a small CA and a certificate and key for each role (p0, p1, dealer, client, owner) for transport=tcp."""
    from comet_core.comm.keys import make_keys
    from comet_core.errors import CometError

    try:
        files = make_keys(out, overwrite=overwrite, days=days)
    except CometError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {len(files)} files into {out.resolve()} (copy ca.pem and the role's .pem/.key to each machine)")


@app.command("party", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def party(ctx: typer.Context,
          role: str = typer.Option(..., "--role", help="p0 | p1 | dealer | client | owner"),
          keys_dir: Path = typer.Option(None, "--keys", help="folder with ca.pem and <role>.pem/.key (default: transport.keys_dir)"),
          out: Path = typer.Option(None, "--out", help="folder for this role's result.json (and the parties' ledger)"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier role's files in --out"),
          config: Path = typer.Option(None, "--config", help="a resolved config.yaml (run-experiment passes one) instead of overrides")) -> None:
    """Run one role of a transport=tcp run as this process (Hydra overrides as for run-experiment, e.g.
    transport=tcp transport.hosts.p0=10.0.0.1 transport.ports.p0=29500 ...). docs/tcp.md: "Two machines"."""
    import logging
    import sys

    from cli.preflight import one_line
    from comet_core.errors import CometError

    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][{role}][%(name)s][%(levelname)s] %(message)s",
                        stream=sys.stderr)
    try:
        from comet_core.roles.party import compose, load_config

        cfg = load_config(str(config)) if config is not None else compose(list(ctx.args))
        if cfg.transport.name != "tcp":
            raise CometError("comet party needs transport=tcp (conf/transport/tcp.yaml)")
        keys = keys_dir or cfg.transport.keys_dir
        if not keys:
            raise CometError("give --keys DIR or transport.keys_dir=DIR (made by `comet keys --out DIR`)")
    except CometError as e:
        typer.echo(f"error: {role}: {e}", err=True)
        raise typer.Exit(2) from None
    except Exception as e:  # noqa: BLE001 - Hydra/OmegaConf composition errors: one line
        typer.echo(f"error: {role}: {one_line(e)}", err=True)
        raise typer.Exit(2) from None
    from comet_core.roles.party import main as party_main

    raise typer.Exit(party_main(role, cfg, str(keys), str(out or Path("outputs") / f"party-{role}"), overwrite=overwrite))


@app.command("compare")
def compare(runs: list[Path] = typer.Argument(..., help="run folders (each the last line a run-experiment printed)"),
            csv: bool = typer.Option(False, "--csv", help="print the table as CSV (bytes, seconds, ratios) for scripts"),
            networks: str = typer.Option("default", "--networks",
                                         help="default: every phase of the first run's network and the total of "
                                              "the others; all: every phase of every network; total: the first "
                                              "network's total only")) -> None:
    """Runs side by side: bytes, rounds, modelled comm, measured compute and total per phase and network,
    with ratios against the first run (or against the system=dense run when one is given)."""
    from comet_core.errors import CometError
    from experiments.compare import VIEWS, compare_frame, compare_text, load_runs

    try:
        if networks not in VIEWS:
            raise CometError(f"--networks must be one of {', '.join(VIEWS)}, got {networks!r}")
        df = compare_frame(load_runs(runs))
    except CometError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(df.to_csv(index=False).rstrip("\n") if csv else compare_text(df, networks))


@app.command("list")
def list_configs(group: str = typer.Argument(None, help="a config group (model, system, network, ...); all if omitted")) -> None:
    """List the configs of each group (conf/<group>/*.yaml) with a one-line description."""
    from cli.listing import describe_groups

    try:
        typer.echo(describe_groups(group))
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2) from None


@app.command("accuracy")
def accuracy(
    model: str = typer.Option(..., "--model", help="a trained model (conf/model/<name>.yaml): shakespeare-opt, smollm2-135m"),
    windows: int = typer.Option(None, "--windows", help="held-out windows (default 16; smollm2-135m 8)"),
    length: int = typer.Option(None, "--length", help="tokens per window (default 256)"),
    systems: str = typer.Option("dense,comet,mpcformer,secformer,puma,iron,bolt", "--systems", help="comma-separated"),
    ablations: bool = typer.Option(False, "--ablations", help="also each baseline with one operator approximated at a time"),
    out: Path = typer.Option(None, "--out", help="default results/accuracy/<model>.csv"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing table"),
    threads: int = typer.Option(2, "--threads", help="torch threads"),
) -> None:
    """Every system's perplexity and next-token accuracy on the same held-out windows (plaintext evaluation
    of each system's approximations or masks): one table per model, results/accuracy/<model>.csv."""
    import logging
    import sys

    from comet_core.errors import CometError

    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s", stream=sys.stderr)
    try:
        from experiments.accuracy import run

        path = run(model, windows, length, [s for s in systems.split(",") if s], ablations, out, overwrite, threads)
    except CometError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    import pandas as pd

    typer.echo(pd.read_csv(path)[["system", "variant", "perplexity", "next_token_accuracy", "perplexity_change_pct",
                                  "windows", "tokens"]].to_string(index=False))
    typer.echo(str(path))


@app.command("plot")
def plot(
    name: str = typer.Argument(..., help="artifact (conf/experiment/<name>.yaml), `all`, or `readme` (README table)"),
    run: Path = typer.Option(None, "--run", help="plot this sweep folder (outputs/multirun/<time>) instead of the newest complete one"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing files in results/<name>/"),
    runs_root: Path = typer.Option(Path("outputs/multirun"), "--runs-root", help="where sweeps are searched"),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="where results/<name>/ is written"),
    preset: str = typer.Option("any", "--preset", help="any | full | quick: which sweeps qualify"),
    readme: Path = typer.Option(Path("README.md"), "--readme", help="`plot readme`: the README to update"),
    from_data: bool = typer.Option(False, "--from-data", help="re-analyse results/<name>/data.csv (an earlier "
                                   "`comet plot <name>`) without the sweep: table.md, comparison.csv, figures"),
) -> None:
    """Collect an artifact's newest complete sweep into results/<name>/ (data.csv, table.md, PNG/PDF figures)
    and print the comparison with the paper (experiments/expected/<name>.csv).

    `comet plot readme` writes the reproduction table into README.md between its markers.
    """
    import logging
    import sys

    from comet_core.errors import CometError

    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s", stream=sys.stderr)
    try:
        if name == "readme":
            from plotting.readme_table import write_readme_table

            path = write_readme_table(readme, results_dir)
            typer.echo(f"reproduction table written into {path}")
            return
        from plotting.plot import plot_all, plot_artifact, plot_from_data

        if from_data:
            if name == "all" or run is not None:
                raise CometError("--from-data re-analyses one artifact's data.csv: name the artifact, without --run")
            r = plot_from_data(name, overwrite=overwrite, results_dir=results_dir)
            typer.echo(r.text)
            typer.echo(f"wrote {len(r.files)} files into {r.out_dir}")
            return
        kw = dict(overwrite=overwrite, runs_root=runs_root, results_dir=results_dir, preset=preset)
        if name == "all":
            if run is not None:
                raise CometError("--run names one sweep: use it with one artifact, not `all`")
            done, skipped, failed = plot_all(**kw)
            for r in done:
                typer.echo(r.text)
                typer.echo(f"wrote {len(r.files)} files into {r.out_dir}")
            for line in skipped:
                typer.echo(f"skipped {line}", err=True)
            for line in failed:
                typer.echo(f"error: {line}", err=True)
            if failed or not done:
                raise typer.Exit(2 if failed else 1)
            return
        r = plot_artifact(name, run=run, **kw)
        typer.echo(r.text)
        typer.echo(f"wrote {len(r.files)} files into {r.out_dir}")
    except CometError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("calibrate")
def calibrate(
    quick: bool = typer.Option(False, "--quick", help="smaller sizes, fewer repetitions (tests; a second or two)"),
    out: Path = typer.Option(None, "--out", help="profile path (default: $COMET_CACHE/calibration/profile.json, "
                                                  "which cost-mode runs read)"),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda (untested: no GPU was available)"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="replace an existing profile (refused without it: results are never overwritten silently)"),
    allow_busy: bool = typer.Option(False, "--allow-busy",
                                    help="write a profile under results/ although the load average is above 1 "
                                         "(refused without it: a busy machine inflates the units)"),
    amend: str = typer.Option(None, "--amend", help="KIND[,KIND]: time only the benchmarks of these work kinds and "
                                                    "add their units to the existing profile at --out (made on this "
                                                    "machine), keeping every other unit"),
) -> None:
    """Time each work kind of the compute model on this machine (experiments/calibrate.py) and write the
    profile that prices cost-mode compute_s (docs/compute-model.md)."""
    import logging
    import os
    import sys

    logging.basicConfig(level=logging.WARNING, format="[%(name)s][%(levelname)s] %(message)s", stream=sys.stderr)
    if device not in ("cpu", "cuda"):
        typer.echo(f"error: --device must be cpu or cuda, got {device!r}", err=True)
        raise typer.Exit(2)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        typer.echo("error: --device cuda but no CUDA device is available; calibrate the CPU (the default)", err=True)
        raise typer.Exit(2)
    from comet_core.results.compute_model import profile_path
    from comet_core.results.machine import refuse_existing
    from experiments import calibrate as cal

    dest = Path(out) if out is not None else profile_path(device)
    if amend is None and refuse_existing(dest, overwrite):
        raise typer.Exit(2)
    if amend is not None and not dest.is_file():
        typer.echo(f"error: --amend adds units to an existing profile; {dest} does not exist", err=True)
        raise typer.Exit(2)
    if cal.publishing(dest) and not allow_busy and os.getloadavg()[0] > cal.BUSY_LOAD:
        typer.echo(f"error: load average {os.getloadavg()[0]:.1f} is above {cal.BUSY_LOAD}: a profile under "
                   f"results/ is published; calibrate on a quiet machine, or pass --allow-busy", err=True)
        raise typer.Exit(2)
    if amend is not None:
        import json

        from comet_core.errors import CometError

        try:
            profile = cal.amend(json.loads(dest.read_text()), [k.strip() for k in amend.split(",") if k.strip()],
                                quick=quick, device=device)
        except CometError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    else:
        profile = cal.calibrate(quick=quick, device=device)
    for line in cal.summary_lines(profile):
        typer.echo(line)
    typer.echo(str(cal.write_profile(profile, dest).resolve()))


@app.command("fingerprint")
def fingerprint(
    tables: list[Path] = typer.Argument(None, help="tables (or their folders) to stamp with fingerprint.json"),
    check: bool = typer.Option(False, "--check", help="list every cost-mode table of results/ that HEAD's protocols "
                                                      "would price differently, with its reprice command"),
    reprice: str = typer.Option(None, "--reprice", help="the command that remakes the stamped table (default: "
                                                        "its run folder's command line or its artifact's sweep)"),
) -> None:
    """Protocol fingerprints of published tables (experiments/fingerprint.py): stamp a table made at this
    tree's protocols (`comet plot` stamps the artifacts itself), or --check which tables are stale."""
    import logging
    import sys

    from comet_core.errors import CometError

    logging.basicConfig(level=logging.WARNING, format="[%(name)s][%(levelname)s] %(message)s", stream=sys.stderr)
    from experiments import fingerprint as fp

    try:
        if check == bool(tables):
            raise CometError("give either tables to stamp or --check")
        if check:
            stale = fp.stale_tables()
            for s in stale:
                typer.echo(s.line())
            typer.echo(f"{len(stale)} of {len(fp.cost_tables())} cost-mode tables stale")
            if stale:
                raise typer.Exit(1)
            return
        for t in tables:
            if not Path(t).exists():
                raise CometError(f"{t} does not exist; name a results table or its folder")
            typer.echo(f"wrote {fp.stamp(Path(t), reprice=reprice)}")
    except CometError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":  # pragma: no cover
    app()
