#!/usr/bin/env python
"""OpenVINO precisions for extraction: fp32, bf16, and int8 (NNCF post-training
quantisation), measured for speed, agreement with fp32, and head accuracy per tap.

On the images of an ImageFolder (default all of ../shared/datasets/flower_photos),
efficientnet_lite0 with its ImageNet weights, taps layer2-4 (``--taps``), it
decodes every image once as ``extract`` does, then for each precision:

- runs the network forward only, timed (images/s, OpenVINO THROUGHPUT hint);
- compares each tap with fp32: the largest difference relative to the tap's
  largest magnitude, and the lowest cosine similarity of a vector;
- fits the logistic-regression head of ``fit`` (C chosen on the validation
  split, refitted on train + val) on the store's own split, and scores test.

int8 is calibrated on ``--calibration`` images of the *training* split only
(NNCF ``quantize``, mixed preset), so nothing about validation or test images
shapes it.  bf16 needs a CPU with AVX512-BF16 or AMX (``lscpu``); it is
skipped, with a line, elsewhere.  The split is the one ``extract`` stores
(seed 0, 70/15/15), taken from a real store of the same folder.

Example::

    python benchmarks/bench_precision.py                     # all 3,670 flowers
    python benchmarks/bench_precision.py --limit 600         # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench.extract import BACKBONE, SHARED_FLOWERS, decode_all  # noqa: E402

DEFAULT_DATA = SHARED_FLOWERS


def openvino_model(taps):
    """The IR ``extract`` uses (converted once, cached) and its OpenVINO core."""
    from pipeline.backbones import get_backbone, load_backbone
    from pipeline.extraction import runtimes
    from pipeline.extraction.features import network_key
    from pipeline.extraction.forward import build_extractor

    spec = get_backbone(BACKBONE)
    xml = runtimes.export_openvino(lambda: build_extractor(load_backbone(BACKBONE), taps),
                                   spec.preprocessing.input_size,
                                   key=network_key(spec, "imagenet", taps, "avg"))
    ov = runtimes._import_optional("openvino")
    core = ov.Core()
    return core, core.read_model(xml)


def quantize_int8(core, model, images, calibration_rows, batch: int = 8):
    import nncf

    def items():
        for s in range(0, len(calibration_rows), batch):
            yield images[calibration_rows[s:s + batch]].numpy()

    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(items())),
                              subset_size=len(calibration_rows),
                              preset=nncf.QuantizationPreset.MIXED)
    return quantized, time.perf_counter() - t0


def run(core, model, images, precision: str, batch: int = 32):
    """``({tap index: (n, C)}, images/s)`` over ``images`` with OpenVINO on the CPU."""
    ov_precision = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": ov_precision,
                                                 "PERFORMANCE_HINT": "THROUGHPUT"})
    n_out = len(compiled.outputs)
    request_batch = 8
    queue = __import__("openvino").AsyncInferQueue(
        compiled, 2 * int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    outs = {}

    def done(request, start):
        outs[start] = [request.get_output_tensor(i).data.copy() for i in range(n_out)]

    queue.set_callback(done)
    x = images.numpy()
    queue.start_async({0: x[:request_batch]}, -1)          # warm-up, not timed
    queue.wait_all()
    outs.clear()
    t0 = time.perf_counter()
    for s in range(0, len(x), request_batch):
        queue.start_async({0: x[s:s + request_batch]}, s)
    queue.wait_all()
    seconds = time.perf_counter() - t0
    starts = sorted(outs)
    feats = {i: np.concatenate([outs[s][i] for s in starts]).astype(np.float32)
             for i in range(n_out)}
    return feats, len(x) / seconds


def head_accuracy(X, labels, split) -> float:
    from pipeline.heads.selection import select_and_fit

    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    fit = select_and_fit("logreg", X[tr], labels[tr], X[va], labels[va])
    return float(np.mean(fit.model.predict(X[te]) == labels[te]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=0, help="About N images (0 = all).")
    p.add_argument("--taps", default="layer2,layer3,layer4")
    p.add_argument("--calibration", type=int, default=300,
                   help="Training images that calibrate int8.")
    args = p.parse_args(argv)
    taps = tuple(args.taps.split(","))

    from pipeline.extraction.job import ExtractConfig, run_extract
    from pipeline.extraction.runtimes import cpu_has_bf16
    from pipeline.store.hdf5 import FeatureStore

    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    store = FeatureStore(run_extract(ExtractConfig(
        data=args.data, layers=taps, out=str(work), limit=args.limit or None,
        progress=False)).path)
    paths, labels = store.paths, store.labels
    split = np.asarray(store.SPLITS)[store.split_codes]
    images, decode_ms = decode_all(Path(store.data_root), paths)
    assert len(images) == len(paths), "every image of the store must decode"
    print(f"# bench_precision: {len(paths)} images of {args.data} ({BACKBONE}, taps "
          f"{'+'.join(taps)}); {os.cpu_count()} CPUs, {platform.processor() or '?'}; "
          f"bf16 in this CPU: {cpu_has_bf16()}; load average {os.getloadavg()[0]:.2f}")

    core, model = openvino_model(taps)
    train_rows = np.flatnonzero(split == "train")
    rng = np.random.default_rng(0)
    calib = np.sort(rng.choice(train_rows, min(args.calibration, len(train_rows)),
                               replace=False))
    results = {}
    results["fp32"] = run(core, model, images, "fp32")
    if cpu_has_bf16():
        results["bf16"] = run(core, model, images, "bf16")
    else:
        print("bf16: skipped (no AVX512-BF16 or AMX in this CPU)")
    try:
        q, q_seconds = quantize_int8(core, model, images, calib)
        results["int8"] = run(core, q, images, "int8")
        print(f"int8: NNCF quantisation on {len(calib)} training images took {q_seconds:.1f} s")
    except ImportError:
        print("int8: skipped (pip install nncf)")

    ref, ref_speed = results["fp32"]
    accuracy = {}
    print("\n| precision | forward img/s | x fp32 | tap | max rel. diff | min cosine | "
          "logreg test acc | vs fp32 (points) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, (feats, speed) in results.items():
        for i, tap in enumerate(taps):
            a, b = feats[i], ref[i]
            rel = float(np.abs(a - b).max() / np.abs(b).max())
            cos = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1)
                                                    * np.linalg.norm(b, axis=1) + 1e-12)))
            acc = head_accuracy(a, labels, split)
            base = head_accuracy(b, labels, split) if name != "fp32" else acc
            accuracy[name, tap] = acc
            print(f"| {name} | {speed:.1f} | {speed / ref_speed:.2f} | {tap} | {rel:.2e} | "
                  f"{cos:.5f} | {acc:.4f} | {100 * (acc - base):+.2f} |")
    print(f"\n# decoding alone: {decode_ms:.2f} CPU-ms/img; load average at end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
