"""Inference runtimes for a :class:`~pipeline.extraction.TapExtractor`.

``make_runner`` returns a callable mapping a uint8 image batch (on the
target device) to the tuple of pooled tap tensors, computed by one of:

``eager``
    plain torch, the reference (bit-for-bit repeatable on CPU);
``compile``
    ``torch.compile`` (inductor; needs a C++ compiler on CPU);
``onnx``
    ONNX Runtime on an ONNX export of the cut network (``pip install -e '.[onnx]'``);
``openvino``
    OpenVINO on an IR converted from the cut network (``pip install -e '.[openvino]'``);
``auto``
    on CPU the fastest one installed, in the order measured on a 2-core
    CPU (docs/performance.md, "Extraction speed"): openvino, onnx, compile, eager; on CUDA eager.

Each runs at a *precision*: ``fp32`` everywhere; on CUDA, eager and compile
also run under autocast at ``fp16`` (the ``auto`` choice there) or ``bf16``;
OpenVINO runs at ``bf16`` on CPUs with native bf16 instructions when asked.
The runtime and the precision are part of the feature store's cache key.
Every runtime agrees with eager within :data:`TOLERANCE` (checked by
tests/test_runtimes.py).  Exported models are cached on disk, keyed by a hash
of everything that shapes them (weights, cut, taps, pooling, normalisation,
input size, library versions), so only the first run pays for the export.

Importing this module imports neither torch nor the optional runtimes, so
the ``extract`` job can resolve ``auto`` cheaply before it knows whether
there is anything to compute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceError, UsageError, WorkbenchError, opt
from ..files import atomic_path
from ..options import PRECISIONS, RUNTIMES

log = logging.getLogger(__name__)

#: CPU runtimes, fastest first, as measured by benchmarks/bench_extract.py.
CPU_PREFERENCE = ("openvino", "onnx", "compile", "eager")
#: Optional runtime -> (module it imports, pip extra that installs it).
OPTIONAL = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
#: Largest allowed difference from eager, per precision, relative to the
#: largest magnitude in that tap: ``max|x - eager| <= TOLERANCE * max|eager|``.
#: fp32 runtimes differ from eager only by the order of float operations
#: (measured on lite0 taps: about 1e-6); bf16 and fp16 keep 8 and 11
#: mantissa bits (OpenVINO bf16 measured: up to 5e-2, cosine >= 0.996).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1}
CACHE_ENV = "WORKBENCH_CACHE_DIR"
#: OpenVINO performance hint (docs/performance.md, "Extraction speed"): THROUGHPUT runs one
#: stream per few cores, each batch split among them; LATENCY one stream.
OPENVINO_HINT = os.environ.get("WORKBENCH_OPENVINO_HINT", "THROUGHPUT")
#: Images per OpenVINO request: smaller requests keep activations small (fp32,
#: 2 streams: about 280 MiB at 8 against 710 MiB at 32) at equal or better speed.
OPENVINO_REQUEST_BATCH = 8


def device_kind(device) -> str:
    """``"cpu"`` or ``"cuda"`` for a torch device or a device string."""
    return str(getattr(device, "type", device)).split(":")[0]


def installed(runtime: str) -> bool:
    """Whether the packages ``runtime`` needs can be imported here."""
    if runtime in OPTIONAL:
        return importlib.util.find_spec(OPTIONAL[runtime][0]) is not None
    return runtime in ("eager", "compile")


def cuda_available_cheap() -> bool:
    """CUDA availability without importing torch when no NVIDIA device node exists."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return False
    import torch

    return torch.cuda.is_available()


def check_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"``: the kind of ``device`` (``auto``: cuda when there is one).

    A CUDA device on a machine without one is a :class:`DeviceError` here, before an
    extraction writes anything (its journal), not once the network is built; torch is
    imported only where a CUDA device may be (:func:`cuda_available_cheap`).
    """
    if device == "auto":
        return "cuda" if cuda_available_cheap() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda_available_cheap():
            raise DeviceError(
                f"{opt('device', device)} was asked for but this machine has no CUDA device "
                f"torch can use; use {opt('device', 'cpu')} (or auto) on this machine",
                param="device")
        return "cuda"
    raise UsageError(f"unknown {opt('device')} {device!r}; valid: auto, cpu, cuda, cuda:N",
                     param="device")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def available_runtimes(device) -> list[str]:
    """Runtimes that can run on ``device`` here, fastest first."""
    if device_kind(device) == "cuda":
        return ["eager", "compile"]
    found = [r for r in CPU_PREFERENCE if installed(r)]
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        found.remove("compile")  # inductor's CPU backend compiles C++
    return found


def resolve_runtime(name: str, device) -> str:
    """The runtime ``name`` stands for on ``device`` (``auto`` -> the fastest available)."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}",
                         param="runtime")
    available = available_runtimes(device)
    if name == "auto":
        return available[0]
    if name in OPTIONAL and device_kind(device) == "cpu" and not installed(name):
        module, extra = OPTIONAL[name]
        raise DeviceError(
            f"{opt('runtime', name)} needs the package {module!r}, which is not installed; "
            f"install it with pip install -e '.[{extra}]' or use "
            f"{opt('runtime', ' | '.join(['auto'] + available))}", param="runtime")
    if name not in available:
        raise DeviceError(
            f"{opt('runtime', name)} cannot run on {device_kind(device)} here; available: "
            f"{', '.join(available)}"
            + (f" (or pass {opt('device', 'cpu')})" if name in OPTIONAL else ""), param="runtime")
    return name


def allowed_precisions(runtime: str, device) -> tuple:
    """Precisions ``runtime`` offers on ``device``, the ``auto`` choice first."""
    if device_kind(device) == "cuda":
        return ("fp16", "bf16", "fp32")
    if runtime == "openvino" and cpu_has_bf16():
        return ("fp32", "bf16")
    return ("fp32",)


def resolve_precision(precision: str, runtime: str, device) -> str:
    """The precision ``precision`` stands for with ``runtime`` on ``device``."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}",
                         param="precision")
    allowed = allowed_precisions(runtime, device)
    if precision == "auto":
        return allowed[0]
    if precision not in allowed:
        raise UsageError(
            f"{opt('precision', precision)} is not available with {opt('runtime', runtime)} "
            f"on {device_kind(device)}; valid there: {', '.join(allowed)}"
            + (f" (bf16 on CPU needs {opt('runtime', 'openvino')} and a CPU with AVX512-BF16 "
               "or AMX)" if precision == "bf16" else ""), param="precision")
    return precision


def default_cache_dir() -> Path:
    """Where exported models are cached: ``$WORKBENCH_CACHE_DIR`` or ``~/.cache/workbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "workbench"


# ------------------------------------------------------------------ runners


@dataclass(frozen=True)
class ExportCache:
    """Where an exported model (ONNX, OpenVINO IR) is cached, under which name, and the
    input it is traced with: what only the exporting runtimes read.

    ``cache_dir`` holds exported models (None: :func:`default_cache_dir`).  ``key``,
    when given, names the exported model in the cache instead of a hash of the module;
    it must then cover everything that shapes the network (backbone, weights identity,
    taps, pooling, preprocessing), and a cached export is used without building the
    module at all (no timm import, no weights load).  ``example``: an input of the
    module's dtype and shape (batch of 2) when it is not uint8 images (fine-tuning's
    frozen trunk takes normalised floats).
    """

    cache_dir: object = None
    key: str | None = None
    example: object = None


def make_runner(extractor, runtime: str, device, preprocessing, precision: str = "auto",
                threads: int | None = None, cache: ExportCache = ExportCache(),
                fallback: bool = False):
    """A callable ``uint8 (N, 3, S, S) -> tuple of (N, C_tap) float tensors``.

    ``extractor`` is a :class:`~pipeline.extraction.TapExtractor` or a
    zero-argument callable that builds one; ``S`` is ``preprocessing.input_size``.
    ``runtime`` and ``precision`` may be ``auto``; the callable's ``runtime`` and
    ``precision`` attributes say what was chosen.  ``threads`` caps the runtime's
    intra-op threads (default: the runtime's own choice, every core).  ``cache``
    (:class:`ExportCache`): where and under which key the exporting runtimes cache
    the model, and the input they trace it with.  ``auto`` (or ``fallback``) runs
    eager torch, with a warning saying why, when the fast runtime cannot convert the
    network; a runtime asked for by name fails instead.
    """
    import torch

    device = torch.device(device)
    requested, runtime = runtime, resolve_runtime(runtime, device)
    precision = resolve_precision(precision, runtime, device)
    get = _lazy(extractor, device)
    size = preprocessing.input_size
    try:
        if runtime == "onnx":
            run = _onnx_runner(get, size, threads, cache)
        elif runtime == "openvino":
            run = _openvino_runner(get, size, precision, threads, cache)
    except Exception as exc:  # noqa: BLE001 - converters fail in many ways
        if not (fallback or requested == "auto") or isinstance(exc, WorkbenchError):
            raise
        # auto promises the fastest runtime that works: eager always does (fp32 agrees
        # within TOLERANCE, so the vectors keep their meaning).
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("--")), lines[0] if lines else "")
        log.warning("runtime %s cannot run this network (%s: %s); falling back to eager torch",
                    runtime, type(exc).__name__, why[:200])
        runtime, precision = "eager", resolve_precision("auto", "eager", device)
    if runtime in ("eager", "compile"):
        if threads:
            torch.set_num_threads(threads)  # torch's intra-op pool is per process
        run = _torch_runner(get(), runtime, device, precision)
    run.runtime, run.precision = runtime, precision
    return run


def _lazy(extractor, device):
    """A memoised getter of ``extractor`` (a module or a getter), in eval mode on ``device``."""
    import torch

    made = []

    def get():
        if not made:
            module = extractor if isinstance(extractor, torch.nn.Module) else extractor()
            made.append(module.to(device).eval())
        return made[0]

    return get


def _torch_runner(extractor, runtime, device, precision):
    import torch

    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    module = torch.compile(extractor, dynamic=False) if runtime == "compile" else extractor
    autocast = None
    if device.type == "cuda" and precision != "fp32":
        autocast = torch.float16 if precision == "fp16" else torch.bfloat16

    def run(batch):
        if autocast is not None:
            with torch.autocast("cuda", dtype=autocast):
                return module(batch)
        return module(batch)

    return run


def _onnx_runner(get, size, threads, cache: ExportCache):
    import numpy as np
    import torch

    ort = _import_optional("onnx")
    path = export_onnx(get, size, cache.cache_dir, cache.key, cache.example)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch):
        outs = session.run(None, {name: np.ascontiguousarray(batch.cpu().numpy())})
        return tuple(torch.from_numpy(o) for o in outs)

    return run


def _openvino_runner(get, size, precision, threads, cache: ExportCache):
    ov = _import_optional("openvino")
    xml = export_openvino(get, size, cache.cache_dir, cache.key, cache.example)
    core = ov.Core()
    # OpenVINO caches the compiled model too: a second run compiles in a third of the time.
    folder = Path(cache.cache_dir or default_cache_dir())
    core.set_property({"CACHE_DIR": str(folder / "openvino" / "compiled")})
    # THROUGHPUT: several streams, each on its own cores, each fed part of the
    # batch.  Measured on 2 cores (docs/performance.md, "Extraction speed"): as fast as or
    # faster than LATENCY (one stream using every thread): 215 against 165 img/s
    # in fp32 in one quiet run, equal in another, 88 against 75 under load.  It
    # needs no barrier between threads, so decoding on the same cores stalls
    # only the stream it interrupts.
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": OPENVINO_HINT}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(xml), "CPU", config)
    streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    # Two requests per stream: one runs while the next one's input is set.
    queue = ov.AsyncInferQueue(compiled, 2 * streams)
    stream = _OpenVinoStream(queue, len(compiled.outputs))

    def run(batch):
        one = stream([(None, batch)])
        try:
            return next(one)[1]
        finally:
            one.close()

    run.stream = stream
    return run




class _OpenVinoStream:
    """Feeds an OpenVINO ``AsyncInferQueue``: ``stream(items)`` maps ``(tag, uint8 batch)``
    items to ``(tag, outputs, seconds)`` in the same order while later batches run.

    Each batch is cut into requests of :data:`OPENVINO_REQUEST_BATCH` images
    queued on every stream at once; a batch is handed back as soon as it and
    every batch before it are done, while later ones run.  One stream at a time.
    """

    def __init__(self, queue, n_out: int):
        self.queue, self.n_out = queue, n_out
        self.ready = threading.Condition()
        self.parts_left, self.outputs, self.errors = {}, {}, []
        queue.set_callback(self._finished)

    def _finished(self, request, userdata):
        slot, part = userdata
        try:  # output tensors are views into the request's buffers: copy them out
            outs = [request.get_output_tensor(i).data.copy() for i in range(self.n_out)]
        except Exception as exc:  # pragma: no cover - surfaced to the caller in _collect
            self.errors.append(exc)
            outs = None
        with self.ready:
            self.outputs[slot, part] = outs
            self.parts_left[slot] -= 1
            self.ready.notify_all()

    def _collect(self, slot, tag, n_parts, t0):
        import numpy as np
        import torch

        with self.ready:
            self.ready.wait_for(lambda: self.parts_left[slot] == 0 or self.errors)
        if self.errors:
            raise self.errors[0]
        del self.parts_left[slot]
        if n_parts == 0:
            return tag, None, time.perf_counter() - t0
        parts = [self.outputs.pop((slot, k)) for k in range(n_parts)]
        outs = tuple(torch.from_numpy(np.concatenate([p[i] for p in parts]))
                     for i in range(self.n_out))
        return tag, outs, time.perf_counter() - t0

    def _submit(self, slot, batch) -> int:
        """Queue ``batch``'s requests under ``slot``; returns how many."""
        import numpy as np

        x = None if batch is None else np.ascontiguousarray(batch.cpu().numpy())
        starts = range(0, 0 if x is None else len(x), OPENVINO_REQUEST_BATCH)
        with self.ready:
            self.parts_left[slot] = len(starts)
        for k, start in enumerate(starts):
            self.queue.start_async({0: x[start:start + OPENVINO_REQUEST_BATCH]}, (slot, k))
        return len(starts)

    def __call__(self, items):
        pending = deque()
        try:
            for slot, (tag, batch) in enumerate(items):
                t0 = time.perf_counter()
                pending.append((slot, tag, self._submit(slot, batch), t0))
                # Hand back what is done; never hold more than two batches in flight.
                while pending and (len(pending) > 2 or self.parts_left[pending[0][0]] == 0):
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            self.queue.wait_all()
            # wait_all returns once the requests are done, maybe before their callbacks
            # (each takes the GIL in an OpenVINO thread) have run: one still waiting for
            # the GIL as the interpreter exits aborts the process.  (Bounded: a batch whose
            # start_async failed part-way leaves parts no callback will count.)
            with self.ready:
                self.ready.wait_for(lambda: not any(self.parts_left.values()), timeout=10)


def _import_optional(runtime: str):
    import importlib

    module, extra = OPTIONAL[runtime]
    if runtime == "openvino":
        quiet_openvino()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeviceError(
            f"{opt('runtime', runtime)} needs the package {module!r} ({exc}); install it with "
            f"pip install -e '.[{extra}]' or use {opt('runtime', 'eager')}", param="runtime"
        ) from None


def quiet_openvino() -> None:
    """Keep OpenVINO's usage telemetry out of this process, before it is imported.

    With no consent file, ``import openvino`` and every conversion send an
    event from a forked process that waits on the network for up to its
    timeout (offline: the whole timeout).  Besides sending data nobody agreed to, the fork
    inherits open files, such as a store's write lock, and holds them.
    OpenVINO falls back to its own no-op stub when ``openvino_telemetry``
    cannot be imported; a ``None`` entry in ``sys.modules`` makes it so.
    """
    import sys

    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)


# ------------------------------------------------------------------ export cache


def _export_key(kind: str, size: int, key: str) -> str:
    """``key`` completed by the export kind, input size, library versions and the
    source of the modules that define the cut network (so an edit re-exports)."""
    import importlib.metadata as md

    digest = hashlib.sha256(f"{kind}\0{size}\0{key}".encode())
    for package in ("torch", "timm", OPTIONAL.get(kind, ("",))[0]):
        try:
            digest.update(f"\0{package}={md.version(package)}".encode())
        except (md.PackageNotFoundError, ValueError):
            pass
    package = Path(__file__).resolve().parent.parent
    for source in sorted([*package.glob("backbones/*.py"), package / "extraction" / "forward.py",
                          package / "extraction" / "runtimes.py",
                          package / "train" / "trunk_net.py"]):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def model_key(extractor) -> str:
    """SHA-256 of everything in ``extractor`` that shapes its outputs.

    Covers the module structure (which stages, cut where), every parameter
    and buffer (the weights), the normalisation constants, the taps, the
    pooling and the test-time augmentation.  :func:`_export_key` adds the input
    size and versions.
    """
    import torch

    digest = hashlib.sha256()
    header = [repr(extractor), repr(getattr(extractor, "tap_stages", None)),
              repr(getattr(extractor, "pooling", None))]
    if getattr(extractor, "tta", "none") != "none":  # plain extractors keep their key
        header.append(f"tta={extractor.tta}")
    digest.update("\0".join(header).encode())
    tensors = dict(extractor.state_dict())
    tensors.update({f"buffer:{k}": v for k, v in extractor.named_buffers()})
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else
                      t.float().numpy().tobytes())
    return digest.hexdigest()


def _example_input(size: int, example=None):
    """A batch of 2 for tracing: uint8 images unless ``example`` gives the input."""
    import torch

    return example if example is not None else torch.zeros((2, 3, size, size),
                                                           dtype=torch.uint8)


def _example_tag(example) -> str:
    """What ``example`` adds to the export key (nothing for uint8 images)."""
    return "" if example is None else f":{example.dtype}:{tuple(example.shape[1:])}"


def export_onnx(extractor, size: int, cache_dir=None, key: str | None = None,
                example=None) -> Path:
    """The cached ONNX file of ``extractor`` (uint8 ``(N, 3, size, size)`` in,
    one ``(N, C)`` output per tap, dynamic ``N``), exported if not there yet.

    ``extractor`` is a module or a getter of one; ``key`` as in :class:`ExportCache`.
    """
    import torch

    get = _lazy(extractor, "cpu")
    key = _export_key("onnx", size, (key or model_key(get())) + _example_tag(example))
    folder = Path(cache_dir or default_cache_dir()) / "onnx"
    path = folder / f"{key}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    cpu = get()
    taps = list(getattr(cpu, "tap_names", []))
    log.info("exporting the network to ONNX (once; cached in %s)", folder)
    # atomic: a half-written export is never taken
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), \
            torch.no_grad(), tracing_threads():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            cpu, (_example_input(size, example),), str(tmp), dynamo=False, opset_version=17,
            input_names=["images"], output_names=taps or None,
            dynamic_axes={"images": {0: "n"}, **{t: {0: "n"} for t in taps}})
    return path


def export_openvino(extractor, size: int, cache_dir=None, key: str | None = None,
                    example=None) -> Path:
    """The cached OpenVINO IR (``model.xml`` + ``.bin``) of ``extractor``, converted if absent.

    ``extractor`` is a module or a getter of one; ``key`` as in :class:`ExportCache`.
    """
    ov = _import_optional("openvino")
    get = _lazy(extractor, "cpu")
    key = _export_key("openvino", size, (key or model_key(get())) + _example_tag(example))
    folder = Path(cache_dir or default_cache_dir()) / "openvino"
    final = folder / key
    if (final / "model.xml").is_file():
        return final / "model.xml"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    log.info("converting the network to OpenVINO IR (once; cached in %s)", folder)
    cpu = get()
    try:
        model = convert_openvino(cpu, _example_input(size, example))
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            # A folder, so not atomic_path: renamed whole; fails harmlessly if another won.
            os.replace(tmp, final)
        except OSError:
            if not (final / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.xml"


def trace_function(module, example):
    """``module`` traced on ``example`` as a TorchScript *function*, its weights held as
    constants: what :func:`convert_openvino` converts.

    Tracing the module itself (what ``ov.convert_model`` does) also builds a
    TorchScript module for each of its submodules (hundreds in a timm network) and
    then re-runs the network twice to check the trace (``check_trace``); measured on
    efficientnet_lite0, the function costs half the module's time and the check as much
    again.  The network has no data-dependent branch (a :class:`TapExtractor`, a frozen
    trunk), so there is nothing for the check to find.
    """
    import torch
    from openvino.frontend.pytorch.patch_functions import FunctionsPatcher

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
            FunctionsPatcher(), tracing_threads():  # FunctionsPatcher: as OpenVINO traces
        warnings.simplefilter("ignore")   # TracerWarnings about constants: shapes are fixed
        return torch.jit.trace(lambda images: module(images), example, check_trace=False,
                               strict=False)


@contextmanager
def tracing_threads():
    """This thread's torch intra-op threads set to one inside, then restored.

    Tracing runs the network once on a batch of 2, op by op through the tracer: ops
    that small gain nothing from a thread team, whose threads wait on each other at
    every op, the more so when decoding already keeps a core busy (it starts before the
    runtime is built).  Measured on efficientnet_lite0, 2 cores under load: tracing in
    one thread took 0.15-0.17x the time it took in two.  (OpenMP keeps the count per
    thread: the decoding threads are not affected, nor is anything after.)
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def convert_openvino(module, example):
    """The ``openvino.Model`` of ``module`` for inputs like ``example`` (any batch size).

    The same model ``ov.convert_model(module, example_input=example)`` gives (the
    PyTorch frontend's conversion, then the MOC transformations ``ovc`` applies to
    every model, without its constant folding, as it does), in a fraction of the
    time: the module is traced once as a function (:func:`trace_function`), the
    input's type and shape (batch free) are set before conversion instead of
    reshaping afterwards, and ``ovc``'s driver is skipped (its pre-processing step
    rebuilds the whole model with nothing to apply, and it reports telemetry).
    Fails with the frontend's message naming the operations it cannot convert.
    """
    ov = _import_optional("openvino")   # telemetry kept out first
    from openvino._offline_transformations import (
        apply_fused_names_cleanup,
        apply_moc_transformations,
        compress_quantize_weights_transformation,
    )
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    from openvino.frontend.pytorch.utils import pt_to_ov_type_map

    # The decoder must stay referenced until convert returns (the frontend does not
    # hold it: "pure virtual method called" otherwise).
    decoder = TorchScriptPythonDecoder(trace_function(module, example))
    frontend = FrontEndManager().load_by_framework("pytorch")
    source = frontend.load(decoder, True)   # True: the weights are shared, not copied
    place = source.get_place_by_input_index(0)
    source.set_element_type(place, pt_to_ov_type_map[str(example.dtype)])
    source.set_partial_shape(place, ov.PartialShape([-1, *example.shape[1:]]))
    model = frontend.convert(source)
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    apply_fused_names_cleanup(model)
    model.set_rt_info(ov.get_version(), "Runtime_version")
    return model
