"""Loading weights without running code: local state_dicts and torchvision downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WeightsError, opt, unsafe_load_reason
from ..files import sha256_file

#: Base URL replacing torchvision's download host (a mirror); unset = torchvision's own.
MIRROR_ENV = "WORKBENCH_TORCHVISION_MIRROR"


def download_torchvision_weights(weights_enum, mirror: str | None = None):
    """Fetch a torchvision weights file into torch's hub cache and return its state_dict.

    ``mirror`` (or the ``WORKBENCH_TORCHVISION_MIRROR`` environment variable)
    replaces the download host, keeping the file name.
    """
    import torch

    url = weights_enum.url
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                  check_hash=False, weights_only=True)
    except Exception as exc:  # URLError, HTTPError, socket errors...
        raise WeightsError(
            f"could not download ImageNet weights {weights_enum} from {url} ({exc}); "
            f"without network access, pass {opt('weights', 'PATH')} to a local state_dict "
            "(torchvision's file saved with torch.save(model.state_dict(), PATH))"
        ) from None


def load_local_state_dict(path: str):
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            f"weights {path!r}: no such file; use {opt('weights', 'imagenet')}, "
            f"{opt('weights', 'none')} or {opt('weights', 'PATH')} to a saved state_dict",
            param="weights"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise WeightsError(f"weights file {path!r} cannot be read as a state_dict "
                           f"({unsafe_load_reason(exc)}); pass a file of tensors saved with "
                           f"torch.save(model.state_dict(), PATH), or {opt('weights', 'none')}",
                           param="weights") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path!r} holds a {type(state).__name__}, "
                           "not a state_dict")
    return state, f"file:sha256:{sha256_file(p)}"


def strict_load(model, state, source: str):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights from {source} do not fit this backbone: {exc}") from None
