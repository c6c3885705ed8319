"""Inference runtimes for a :class:`~pipeline.extract.TapExtractor`.

``make_runner`` returns a callable mapping a uint8 image batch (on the
target device) to the tuple of pooled tap tensors.  ``eager`` is plain torch
(the reference: bit-for-bit repeatable on CPU); ``compile`` is
``torch.compile``; on CUDA the eager and compiled runners use autocast
(fp16) and channels_last.  Every runner agrees with eager within the
tolerance documented in the README (tests/test_runtimes.py checks it).
"""

from __future__ import annotations

import logging

import torch

from .errors import DeviceError, UsageError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "eager", "compile")


def available_runtimes(device: torch.device) -> list[str]:
    """Runtimes that can run on ``device`` here, fastest first."""
    return ["compile", "eager"]


def resolve_runtime(name: str, device: torch.device) -> str:
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
    if name == "auto":
        return available_runtimes(device)[0]
    if name not in available_runtimes(device):
        raise DeviceError(f"runtime {name!r} is not available for device {device}")
    return name


def make_runner(extractor, runtime: str, device: torch.device, batch_size: int,
                preprocessing):
    """A callable ``uint8 (N, 3, S, S) -> tuple of (N, C)`` for ``runtime``."""
    runtime = resolve_runtime(runtime, device)
    extractor = extractor.to(device).eval()
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    module = extractor
    if runtime == "compile":
        module = torch.compile(extractor, dynamic=False)

    def run(batch):
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return module(batch)
        return module(batch)

    return run
