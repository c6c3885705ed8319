"""Saving and loading fitted heads in a form that cannot run code when loaded.

A fitted head travels with run records, and a runs folder is often shared:
unpickling it (joblib, pickle, ``torch.load`` without ``weights_only``)
would run whatever a crafted file asks for.  Heads are written with
``skops.io``, whose loader only rebuilds the types it is told to trust:
scikit-learn's own estimators are trusted by skops, and each head kind lists
the few more its heads contain (``HeadKind.trusted``,
:func:`pipeline.heads.registry.trusted_types`).  A file that needs any other type, a
pickle, or bytes that are not a skops archive, is refused with a message.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import StoreError, program
from .registry import trusted_types

#: Extension of a saved head.
HEAD_EXT = "skops"

#: Suffixes of formats that unpickle on load: refused, never opened.
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def save_head(bundle: dict, path) -> None:
    """Write ``bundle`` (the fitted model and plain metadata) to ``path`` with skops."""
    import skops.io as sio

    sio.dump(bundle, path)


def load_head(path) -> dict:
    """The bundle saved by :func:`save_head`; refuses pickles and untrusted types."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no fitted head at {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise StoreError(
            f"{path} is a pickle ({path.suffix}): loading it could run any code it holds, "
            f"so it is not opened. Heads are saved as .{HEAD_EXT} since this version: "
            f"refit with `{program()} fit` to write one")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise StoreError(f"{path} is not a saved head (a skops archive): {exc}. "
                         f"Refit with `{program()} fit` to write it again") from None
    refused = sorted(set(untrusted) - set(trusted_types()))
    if refused:
        raise StoreError(f"{path} asks to build types a head never contains "
                         f"({', '.join(refused)}); it was not loaded")
    try:
        bundle = sio.load(path, trusted=list(untrusted))
    except Exception as exc:  # a damaged archive fails inside skops in many ways
        raise StoreError(f"{path} could not be read as a saved head ({type(exc).__name__}: "
                         f"{exc}); refit with `{program()} fit`") from None
    if not isinstance(bundle, dict) or "model" not in bundle:
        raise StoreError(f"{path} holds no fitted head")
    return bundle
