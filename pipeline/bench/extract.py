"""Extraction benchmark: naive reference, forward-only ceiling, and ``extract``.

On the same N images (default 512 of ../shared/datasets/flower_photos),
efficientnet_lite0, taps layer2-4, 224 px, it measures in one run:

(a) a naive reference written the way the course does it: PIL + torchvision
    transforms, a DataLoader with no workers, eager torch, a separate forward
    pass per tap, features collected in lists and then written to HDF5;
(b) the ceiling: forward passes only, on tensors decoded beforehand, for every
    runtime installed here (the one ``extract`` uses is b; the fastest overall
    is reported too);
(c) ``extract`` end to end (files -> HDF5) in a fresh subprocess, so its
    peak memory is its own (the kernel's high-water mark, ``VmHWM``: exact,
    and nothing samples the process while it is timed; ``extract`` decodes in
    threads of that same process).

(d) ``extract --data DIR --out OUT`` with no other flag, the whole process
    timed from outside: a first run ever (an empty cache folder: the network is
    built and converted) and a second run with that cache;
(e) thingsvision doing the same (same images, tf_efficientnet_lite0, the same
    three blocks, average-pooled, written to HDF5) as its README shows, its whole
    process timed the same way, in an interpreter where it is installed
    (``--thingsvision-python``; its pins, torch 2.0 and TensorFlow, need their
    own environment), and the ratio of its time to each of (d)'s.

It prints images/s for each, the ratios c/a and c/b, and the peak memory of
(c).  It also times decoding alone (files -> model-ready uint8 crops, one
thread, as ``extract`` does it) and prints the bound that CPU time puts on c/b:
on a machine whose cores (b) already keeps busy, ``extract`` must find that
CPU time too, so c/b <= (b's CPU per image) / (b's + decoding's).  ``--scale`` adds the memory
check over the whole folder (3,670
images) against N images, and the time of an ``extract`` re-run over the
already-extracted folder (the whole ``extract`` command's process).

Part of the package, so an installed ``workbench bench extract`` runs it too;
``benchmarks/bench_extract.py`` in a checkout is a shim over :func:`main`.
Without ``--data`` it reads ``../shared/datasets/flower_photos`` beside a
checkout, else the bundled flowers subset.

Examples::

    python cli.py bench extract                        # (a), (b), (c) on 512 images
    python cli.py bench extract --scale --skip-naive   # memory flat in N, cached re-run
    python cli.py bench extract --limit 64 --runtimes eager,openvino   # quick look
    python cli.py bench extract --cold-warm --limit 0 --repeat 3 \
        --thingsvision-python ~/tv/bin/python   # (d) and (e) only, every flower
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import program

#: The folder that holds the ``pipeline`` package (a checkout's root, or site-packages).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
#: The full flowers beside a checkout (``../shared/datasets/flower_photos``).
SHARED_FLOWERS = PACKAGE_PARENT.parent / "shared" / "datasets" / "flower_photos"
BACKBONE = "efficientnet_lite0"
TAPS = ("layer2", "layer3", "layer4")


# ------------------------------------------------------------------ helpers


def default_data() -> Path:
    """The full flowers beside a checkout when they are there, else the bundled subset."""
    from pipeline.data.manifest import bundled_data_root

    return SHARED_FLOWERS if SHARED_FLOWERS.is_dir() else bundled_data_root()


def python_env() -> dict:
    """The environment of a child interpreter that imports this same ``pipeline``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT),
                                                    env.get("PYTHONPATH")) if p)
    return env


#: The extract command in a fresh interpreter (``python -m pipeline.cli``: the same
#: process a user's ``python cli.py`` or ``workbench`` starts).
CLI = [sys.executable, "-m", "pipeline.cli"]


def select_images(data: Path, limit: int | None):
    """The manifest rows ``extract`` takes with ``limit`` (same helper, same images)."""
    from pipeline.data.manifest import scan, stratified_head

    manifest = scan(data)
    keep = stratified_head(manifest.labels, limit) if limit else np.arange(len(manifest))
    return manifest, [manifest.paths[i] for i in keep], manifest.labels[keep]


# ------------------------------------------------------------------ (a) naive


def run_naive(root: Path, paths, labels, out: Path, batch_size: int) -> dict:
    """The course's way: PIL + torchvision, no workers, eager, one forward per tap."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from pipeline.backbones import get_backbone, load_backbone
    from pipeline.store.hdf5 import write_arrays

    t0 = time.perf_counter()
    spec = get_backbone(BACKBONE)
    pre = spec.preprocessing
    transform = transforms.Compose([
        transforms.Resize(int(pre.input_size / pre.crop_pct),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(pre.input_size),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            image = Image.open(root / paths[i]).convert("RGB")
            return transform(image), int(labels[i])

    model = load_backbone(BACKBONE).model
    stages = [m for _, m in spec.stages(model)]
    names = [n for n, _ in spec.stages(model)]
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, num_workers=0)
    features = {tap: [] for tap in TAPS}
    with torch.no_grad():
        for images, _ in loader:
            for tap in TAPS:  # a separate forward pass per tap
                x = images
                for stage in stages[: names.index(spec.tap(tap).stage) + 1]:
                    x = stage(x)
                features[tap].append(x.mean(dim=(2, 3)).numpy())
    write_arrays(out, {**{tap: np.concatenate(features[tap]) for tap in TAPS},
                       "labels": np.asarray(labels)})
    seconds = time.perf_counter() - t0
    return {"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds}


# ------------------------------------------------------------------ (b) ceiling


def decode_all(root: Path, paths):
    """The N images as ``extract`` makes them (read, hash, decode, resize, crop),
    in this thread: ``(uint8 tensor of the decodable ones, CPU-ms per image)``."""
    import torch

    from pipeline.backbones import get_backbone
    from pipeline.extraction.loader import ImageDataset

    ds = ImageDataset(root, paths, list(range(len(paths))), get_backbone(BACKBONE).preprocessing)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in extract's decoding threads
    try:
        cpu0 = time.thread_time()
        items = [ds[i] for i in range(len(ds))]
        cpu_ms = 1e3 * (time.thread_time() - cpu0) / len(ds)
    finally:
        torch.set_num_threads(threads)
    return torch.from_numpy(np.stack([d.image for d in items if d.image is not None])), cpu_ms


def run_ceiling(images, runtime: str, precision: str, batch_size: int,
                threads: int | None, hint: str | None = None, decode=None) -> dict:
    """Forward passes only over ``images`` (uint8, decoded beforehand) with one runtime.

    ``hint`` overrides OpenVINO's performance hint (THROUGHPUT or LATENCY).
    ``decode=(root, paths)`` also decodes those files in a thread during the
    timed loop, as ``extract`` does (its img/s then counts until both are done):
    an ``extract`` with nothing else to do (no setup, no journal, no store).
    """
    import torch

    from pipeline.backbones import get_backbone, load_backbone
    from pipeline.extraction import runtimes
    from pipeline.extraction.features import network_key
    from pipeline.extraction.forward import build_extractor
    from pipeline.extraction.runtimes import ExportCache, make_runner

    default_hint = runtimes.OPENVINO_HINT
    runtimes.OPENVINO_HINT = hint or default_hint

    spec = get_backbone(BACKBONE)
    extractor = build_extractor(load_backbone(BACKBONE), TAPS)
    t0 = time.perf_counter()
    # The export cache entry extract uses too (so (c) finds it, as any re-run would).
    try:
        runner = make_runner(extractor, runtime, torch.device("cpu"), spec.preprocessing,
                             precision=precision, threads=threads,
                             cache=ExportCache(key=network_key(spec, "imagenet", TAPS, "avg")))
    finally:
        runtimes.OPENVINO_HINT = default_hint
    with torch.inference_mode():
        runner(images[:batch_size])  # warm-up (compiles, allocates); not timed
    setup = time.perf_counter() - t0
    seconds, cpu = _time_forward(runner, images, batch_size, decode)
    label = f"{runner.runtime}:{runner.precision}"
    if runtime == "openvino":
        label += f"/{hint or default_hint}"
    return {"runtime": runner.runtime, "precision": runner.precision, "label": label,
            "hint": hint or default_hint if runtime == "openvino" else None,
            "seconds": seconds, "setup_seconds": setup, "cpu_ms_per_image": 1e3 * cpu / len(images),
            "images_per_second": len(images) / seconds}


def _time_forward(runner, images, batch_size: int, decode=None) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of ``runner`` over ``images`` in batches, queued back
    to back when it can stream (OpenVINO); ``decode=(root, paths)``: while a thread
    decodes those files."""
    import threading

    import torch

    stream = getattr(runner, "stream", None)
    batches = [(None, images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
    decoder = threading.Thread(target=decode_all, args=decode) if decode is not None else None
    with torch.inference_mode():
        cpu0, t0 = time.process_time(), time.perf_counter()
        if decoder is not None:
            decoder.start()
        if stream is not None:
            for _tag, outs, _s in stream(batches):
                [o.float().numpy() for o in outs]
        else:
            for _tag, batch in batches:
                [o.float().numpy() for o in runner(batch)]
        if decoder is not None:
            decoder.join()
        return time.perf_counter() - t0, time.process_time() - cpu0


# ------------------------------------------------------------------ (c) extract


def run_extract_child(args) -> dict:
    """``extract`` in a fresh interpreter; returns its summary and memory peaks."""
    spec = {k: getattr(args, k) for k in ("data", "limit", "runtime", "precision", "batch_size",
                                          "workers", "threads", "dtype")}
    spec["out"] = args.out_dir
    cmd = [sys.executable, "-m", __name__, "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=python_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"extract child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(process_seconds=wall)
    return result


def child_main(spec: dict):
    """Runs in the subprocess: one ``run_extract`` call, timed from its start."""
    import logging

    import torch  # noqa: F401  (imported before the clock, as it is for (a) and (b))

    from pipeline.extraction.job import ExtractConfig, run_extract

    logging.basicConfig(level=logging.WARNING)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    s = run_extract(ExtractConfig(
        data=spec["data"], backbone=BACKBONE, layers=TAPS, out=spec["out"],
        runtime=spec["runtime"], precision=spec["precision"], batch_size=spec["batch_size"],
        workers=spec["workers"], threads=spec["threads"], dtype=spec["dtype"],
        limit=spec["limit"], progress=False))
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "path": str(s.path), "images": s.n_images, "extracted": s.n_extracted,
        "skipped": len(s.skipped), "seconds": seconds, "forward_seconds": s.forward_seconds,
        "images_per_second": s.n_images / seconds, "runtime": s.runtime,
        "precision": s.precision, "up_to_date": s.up_to_date,
        "cpu_seconds": _cpu_seconds() - cpu0,   # this process and any (joined) children
        "peak_rss_mib": _peak_rss_mib(),
        "children": _child_count(),
    }))


def _peak_rss_mib() -> float:
    """This process's peak RSS since it started (``VmHWM``; unlike ``ru_maxrss``
    it is not carried over from the parent across ``execve``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child_count() -> int:
    """Child processes still around (extract decodes in threads: 0 expected)."""
    import psutil

    return len(psutil.Process().children(recursive=True))


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_cli_rerun(data: Path, out: Path, runtime: str, precision: str) -> float:
    """Wall time of a whole ``extract`` command process over an up-to-date store."""
    cmd = [*CLI, "-q", "extract", "--data", str(data),
           "--backbone", BACKBONE, *sum((["--layer", t] for t in TAPS), []),
           "--runtime", runtime, "--precision", precision, "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=python_env())
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or "up to date" not in proc.stdout:
        raise SystemExit(f"re-run was not up to date:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return seconds


def time_collate(images, batch_size: int) -> tuple[float, float]:
    """ms per image to collate decoded crops into a batch: ``np.stack`` (what extract
    does) against copying into a preallocated batch buffer."""
    crops = [im.numpy() for im in images[:batch_size]]
    buffer = np.empty((len(crops), *crops[0].shape), dtype=crops[0].dtype)

    def prealloc():
        for i, crop in enumerate(crops):
            np.copyto(buffer[i], crop)

    out = []
    for fn in (lambda: np.stack(crops), prealloc):
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(1e3 * float(np.median(times)) / len(crops))
    return out[0], out[1]


def linked_folder(root: Path, paths, folder: Path) -> Path:
    """An ImageFolder of links to ``paths`` (under ``root``): N images as a user's folder."""
    shutil.rmtree(folder, ignore_errors=True)
    for rel in paths:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(root).resolve() / rel, folder / rel)
    return folder


def time_cli_default(data: Path, out: Path, cache_dir: Path | None = None) -> dict:
    """``extract --data DATA --out OUT`` with no other flag: what a user
    gets.  Whole-process wall time, the command's own reported time, and the
    difference (interpreter, imports, scan before the clock of ``run_extract``)."""
    env = python_env()
    if cache_dir is not None:
        env["WORKBENCH_CACHE_DIR"] = str(cache_dir)   # an empty cache: the first run ever
    cmd = [*CLI, "extract", "--data", str(data), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    found = re.search(r"extracted (\d+) images .* in ([\d.]+) s", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"default extract failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    images, inner = int(found.group(1)), float(found.group(2))
    runtime = re.search(r"runtime (\S+)", proc.stderr + proc.stdout)
    return {"images": images, "process_seconds": wall, "command_seconds": inner,
            "startup_seconds": wall - inner, "images_per_second": images / wall,
            "runtime": runtime.group(1) if runtime else "?"}


def report_default(label: str, d: dict, a: dict | None, b: dict | None) -> None:
    ratios = "".join(f"; d/{k} = {d['images_per_second'] / r['images_per_second']:.2f}"
                     for k, r in (("a", a), ("b", b)) if r is not None)
    print(f"(d) `{program()} extract`, no flags, {label:<22} "
          f"{d['images_per_second']:8.1f} img/s whole process ({d['images']} images in "
          f"{d['process_seconds']:.1f} s, of which {d['startup_seconds']:.1f} s before the "
          f"command's own clock){ratios}")


#: thingsvision, as its README shows it (:mod:`pipeline.bench.thingsvision_child`).
THINGSVISION_CHILD = Path(__file__).with_name("thingsvision_child.py")


def thingsvision_python(asked: str | None) -> str | None:
    """The interpreter that runs thingsvision: ``asked``, else this one when it has
    thingsvision, else None (the comparison is skipped, saying how to set one up)."""
    python = asked or sys.executable
    probe = subprocess.run([python, "-c", "import thingsvision"], capture_output=True)
    if probe.returncode == 0:
        return python
    where = f"{asked} cannot" if asked else "this interpreter cannot"
    print(f"(e) thingsvision skipped: {where} import it. Its pins (torch 2.0, torchvision "
          "0.15, TensorFlow < 2.16, numpy < 2) need an environment of their own: "
          "python3 -m venv ~/tv && ~/tv/bin/pip install thingsvision, then pass "
          "--thingsvision-python ~/tv/bin/python")
    return None


def time_thingsvision(python: str, data: Path, out: Path, batch_size: int) -> dict:
    """Whole-process wall time of thingsvision extracting :data:`TAPS` of ``data``."""
    from pipeline.backbones import get_backbone

    spec = get_backbone(BACKBONE)
    modules = [spec.tap(t).stage for t in TAPS]   # timm module names: blocks.2, ...
    shutil.rmtree(out, ignore_errors=True)
    cmd = [python, str(THINGSVISION_CHILD), str(data), str(out), str(batch_size), *modules]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = re.search(r"thingsvision: (\d+) images", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"thingsvision failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    images = int(found.group(1))
    return {"images": images, "process_seconds": wall, "images_per_second": images / wall}


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=f"{program()} bench extract",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="ImageFolder (default: the full flowers "
                                                "beside a checkout, else the bundled subset).")
    p.add_argument("--limit", type=int, default=512, help="N images (0 = all).")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runtime", default="auto", help="Runtime of (c) (default auto).")
    p.add_argument("--precision", default="auto", help="Precision of (c) (default auto).")
    p.add_argument("--workers", type=int, default=None, help="Decoding workers of (c).")
    p.add_argument("--threads", type=int, default=None, help="Runtime threads of (c).")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--runtimes", default="eager,compile,onnx,openvino/LATENCY,openvino,"
                   "openvino:bf16/LATENCY,openvino:bf16",
                   help="Ceiling candidates, runtime[:precision][/OPENVINO_HINT], "
                        "comma-separated.")
    p.add_argument("--skip-naive", action="store_true", help="Do not run (a).")
    p.add_argument("--scale", action="store_true",
                   help="Also: memory over the whole folder vs N, and the cached re-run time.")
    p.add_argument("--cold-warm", action="store_true",
                   help="Only (d) and (e): extract's whole process on a first run (empty "
                        "cache) and a cached one, against thingsvision.")
    p.add_argument("--repeat", type=int, default=1,
                   help="Runs of each of (d) cold, (d) warm and (e), interleaved; medians.")
    p.add_argument("--thingsvision-python", default=None, metavar="PYTHON",
                   help="An interpreter with thingsvision installed, for (e) (default: this "
                        "one if it has it, else (e) is skipped).")
    p.add_argument("--keep", default=None, help="Keep the stores in this folder.")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat {args.repeat}: give 1 or more runs")
    if args.cold_warm and args.scale:
        p.error("--scale measures (c) over the whole folder; --cold-warm skips (c): "
                "give one of them")
    return args


def main(argv=None):
    """Run (a) to (e) (``--cold-warm``: (d) and (e); ``--scale``: more) and print them;
    returns the results (also written to ``results.json`` in the work folder)."""
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))

    import torch

    from pipeline.extraction.runtimes import resolve_precision, resolve_runtime

    args.data = args.data or str(default_data())
    data = Path(args.data)
    limit = args.limit or None
    manifest, paths, labels = select_images(data, limit)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"# bench_extract: {len(paths)} images of {data} ({BACKBONE}, taps "
          f"{'+'.join(TAPS)}, batch {args.batch_size}); {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    used = resolve_runtime(args.runtime, "cpu")
    used = (used, resolve_precision(args.precision, used, "cpu"))
    results = {}
    if not (args.skip_naive or args.cold_warm):   # (a)
        a = run_naive(manifest.root, paths, labels, work / "naive.h5", args.batch_size)
        results["a"] = a
        print(f"(a) naive reference             {a['images_per_second']:8.1f} img/s "
              f"({a['seconds']:.1f} s)")
    if not args.cold_warm:
        bench_ceilings(args, manifest.root, paths, used, results)        # (b)
        bench_extract(args, work, paths, limit, results)                 # (c)
    bench_default(args, manifest.root, paths, work, results)             # (d), (e)
    if args.scale:
        bench_scale(args, data, work, used, results)
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def bench_ceilings(args, root: Path, paths, used: tuple, results: dict):
    """(b): forward passes alone for every runtime candidate, then the one ``extract``
    uses while a thread decodes the files; ``used`` is (c)'s (runtime, precision)."""
    from pipeline.extraction import runtimes

    t0 = time.perf_counter()
    images, decode_ms = decode_all(root, paths)
    results["decode_cpu_ms_per_image"] = decode_ms
    print(f"    (decoded {len(images)} images beforehand for (b) in "
          f"{time.perf_counter() - t0:.1f} s, not timed; decoding alone, one thread: "
          f"{decode_ms:.2f} CPU-ms/img)")
    stack_ms, prealloc_ms = time_collate(images, args.batch_size)
    results["collate_ms_per_image"] = {"np.stack": stack_ms, "preallocated": prealloc_ms}
    print(f"    collating a batch: np.stack {stack_ms:.4f} ms/img, into a preallocated "
          f"buffer {prealloc_ms:.4f} ms/img (decoding: {decode_ms:.2f} ms/img)")
    ceilings = ceiling_candidates(args, images, used[0])
    same = [r for r in ceilings if (r["runtime"], r["precision"]) == used
            and r["hint"] in (None, runtimes.OPENVINO_HINT)]
    if not same:
        same = [run_ceiling(images, *used, args.batch_size, args.threads)]
        ceilings += same
    b = same[0]
    best = max(ceilings, key=lambda r: r["images_per_second"])
    results.update(b=b, ceilings=ceilings, best=best)
    print(f"(b) ceiling, {b['label']} forward only "
          f"{b['images_per_second']:8.1f} img/s")
    if best is not b:
        print(f"    fastest forward-only here: {best['label']} "
              f"{best['images_per_second']:.1f} img/s")
    ideal = run_ceiling(images, *used, args.batch_size, args.threads, decode=(root, paths))
    results["b_with_decoding"] = ideal
    print(f"    (b) while a thread decodes the same {len(paths)} files, as extract does "
          f"(an extract with no setup and no store): {ideal['images_per_second']:.1f} img/s "
          f"= {ideal['images_per_second'] / b['images_per_second']:.2f} of (b)")


def ceiling_candidates(args, images, used_runtime: str) -> list[dict]:
    """(b) for each ``--runtimes`` candidate available here (printed as it goes)."""
    from pipeline.extraction.runtimes import available_runtimes, resolve_precision

    ceilings = []
    for item in args.runtimes.split(","):
        item, _, hint = item.partition("/")
        name, _, prec = item.partition(":")
        if name not in available_runtimes("cpu"):
            print(f"    forward-only {item:<16} not available here, skipped")
            continue
        try:
            prec = resolve_precision(prec or "auto", name, "cpu")
        except Exception as exc:  # e.g. bf16 on a CPU without it
            print(f"    forward-only {item:<16} skipped: {exc}")
            continue
        r = run_ceiling(images, name, prec, args.batch_size,
                        args.threads if name == used_runtime else None, hint or None)
        ceilings.append(r)
        print(f"    forward-only {r['label']:<24} {r['images_per_second']:8.1f} img/s "
              f"({r['cpu_ms_per_image']:.1f} CPU-ms/img; setup {r['setup_seconds']:.1f} s, "
              "not timed)")
    return ceilings


def bench_extract(args, work: Path, paths, limit, results: dict):
    """(c): ``extract`` end to end in a fresh process, against (a) and (b)."""
    from pipeline.store.hdf5 import FeatureStore

    args.out_dir = str(work / "c")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    args.limit = limit
    c = run_extract_child(args)
    results["c"] = c
    b, best, decode_ms = results["b"], results["best"], results["decode_cpu_ms_per_image"]
    print(f"(c) extract end to end           {c['images_per_second']:8.1f} img/s "
          f"({c['images']} images, {c['seconds']:.1f} s in run_extract of which the "
          f"decode+forward loop {c['forward_seconds']:.1f} s, "
          f"{c['process_seconds']:.1f} s whole process; runtime {c['runtime']}:{c['precision']})")
    if FeatureStore(c["path"]).paths != paths:
        raise SystemExit("(c) did not extract the same images")
    if "a" in results:
        print(f"c/a = {c['images_per_second'] / results['a']['images_per_second']:.2f}")
    print(f"c/b = {c['images_per_second'] / b['images_per_second']:.2f}"
          + (f"   (c against the fastest forward-only, {best['label']}: "
             f"{c['images_per_second'] / best['images_per_second']:.2f})" if best is not b
             else ""))
    bound = b["cpu_ms_per_image"] / (b["cpu_ms_per_image"] + decode_ms)
    results["cpu_bound_c_over_b"] = bound
    print(f"CPU time: (b) {b['cpu_ms_per_image']:.1f} ms/img, (c) "
          f"{1e3 * c['cpu_seconds'] / c['images']:.1f} ms/img (run_extract, setup included), "
          f"decoding alone {decode_ms:.2f} ms/img")
    print(f"bound from CPU time alone (b's cores busy, decoding on top, no setup): "
          f"c/b <= {b['cpu_ms_per_image']:.1f} / ({b['cpu_ms_per_image']:.1f} + "
          f"{decode_ms:.2f}) = {bound:.2f}")
    print(f"peak memory of (c): RSS {c['peak_rss_mib']:.0f} MiB (VmHWM of the extract "
          f"process; {c['children']} child processes)")


def bench_default(args, root: Path, paths, work: Path, results: dict):
    """(d) and (e): what a user gets with no flags, the whole process, start-up included,
    the first time (an empty cache folder: builds and converts the network) and again
    with that cache; thingsvision on the same images.  ``--repeat`` runs each that many
    times, interleaved (cold, warm, thingsvision, cold, ...), and reports medians."""
    users = linked_folder(root, paths, work / "user_folder")
    python = thingsvision_python(args.thingsvision_python)
    cache, runs = work / "cache", {"d_cold": [], "d": [], "thingsvision": []}
    for k in range(args.repeat):
        shutil.rmtree(cache, ignore_errors=True)   # a first run ever, each time
        runs["d_cold"].append(time_cli_default(users, work / f"d_cold{k}", cache_dir=cache))
        runs["d"].append(time_cli_default(users, work / f"d_warm{k}", cache_dir=cache))
        if python:
            runs["thingsvision"].append(time_thingsvision(python, users, work / "tv",
                                                          args.batch_size))
    runs = {k: _median_run(v) for k, v in runs.items() if v}
    results.update(runs)
    cold, warm = runs["d_cold"], runs["d"]
    report_default("first run (empty cache)", cold, results.get("a"), results.get("b"))
    report_default("cached conversion", warm, results.get("a"), results.get("b"))
    print(f"    start-up with a cached conversion: {warm['startup_seconds']:.1f} s before "
          f"run_extract's clock; building and converting the network the first time adds "
          f"{cold['process_seconds'] - warm['process_seconds']:.1f} s")
    tv = runs.get("thingsvision")
    if tv:
        print(f"(e) thingsvision, same {tv['images']} images, whole process "
              f"{tv['images_per_second']:8.1f} img/s ({tv['process_seconds']:.1f} s)")
        print(f"    thingsvision / extract, whole process: first run "
              f"{tv['process_seconds'] / cold['process_seconds']:.2f} x, cached conversion "
              f"{tv['process_seconds'] / warm['process_seconds']:.2f} x")
    if args.repeat > 1:
        print(f"    (medians of {args.repeat} interleaved runs each)")


def _median_run(runs: list) -> dict:
    """The run of median whole-process time (its own figures, all of them; ``runs``: all)."""
    ordered = sorted(runs, key=lambda r: r["process_seconds"])
    return dict(ordered[(len(ordered) - 1) // 2], all_process_seconds=[
        r["process_seconds"] for r in runs])


def bench_scale(args, data: Path, work: Path, used: tuple, results: dict):
    """``--scale``: the whole folder's memory against N images', and a cached re-run."""
    full_default = time_cli_default(data, work / "d_all")
    results["d_all"] = full_default
    report_default("whole folder", full_default, None, results["b"])
    args.limit = None
    args.out_dir = str(work / "all")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    full = run_extract_child(args)
    results["all"] = full
    c = results["c"]
    print(f"(c) over the whole folder          {full['images_per_second']:8.1f} img/s "
          f"({full['images']} images, {full['seconds']:.1f} s)")
    print(f"peak memory, whole folder vs {c['images']} images: RSS "
          f"{full['peak_rss_mib']:.0f} vs {c['peak_rss_mib']:.0f} MiB")
    rerun = time_cli_rerun(data, Path(args.out_dir), *used)
    inner = run_extract_child(args)
    results["rerun"] = {"process_seconds": rerun, "run_extract_seconds": inner["seconds"]}
    print(f"cached re-run over {full['images']} images: `{program()} extract` "
          f"{rerun:.2f} s (whole process; run_extract itself {inner['seconds']:.2f} s)")


if __name__ == "__main__":
    main()
