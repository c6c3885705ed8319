#!/usr/bin/env python
"""Exported classifier against ``predict``: latency, throughput and agreement.

On the bundled flowers (150 photos), efficientnet_lite0 (its packaged
ImageNet weights), tap layer4, a logreg head (holdout): extract, fit,
``export``, then measure

- the exported model in ONNX Runtime on crops made beforehand: single-image
  latency (median and 90th percentile of ``--repeats`` runs) and batch
  throughput (batches of ``--batch``);
- end to end from files in this process: ``run_predict`` with the run
  (features by eager torch, then the head) and with the ``.onnx`` (PIL crops,
  ONNX Runtime), one image (median of several calls; each call builds its
  model, as ``predict`` does) and all images;
- the whole process, ``python cli.py predict --model RUN|model.onnx``, on one
  image and on all (wall time, median of ``--procs`` runs);
- agreement: the graph against eager cut network + head on the same uint8
  batch, and the two ``predict`` paths from files (PIL vs torch resize).

Example::

    python benchmarks/bench_export.py
    python benchmarks/bench_export.py --repeats 50 --procs 2
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), float(np.percentile(times, 90))


def _wall(cmd, n: int, cwd) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=100, help="single-image ONNX runs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--calls", type=int, default=5, help="in-process predict calls, 1 image")
    ap.add_argument("--procs", type=int, default=3, help="whole-process runs per case")
    ap.add_argument("--workdir", default=None, help="keep the store, runs and model here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort
    import torch

    from pipeline.backbones import load_backbone
    from pipeline.configs import FitConfig
    from pipeline.data.decode import CropRule
    from pipeline.data.manifest import bundled_data_root
    from pipeline.extraction.forward import build_extractor
    from pipeline.extraction.job import ExtractConfig, run_extract
    from pipeline.heads.selection import predict_proba
    from pipeline.workflows.export import run_export
    from pipeline.workflows.fit import run_fit
    from pipeline.workflows.predict import load_run_model, run_predict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export_"))
    load = os.getloadavg()
    print(f"# bench_export: bundled flowers, efficientnet_lite0 layer4 + logreg; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), onnxruntime {ort.__version__}; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    t0 = time.perf_counter()
    summary = run_extract(ExtractConfig(backbone="efficientnet_lite0", layers=("layer4",),
                                        out=str(work / "features"), progress=False))
    t_extract = time.perf_counter() - t0
    ((record, _),) = run_fit(FitConfig(features=str(summary.path), layer="layer4",
                                       protocol="holdout"), work / "runs")
    run_id, runs = record["run_id"], work / "runs"
    out = work / "model.onnx"
    res = run_export(run_id, out, runs, overwrite=True)
    print(f"setup: extract {summary.n_images} images {t_extract:.1f} s; export {res.seconds:.1f} s "
          f"({out.stat().st_size / 1e6:.1f} MB); ONNX vs torch on probes {res.max_difference:.1e}")

    files = sorted(p for p in bundled_data_root().rglob("*.jpg"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rule = CropRule(**__import__("json").loads(
        session.get_modelmeta().custom_metadata_map["crop_rule"]))
    t0 = time.perf_counter()
    crops = np.stack([rule.load(f) for f in files])
    t_decode = (time.perf_counter() - t0) / len(files) * 1e3

    one = crops[:1]
    for _ in range(5):
        session.run(None, {"images": one})
    med, p90 = _median_ms(lambda: session.run(None, {"images": one}), args.repeats)
    print(f"\nONNX Runtime, crops made beforehand ({t_decode:.1f} ms/image to decode+crop "
          "with PIL):")
    print(f"  single image      median {med:7.2f} ms   p90 {p90:7.2f} ms   "
          f"({args.repeats} runs)")
    def one_pass():
        for s in range(0, len(crops), args.batch):
            session.run(None, {"images": crops[s:s + args.batch]})

    one_pass()                                   # every batch shape planned once
    reps = 5
    med, _ = _median_ms(one_pass, reps)
    print(f"  batch {args.batch:<3}         {len(crops) / med * 1e3:7.1f} images/s (median of "
          f"{reps} passes over {len(crops)} images)")

    print("\npredict in this process, from files:")
    rows = {}
    for name, ref in (("run (torch + head)", run_id), ("model.onnx", str(out))):
        med, _ = _median_ms(lambda ref=ref: run_predict(ref, [files[0]], runs), args.calls)
        t0 = time.perf_counter()
        preds = run_predict(ref, files, runs, top_k=5)
        secs = time.perf_counter() - t0
        rows[name] = preds
        print(f"  {name:<19} 1 image median {med:8.1f} ms   {len(files)} images "
              f"{secs:6.2f} s = {len(files) / secs:6.1f} images/s")

    print("\npredict, whole process (python cli.py predict ...; wall time):")
    py = [sys.executable, str(ROOT / "cli.py"), "-q", "predict", "--runs", str(runs)]
    for name, ref in (("run (torch + head)", run_id), ("model.onnx", str(out))):
        w1 = _wall(py + ["--model", ref, str(files[0])], args.procs, work)
        wn = _wall(py + ["--model", ref, str(bundled_data_root())], args.procs, work)
        print(f"  {name:<19} 1 image {w1:6.2f} s   {len(files)} images {wn:6.2f} s "
              f"(median of {args.procs})")

    classes = record["classes"]
    head = load_run_model(run_id, runs).bundle["model"]
    extractor = build_extractor(load_backbone("efficientnet_lite0", "imagenet"), ["layer4"])
    batch = crops[:32]
    with torch.inference_mode():
        feats = extractor(torch.from_numpy(batch).permute(0, 3, 1, 2))[0].numpy()
    same = np.abs(session.run(None, {"images": batch})[0] - predict_proba(head, feats)).max()
    a = np.array([[dict(p.top)[c] for c in classes] for p in rows["run (torch + head)"]])
    b = np.array([[dict(p.top)[c] for c in classes] for p in rows["model.onnx"]])
    print(f"\nagreement: same 32 uint8 crops, graph vs eager network + head: max |dp| "
          f"{same:.1e}; from files, .onnx (PIL resize) vs run (torch resize), "
          f"{len(files)} images: max |dp| {np.abs(a - b).max():.1e}, same label "
          f"{np.mean(a.argmax(1) == b.argmax(1)):.3f}")
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; files in {work}")


if __name__ == "__main__":
    main()
