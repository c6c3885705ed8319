"""``frozen``: a scikit-learn head on one tap of a frozen backbone (``fit``), saved as skops.

Predicted from features extracted exactly as the store made them (backbone,
weights, pooling, test-time augmentation, runtime, precision) by the extraction
function ``extract`` uses, then the head's ``predict_proba``.  Exported as the cut backbone with the
head folded into one ``nn.Linear`` when its kind exports as ``linear``
(:mod:`pipeline.heads.registry`), else as the exported trunk joined to the head
converted by skl2onnx.
"""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

import numpy as np

from ..errors import UsageError, program
from ..heads.registry import head_name, head_of_model, linear_heads
from .base import SavedHead
from .registry import register_model_kind

log = logging.getLogger(__name__)


@register_model_kind
class FrozenHeadModel(SavedHead):
    """``bundle``: ``{model, classes, tap, store_config, weights_source, ...}``
    (:func:`pipeline.workflows.fit.run_fit`)."""

    kind = "frozen"
    title = "frozen head"

    @classmethod
    def claims(cls, bundle):
        return "tap" in bundle and "store_config" in bundle

    def parts(self):
        from ..store.hdf5 import store_tta

        cfg = self.bundle["store_config"]
        return {"backbone": cfg["backbone"], "tap": self.bundle["tap"],
                "pooling": cfg["pooling"], "tta": store_tta(cfg),
                "head": head_name(self.bundle["model"])}

    def crop_rule(self):
        """:class:`pipeline.extraction.loader.ImageDataset`'s crops at the backbone's
        preprocessing (:func:`pipeline.train.deploy.loader_rule`)."""
        from ..backbones import get_backbone
        from ..train.deploy import loader_rule

        return loader_rule(get_backbone(self.bundle["store_config"]["backbone"]).preprocessing)

    def predict_proba(self, files, batch_size=32, device="auto"):
        proba, _vectors, _space, errors = self.proba_and_vectors(files, batch_size, device)
        return proba, errors

    def proba_and_vectors(self, files, batch_size=32, device="auto"):
        """The head's probabilities (scaled by the run's temperature) and its input: the
        :meth:`features` at its tap."""
        from ..calibration import scale
        from ..heads.selection import predict_proba

        feats, errors = self.features(files, batch_size, device)
        ok = len(files) - len(errors)
        proba = (scale(predict_proba(self.bundle["model"], feats), self.temperature) if ok else
                 np.zeros((0, len(self.classes))))
        return proba, feats, f"{self.bundle['tap']} features", errors

    def labelled_vectors(self, runs_dir=None):
        """The run's feature store at the head's tap, every row (all of them are labelled):
        None when no record names a store that is still there and holds the tap."""
        from ..errors import WorkbenchError
        from ..runs.records import store_candidates
        from ..store.hdf5 import open_store

        for path in store_candidates(self.record, runs_dir) if self.record is not None else ():
            if path.is_file():
                try:
                    return open_store(path).X(self.bundle["tap"])
                except (WorkbenchError, OSError, KeyError) as exc:
                    log.warning("the run's store %s gives no %s vectors (%s)", path,
                                self.bundle["tap"], exc)
        return None

    def features(self, files, batch_size=32, device="auto"):
        """Features of ``files`` at the head's tap, made as the store made them (backbone,
        weights, pooling, test-time augmentation, runtime, precision) by the extraction
        function ``extract`` uses.

        Returns ``(X (n_ok, C), {file index: reason})``.  A runtime not installed
        here falls back to eager (fp32 runtimes agree within 1e-4), with a log line.
        """
        from ..configs import ExtractConfig
        from ..extraction.features import extract_features
        from ..extraction.runtimes import installed
        from ..store.hdf5 import store_tta
        from ..train.deploy import check_head_weights

        cfg = self.bundle["store_config"]
        source = check_head_weights(self.bundle)
        runtime, precision = cfg.get("runtime", "eager"), cfg.get("precision", "auto")
        if not installed(runtime):
            log.warning("the store was extracted with runtime %s, which is not installed "
                        "here; predicting with eager torch (fp32)", runtime)
            runtime, precision = "eager", "auto"
        tap = self.bundle["tap"]
        feats, errors = [], {}
        run = ExtractConfig(backbone=cfg["backbone"], weights=source, pool=cfg["pooling"],
                            tta=store_tta(cfg), runtime=runtime, precision=precision,
                            device=device, batch_size=batch_size, workers=0)
        batches = extract_features(Path("."), [str(f) for f in files], run, [tap],
                                   hash_files=False)
        with closing(batches):  # never left to the garbage collector: see extract_features
            for res in batches:
                for index, _sha, reason in res.failures:
                    errors[index] = reason
                    log.warning("skipped %s: %s", files[index], reason)
                if res.indices:
                    feats.append(res.features[tap])
        X = np.concatenate(feats) if feats else np.zeros((0, 1), dtype=np.float32)
        return X, errors

    def trunk(self):
        """``(features module in eval mode, n_features)``: the backbone cut at the head's tap,
        pooled (and averaged with the mirror's on a flip store), without the head
        (:class:`pipeline.train.deploy.Features`)."""
        from ..backbones import load_backbone
        from ..extraction.forward import build_extractor
        from ..store.hdf5 import store_tta
        from ..train.deploy import Features, check_head_weights

        cfg, tap = self.bundle["store_config"], self.bundle["tap"]
        loaded = load_backbone(cfg["backbone"], check_head_weights(self.bundle))
        trunk = Features(build_extractor(loaded, [tap], cfg["pooling"], store_tta(cfg))).eval()
        return trunk, loaded.spec.tap(tap).channels

    def body(self):
        from ..train.deploy import FrozenHead, linear_head

        trunk, channels = self.trunk()
        return FrozenHead(trunk.extractor, linear_head(self.bundle["model"], channels))

    def cam(self, files, target=None, batch_size=16, device="auto"):
        """The map at the head's tap, an exact decomposition of the class score over its
        positions: Zhou et al.'s CAM (:func:`~.cam.linear_cam`) for a linear head on
        average-pooled features, gradient x activation (:func:`~.cam.grad_x_activation`)
        on max or GeM pooling.  A non-linear head (RBF-SVM, kNN) and transformer tokens
        are refused, saying what has a map."""
        import torch

        from ..options import TOKEN_POOLINGS
        from .cam import class_maps, grad_x_activation, linear_cam

        model, tap = self.bundle["model"], self.bundle["tap"]
        head = head_of_model(model)
        if head is None or head.export != "linear":
            linear = linear_heads()
            raise UsageError(
                f"the {head.name if head else head_name(model)} head is not linear in the tap's "
                "features, so its score "
                "has no map over the image; a linear head of the same tap has one "
                f"({program()} fit --clf {linear[0]} --layer {tap}; heads with maps: "
                f"{', '.join(linear)})", param="model_ref")
        pooling = self.bundle["store_config"]["pooling"]
        if pooling in TOKEN_POOLINGS:
            raise UsageError(f"the head reads {pooling!r}-pooled transformer tokens of tap "
                             f"{tap}; class-activation maps are drawn for CNN taps only",
                             param="model_ref")
        body = self.cam_body()
        extractor, pooling = body.extractor, body.extractor.pooling
        size = self.crop_rule().input_size
        with torch.no_grad():
            shape = extractor.maps(torch.zeros((1, 3, size, size)))[tap].shape
        if len(shape) != 4 or shape[2] * shape[3] < 2:
            raise UsageError(f"tap {tap} is a pooled vector, with no map over the image; a "
                             "head on an earlier tap has one", param="model_ref")
        # Scores less their mean over classes (the softmax does not see the difference): a
        # binary head's "other" class has a zero row in the folded layer, and gets the
        # opposite map of its class instead of none.
        weight = body.linear.weight.detach()
        weight = weight - weight.mean(dim=0, keepdim=True)

        def centred(x):
            logits = body(x)
            return logits - logits.mean(dim=1, keepdim=True)

        def exact(x, targets):
            with torch.no_grad():
                fmap = extractor.maps(x)[tap].float()
            return linear_cam(fmap, weight.to(fmap.device), targets)

        def decomposed(x, t):
            return grad_x_activation(centred, extractor.stages[-1], x, t)

        how, method = ((exact, f"CAM at {tap}") if pooling == "avg" else
                       (decomposed, f"gradient x activation at {tap} ({pooling} pooling)"))
        if extractor.tta == "flip":
            how, method = mirrored_mean(extractor, how), f"{method}, averaged with the mirror's"
        return class_maps(self, body, files, target, batch_size, device, method, how,
                          shift=True)

    def graph(self):
        """One torch module when the head exports as ``linear``; else the exported trunk
        and the head converted by skl2onnx (refused, with the alternatives, when the head
        cannot be converted or skl2onnx is missing)."""
        model = self.bundle["model"]
        head = head_of_model(model)
        if head is not None and head.export == "linear":
            return super().graph()
        if head is not None:
            head.check_export(model, self.run_id)
        try:
            import skl2onnx  # noqa: F401
        except ImportError:
            linear = linear_heads()
            raise UsageError(
                f"a {head_name(model)} head is converted to ONNX by skl2onnx, which is not "
                f"installed: pip install skl2onnx, or export a {', '.join(linear[:-1])} or "
                f"{linear[-1]} head of the same tap ({program()} fit --clf {linear[0]} "
                "--layer TAP)", param="model_ref") from None
        from .graph import trunk_and_head_graph

        trunk, channels = self.trunk()
        return trunk_and_head_graph(trunk, model, self.crop_rule(), channels, self.temperature)


def mirrored_mean(extractor, map_of):
    """The map of a flip-TTA score from ``map_of`` (``(x, targets)`` -> ``(N, h, w)``) of the
    plain one: the score is the mean of the image's and its mirror's, so its map is the mean
    of the image's map and the mirror's map mirrored back (still exact: each sums to its
    half).  ``extractor`` runs without the mirror while ``map_of`` is asked, put back after."""
    import torch

    def run(x, targets):
        extractor.tta = "none"
        try:
            plain, mirror = map_of(x, targets), map_of(torch.flip(x, dims=(3,)), targets)
        finally:
            extractor.tta = "flip"
        return (plain + torch.flip(mirror, dims=(2,))) * 0.5

    return run
