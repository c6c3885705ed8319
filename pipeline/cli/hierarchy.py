"""``hierarchy``: what each tap of a backbone responds to, on the user's own images."""

from __future__ import annotations

import click

from ..configs import HierarchyConfig
from .errors import handle_errors
from .params import backbone_choice, command, config_options, runs_option


@command()
@config_options(HierarchyConfig, backbone=backbone_choice())
@runs_option
@handle_errors
def hierarchy(runs_dir, **fields):
    """Show what each tap responds to: for a few channels per tap, the patches of your
    images that activate it most, and the first convolution's filters.

    Writes a record under <runs>/hierarchy/ that `report` shows (section 10).

    Example: python cli.py hierarchy --limit 300
    """
    from ..workflows.hierarchy import run_hierarchy

    _record, path = run_hierarchy(HierarchyConfig(**fields), runs_dir)
    click.echo(str(path))
