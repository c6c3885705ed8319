"""``finetune``: a fine-tuned network (``finetune``), saved ``.pt``: the frozen trunk (when
its activations were cached) and the trained top, with the backbone's preprocessing."""

from __future__ import annotations

from .base import SavedNetwork
from .registry import register_model_kind


@register_model_kind
class FinetunedModel(SavedNetwork):
    """``bundle``: :meth:`pipeline.train.finetune.FinetuneResult.model_bundle`."""

    kind = "finetune"
    title = "fine-tuned network"

    @classmethod
    def claims(cls, bundle):
        return "top_state" in bundle

    def parts(self):
        return {"backbone": self.bundle["config"]["backbone"]}

    def crop_rule(self):
        """``image_transform(pre, "none")`` after ``load_rgb`` with the trunk cache; without
        it, :class:`pipeline.train.datasets.ImageFolderDataset` (bicubic pre-shrink) first."""
        from ..backbones import Preprocessing
        from ..train.deploy import transform_rule

        return transform_rule(Preprocessing(**self.bundle["preprocessing"]),
                              pre_shrink=int(self.bundle["cut"]) == 0)

    def body(self, tta: bool = True):
        """The network behind its normalisation; averaged over each image and its mirror
        when the run was trained with ``tta="flip"`` (and ``tta``)."""
        from ..train.deploy import FlipAverage, Normalise
        from ..train.finetune import network_from_bundle

        pre = self.bundle["preprocessing"]
        net = network_from_bundle(self.bundle)
        if tta and self.bundle["config"].get("tta", "none") == "flip":
            net = FlipAverage(net)
        return Normalise(net, pre["mean"], pre["std"])

    def cam_body(self):
        """:meth:`body` without test-time augmentation: the map is of the image as given."""
        if getattr(self, "_cam_body", None) is None:
            self._cam_body = self.body(tta=False)
        return self._cam_body

    def cam(self, files, target=None, batch_size=16, device="auto"):
        """Grad-CAM at the network's last stage that is still a map (frozen or trained)."""
        from .cam import network_cam

        body = self.cam_body()
        trunk, top = body.net
        stages = list(zip(self.bundle["stage_names"], [*trunk, *top.stages]))
        return network_cam(self, body, stages, files, target, batch_size, device)
