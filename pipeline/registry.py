"""A registry of named things, as the head and model-kind registries keep them.

One ordered dict with the same rules for each: a name is registered once (unless
replaced on purpose), listed in the order of registration, and an unknown name
is a :class:`~pipeline.errors.UsageError` listing the valid ones.  Standard
library only, so a registry can sit under the CLI's choices.
"""

from __future__ import annotations

from .errors import UsageError


class Registry:
    """Named items; ``what`` names one in messages (``classifier``, ``model kind``) and
    ``param`` is the parameter an unknown name was given for."""

    def __init__(self, what: str, param: str | None = None):
        self.what, self.param = what, param
        self._items: dict = {}

    def add(self, name: str, item, replace: bool = False):
        """Register ``item`` as ``name``; returns it."""
        if name in self._items and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered (pass replace=True)")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Forget ``name`` (a test's own item, once the test is done)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self._items)

    def items(self) -> list:
        """The registered items, in the same order."""
        return list(self._items.values())

    def get(self, name: str):
        """The item registered as ``name``; :class:`UsageError` listing the valid names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UsageError(f"unknown {self.what} {name!r}; valid: {', '.join(self._items)}",
                             param=self.param) from None
