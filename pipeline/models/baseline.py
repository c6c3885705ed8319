"""The baselines without pretrained features (``baseline --kind``): ``pixels``, ``mlp``, ``cnn``.

``pixels``: logistic regression on raw pixels, a skops head bundle; predicted
from :func:`pipeline.train.baselines.pixel_matrix`.  ``mlp`` and ``cnn``: torch
networks saved ``.pt`` (:func:`pipeline.train.baselines.model_writer`),
predicted eagerly on crops made by their training's rule.  Each is exported as
one torch module: the pixel head folded into one ``nn.Linear``, or the network
behind its own input scaling.
"""

from __future__ import annotations

import numpy as np

from ..heads.registry import head_name
from .base import SavedHead, SavedNetwork
from .registry import register_model_kind


class Baseline:
    """What the three share: a bundle that names its kind and holds its input size
    (``{kind, params: {size, ...}, classes, ...}``,
    :func:`pipeline.train.baselines.model_writer`)."""

    kind: str
    bundle: dict

    @classmethod
    def claims(cls, bundle):
        return bundle.get("kind") == cls.kind

    @property
    def size(self) -> int:
        """Side of the (square) input, in pixels."""
        return int(self.bundle["params"]["size"])


@register_model_kind
class PixelsModel(Baseline, SavedHead):
    """Logistic regression on raw pixels: ``bundle["model"]`` is its fitted head."""

    kind = "pixels"
    title = "pixel baseline"
    no_map = "its logistic regression weighs raw pixels, with no feature map in between"

    def parts(self):
        return {"head": head_name(self.bundle["model"])}

    def crop_rule(self):
        from ..train.deploy import pixel_rule

        return pixel_rule(self.size)

    def predict_proba(self, files, batch_size=32, device="auto"):
        from ..heads.selection import predict_proba
        from ..train.baselines import pixel_matrix

        X, ok, skipped = pixel_matrix(".", [str(f) for f in files], self.size)
        failed = sorted(set(range(len(files))) - set(ok.tolist()))
        errors = {i: reason for i, (_path, reason) in zip(failed, skipped)}
        proba = (predict_proba(self.bundle["model"], X.astype(np.float32) / 255.0) if len(X)
                 else np.zeros((0, len(self.classes))))
        return proba, errors

    def body(self):
        from ..train.deploy import Pixels, linear_head

        return Pixels(linear_head(self.bundle["model"], 3 * self.size * self.size))


@register_model_kind
class MlpModel(Baseline, SavedNetwork):
    """The MLP on standardised pixels (``params``: size, hidden, dropout; ``state_dict``)."""

    kind = "mlp"
    title = "MLP baseline"
    no_map = "its first layer sees every pixel at once, with no spatial feature map"

    def crop_rule(self):
        """:func:`pipeline.train.baselines.pixel_matrix`'s pixels, as the pixel baseline."""
        from ..train.deploy import pixel_rule

        return pixel_rule(self.size)

    def body(self):
        from ..train.baselines import mlp_from_bundle
        from ..train.deploy import Pixels

        net = mlp_from_bundle(self.bundle)
        return Pixels(net, net.pixel_mean, net.pixel_std)


@register_model_kind
class CnnModel(Baseline, SavedNetwork):
    """The scratch CNN (``params``: size, width, dropout; ``state_dict``)."""

    kind = "cnn"
    title = "CNN baseline"

    def preprocessing(self):
        from ..train.baselines import cnn_preprocessing

        return cnn_preprocessing(self.size)

    def crop_rule(self):
        """:class:`pipeline.train.datasets.ImageFolderDataset`'s crops (bicubic pre-shrink)."""
        from ..train.deploy import transform_rule

        return transform_rule(self.preprocessing(), pre_shrink=True)

    def body(self):
        from ..train.baselines import cnn_from_bundle
        from ..train.deploy import Normalise

        pre = self.preprocessing()
        return Normalise(cnn_from_bundle(self.bundle), pre.mean, pre.std)

    def cam(self, files, target=None, batch_size=16, device="auto"):
        """Grad-CAM at its last block that is still a map (the fourth max-pool)."""
        from .cam import network_cam

        body = self.cam_body()
        # each block of make_cnn ends with its max-pool: "block<k>" is that pool's output
        pools = [m for m in body.net if type(m).__name__ == "MaxPool2d"]
        stages = [(f"block{k}", m) for k, m in enumerate(pools, 1)]
        return network_cam(self, body, stages, files, target, batch_size, device)
