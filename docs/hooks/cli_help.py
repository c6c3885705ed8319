"""MkDocs hook: the commands page lists every command's ``--help``, read from the CLI itself.

``docs/commands.md`` holds the marker below; at build time it is replaced by one
section per command with the text ``python cli.py COMMAND --help`` prints, so the
reference cannot drift from the options.  Rendering help imports only ``cli.py``
and the light ``pipeline.options`` (commands import their heavy modules when run).
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "<!-- every command's --help -->"
ROOT = Path(__file__).resolve().parents[2]


def _help_sections() -> str:
    import click

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import cli

    group = cli.cli
    parts = []
    for name in sorted(group.commands):
        command = group.commands[name]
        with click.Context(group, info_name="python cli.py", terminal_width=100) as parent:
            with click.Context(command, info_name=name, parent=parent,
                               terminal_width=100, max_content_width=100) as ctx:
                text = command.get_help(ctx)
        parts.append(f"### `{name}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _help_sections())
