#!/usr/bin/env python
"""OpenVINO conversion: ``convert_openvino`` against ``ov.convert_model``, interleaved.

For each backbone (default: efficientnet_lite0 with its packaged weights, timm
deit_tiny and torchvision resnet18 with random weights; default taps and pooling),
it converts the cut network both ways, alternating (A, B, A, B, ``--repeats``
pairs), then

- the conversion times and the median of the per-pair ratios new / old;
- each IR's largest error against eager torch, relative to each tap's largest
  value, compiled at f32 as the runner does (:data:`TOLERANCE` fp32 is 1e-4);
- each IR's operation count;
- inference speed of the two saved IRs (compiled as ``_openvino_runner`` does:
  f32, THROUGHPUT, requests of 8 queued on 2 per stream), alternating, and the
  median of per-pair ratios new / old.

``ov.convert_model`` is the converter the workbench used before issue 24 ("a
cheap first run"); it stays in OpenVINO, so this keeps measuring the two.  On a
shared machine compare only the ratios (the pairs run back to back).

Example::

    python benchmarks/bench_conversion.py
    python benchmarks/bench_conversion.py --backbones efficientnet_lite0 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = "efficientnet_lite0:imagenet,timm/deit_tiny_patch16_224:none,resnet18:none"


def convert_old(ov, extractor, example):
    """What ``export_openvino`` did before: ovc's ``convert_model``, then the reshape."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = ov.convert_model(extractor, example_input=example)
    model.reshape({0: ov.PartialShape([-1, *example.shape[1:]])})
    return model


def relative_error(ov, model, extractor, images) -> float:
    """Largest ``max|ir - eager| / max|eager|`` over the taps, compiled at f32."""
    import torch

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(images.numpy())
    with torch.no_grad():
        want = [t.numpy() for t in extractor(images)]
    return max(float(np.abs(out[i] - w).max() / np.abs(w).max()) for i, w in enumerate(want))


def throughput(ov, compiled, images) -> float:
    """Images per second through an ``AsyncInferQueue`` fed requests of 8."""
    streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = ov.AsyncInferQueue(compiled, 2 * streams)
    x = images.numpy()
    t0 = time.perf_counter()
    for start in range(0, len(x), 8):
        queue.start_async({0: x[start:start + 8]})
    queue.wait_all()
    return len(x) / (time.perf_counter() - t0)


def pair_ratio(old: list, new: list) -> float:
    return statistics.median(b / a for a, b in zip(old, new))


def bench_backbone(name: str, weights: str, repeats: int, n_images: int) -> None:
    import torch

    from pipeline.backbones import get_backbone, load_backbone
    from pipeline.extraction import runtimes as rt
    from pipeline.extraction.forward import build_extractor

    ov = rt._import_optional("openvino")
    spec = get_backbone(name)
    extractor = build_extractor(load_backbone(name, weights), spec.default_taps)
    size = spec.preprocessing.input_size
    example = rt._example_input(size)
    ways = {"old": lambda: convert_old(ov, extractor, example),
            "new": lambda: rt.convert_openvino(extractor, example)}
    seconds, models = {k: [] for k in ways}, {}
    for _ in range(repeats):
        for k, convert in ways.items():
            t0 = time.perf_counter()
            models[k] = convert()
            seconds[k].append(time.perf_counter() - t0)
    images = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, size=(n_images, 3, size, size), dtype=np.uint8))
    folder = tempfile.mkdtemp(prefix="bench-conversion-")
    core, compiled = ov.Core(), {}
    for k, model in models.items():
        ov.save_model(model, f"{folder}/{k}.xml", compress_to_fp16=False)
        compiled[k] = core.compile_model(core.read_model(f"{folder}/{k}.xml"), "CPU",
                                          {"INFERENCE_PRECISION_HINT": "f32",
                                           "PERFORMANCE_HINT": "THROUGHPUT"})
        print(f"{name} {k}: conversion {[round(s, 2) for s in seconds[k]]} s; error against "
              f"eager {relative_error(ov, model, extractor, images[:8]):.1e}; "
              f"{len(model.get_ordered_ops())} ops")
    for c in compiled.values():
        throughput(ov, c, images)   # warm-up
    speed = {k: [] for k in compiled}
    for _ in range(2 * repeats):
        for k, c in compiled.items():
            speed[k].append(throughput(ov, c, images))
    print(f"{name}: conversion new / old {pair_ratio(seconds['old'], seconds['new']):.2f}; "
          f"inference speed new / old {pair_ratio(speed['old'], speed['new']):.2f} "
          f"({statistics.median(speed['new']):.0f} vs {statistics.median(speed['old']):.0f} "
          "img/s)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default=FAMILIES,
                   help="name:weights, comma-separated (default: one of each family).")
    p.add_argument("--repeats", type=int, default=3, help="Pairs of conversions.")
    p.add_argument("--images", type=int, default=64, help="Images per speed measurement.")
    args = p.parse_args(argv)
    for item in args.backbones.split(","):
        name, _, weights = item.rpartition(":")
        bench_backbone(name, weights, args.repeats, args.images)


if __name__ == "__main__":
    main()
