"""``track``: every run record of a folder -> MLflow (one MLflow run each; optional)."""

from __future__ import annotations

import logging

import click

from ..configs import DEFAULT_EXPERIMENT
from .errors import handle_errors
from .params import command, runs_option


@command()
@runs_option
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (a server, sqlite:///FILE.db, ...); default: "
                   "MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db in the current "
                   "folder, its artifacts in mlruns/ beside it.")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
              help="MLflow experiment to log into (made when missing).")
@click.option("--report", default="auto", show_default=True,
              help="HTML report logged with each new run: a file, none, or auto (report.html "
                   "beside the runs folder, when there).")
@handle_errors
def track(runs_dir, tracking_uri, experiment, report):
    """Log every run in --runs to MLflow: one MLflow run per record, named by its label,
    with its setup and hyperparameters as params, every metric it measured, and the
    record, its model file and the report as artifacts.  A record already logged to the
    experiment is not logged again.  Needs MLflow: pip install 'transfer-workbench[mlflow]'.

    Example: python cli.py track --runs reports/demo/STAMP/runs
             --report reports/demo/STAMP/report.html
    """
    from ..workflows.track import run_track

    # MLflow's first use of a SQLite store runs its schema migrations, each logged at INFO
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    result = run_track(runs_dir, tracking_uri, experiment, report)
    click.echo(result.summary())
    if result.tracking_uri.startswith("sqlite:"):
        click.echo(f"browse them: mlflow ui --backend-store-uri {result.tracking_uri}")
