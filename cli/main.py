"""`comet`: the toolkit's command-line entry point.

Each command is a thin wrapper: it hands every argument it does not own to Hydra
(see cli/hydra_launch.py), and Hydra calls a plain function in `experiments/`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Comet toolkit: private LLM inference under 2PC with activation-sparsity prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def check_run(cfg, multirun: bool) -> None:
    """Preflight of one `run-experiment` job: its config, and (single runs) its output folder."""
    from pathlib import Path

    from comet_core.results.run_folder import check_destination, probe_writable
    from experiments.run import validate_config

    validate_config(cfg)
    if not multirun:
        probe_writable(Path(cfg.output_dir))
        check_destination(Path(cfg.output_dir).resolve(), bool(cfg.overwrite))


@app.command("run-experiment", context_settings=HYDRA_ARGS)
def run_experiment(ctx: typer.Context) -> None:
    """Run one private-inference experiment (Hydra overrides: model=, system=, network=, mode=, ...).

    Writes config.yaml, metrics.csv, ops.csv (and generation.csv) into the output folder and
    prints that folder's absolute path as the last line of stdout. `--help` shows Hydra's help.
    """
    from cli.hydra_launch import launch
    from experiments.run import run_experiment_task

    launch(run_experiment_task, "config", list(ctx.args), "comet run-experiment", check=check_run)


@app.command("train-lm", context_settings=HYDRA_ARGS)
def train_lm(ctx: typer.Context) -> None:
    """Train the toolkit's ReLU OPT-architecture model on the Shakespeare texts."""
    from cli.hydra_launch import launch
    from experiments.train_lm import train_lm_task

    launch(train_lm_task, "train_lm", list(ctx.args), "comet train-lm")


@app.command("train-predictor", context_settings=HYDRA_ARGS)
def train_predictor(ctx: typer.Context) -> None:
    """Train and evaluate the activation-sparsity predictors for a model."""
    from cli.hydra_launch import launch
    from experiments.train_predictor import train_predictor_task

    launch(train_predictor_task, "train_predictor", list(ctx.args), "comet train-predictor")


if __name__ == "__main__":  # pragma: no cover
    app()
