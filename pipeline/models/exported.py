"""``onnx``: a classifier written by ``export``, run by ONNX Runtime alone (never torch).

Its crops are made by the rule in the model's metadata, with PIL and numpy;
it cannot be exported again.
"""

from __future__ import annotations

import json

from ..errors import DeviceError, StoreError, UsageError, program
from .base import TrainedModel, concat_proba, load_crops
from .registry import register_model_kind


def read_onnx(path) -> dict:
    """``{session, metadata, rule, classes}`` of an exported classifier; :class:`StoreError`
    when ONNX Runtime cannot load it or ``export`` did not write it."""
    if not path.is_file():
        raise StoreError(f"no exported model at {path}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeviceError(f"an .onnx model needs the package 'onnxruntime' ({exc}); "
                          "install it with pip install onnxruntime") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for a bad file
        raise StoreError(f"{path} cannot be loaded by ONNX Runtime ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    from ..data.decode import CropRule

    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "classes" not in meta or "crop_rule" not in meta:
        raise StoreError(f"{path} was not written by `{program()} export` (its metadata has "
                         "no classes and crop rule)")
    try:
        classes, rule = json.loads(meta["classes"]), CropRule(**json.loads(meta["crop_rule"]))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: its metadata (classes, crop_rule) cannot be used: {exc}; "
                         "export the run again") from None
    return {"session": session, "metadata": meta, "rule": rule, "classes": list(classes)}


@register_model_kind
class ExportedGraph(TrainedModel):
    """``bundle``: :func:`read_onnx`'s; its run id, method and parts are its metadata's."""

    kind = "onnx"
    title = "exported classifier"
    no_map = ("ONNX Runtime runs the graph without gradients or its layers' outputs; draw "
              "the maps of the run it was exported from (predict --model RUN --explain DIR)")
    suffixes = ("onnx",)
    read = staticmethod(read_onnx)

    @classmethod
    def claims(cls, bundle):
        return True

    @property
    def run_id(self) -> str:
        return self.bundle["metadata"].get("run_id", "")

    def parts(self):
        meta = self.bundle["metadata"]
        return {k: meta.get(k, "") for k in ("backbone", "tap", "pooling")}

    def describe(self):
        meta = self.bundle["metadata"]
        return {**super().describe(), "method": meta.get("method", self.kind),
                "label": meta.get("label", "")}

    def crop_rule(self):
        return self.bundle["rule"]

    def predict_proba(self, files, batch_size=32, device="auto"):
        session = self.bundle["session"]
        crops, errors = load_crops(files, self.crop_rule())
        name = session.get_inputs()[0].name
        out = [session.run(None, {name: crops[s:s + batch_size]})[0]
               for s in range(0, len(crops), batch_size)]
        return concat_proba(out, len(self.classes)), errors

    def graph(self):
        raise UsageError(f"{self.path} is already an exported model", param="model_ref")
