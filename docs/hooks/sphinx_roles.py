"""Griffe extension for the API reference: the docstrings' Sphinx roles read as Markdown.

The package's docstrings cross-reference with reStructuredText roles
(``:func:`extract```, ``:class:`~pipeline.store.hdf5.FeatureStore```) and
introduce examples with ``Example::``.  mkdocstrings renders Markdown, where
both would show as written; this turns a role into inline code of its target
(the last name only after ``~``, as Sphinx shows it) and ``::`` into ``:``.
Nothing else in a docstring changes.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj):`(~?)([^`]+)`")
LITERAL_INTRO = re.compile(r"(\S)::$", re.M)


def markdown(text: str) -> str:
    def code(match: re.Match) -> str:
        short, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    return LITERAL_INTRO.sub(r"\1:", ROLE.sub(code, text))


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
