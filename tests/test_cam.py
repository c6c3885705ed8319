"""Class-activation maps look where the evidence is: a coloured square planted at a random
place on a noisy grey background, its colour the class.

A logistic-regression head is fitted on real efficientnet_lite0 features (the
offline ImageNet weights) of tap layer3 (stride 16), as ``fit`` saves it; its
map's peak, at the crop's resolution, must lie on the square (the square's
box grown by one tap cell, the stride's blur) for most held-out images.  The
kinds without a spatial map refuse with a sentence, not a traceback.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UsageError

# "plain" images have no square: without them "green" could be learnt as "neither red
# nor blue", evidence that lies on the background
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230), "plain": None}
SIDE = 256          # efficientnet_lite0's crop rule: short side 256, centred 224 crop
OFFSET = 16         # (256 - 224) / 2: image pixels -> crop pixels
OBJECT = 44         # side of the planted square, in pixels
STRIDE = 16         # layer3


def planted(root, n_per_class: int, seed: int):
    """``[(path, class index, (x0, y0, x1, y1) in crop pixels, or None)]``: squares drawn
    inside the centred crop, anywhere else the same noisy grey."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(n_per_class):
            img = rng.normal(128, 18, (SIDE, SIDE, 3)).clip(0, 255).astype(np.uint8)
            x0, y0 = (int(v) for v in rng.integers(OFFSET, OFFSET + 224 - OBJECT, size=2))
            box = None
            if rgb is not None:
                img[y0:y0 + OBJECT, x0:x0 + OBJECT] = rgb
                box = (x0 - OFFSET, y0 - OFFSET, x0 - OFFSET + OBJECT, y0 - OFFSET + OBJECT)
            path = root / f"{name}_{seed}_{i}.png"
            Image.fromarray(img).save(path)
            out.append((path, k, box))
    return out


@pytest.fixture(scope="module")
def frozen_head(tmp_path_factory):
    """A FrozenHeadModel as ``fit`` saves one: a logistic regression on layer3's average-
    pooled features of 6 planted images per class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.backbones import get_backbone, weights_identity
    from pipeline.models.frozen import FrozenHeadModel

    root = tmp_path_factory.mktemp("planted")
    train, test = planted(root, 6, seed=0), planted(root, 4, seed=1)
    spec = get_backbone("efficientnet_lite0")
    bundle = {"model": None, "classes": list(COLOURS), "tap": "layer3",
              "weights_source": "imagenet",
              "store_config": {"backbone": spec.name, "pooling": "avg", "runtime": "eager",
                               "precision": "auto",
                               "weights": weights_identity(spec, "imagenet")}}
    model = FrozenHeadModel(bundle)
    X, errors = model.features([p for p, _, _ in train])
    assert not errors
    head = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    bundle["model"] = head.fit(X, [k for _, k, _ in train])
    return model, test


def on_object(maps, boxes, grow: int) -> np.ndarray:
    """Whether each map's argmax lies in its box grown by ``grow`` pixels."""
    hits = []
    for m, (x0, y0, x1, y1) in zip(maps, boxes):
        y, x = np.unravel_index(np.argmax(m), m.shape)
        hits.append(x0 - grow <= x < x1 + grow and y0 - grow <= y < y1 + grow)
    return np.array(hits)


def test_frozen_linear_cam_peaks_on_the_planted_object(frozen_head):
    model, test = frozen_head
    files, labels, boxes = zip(*[t for t in test if t[2] is not None])
    maps = model.cam(list(files))
    assert maps.method == "CAM at layer3"
    assert maps.maps.shape == (len(files), 224, 224) and maps.crops.shape[1:] == (224, 224, 3)
    assert maps.maps.min() >= 0.0 and maps.maps.max() <= 1.0
    assert (maps.targets == maps.proba.argmax(axis=1)).all()      # the predicted class
    assert (maps.targets == np.array(labels)).mean() >= 0.9       # the head learnt colour
    hits = on_object(maps.maps, boxes, grow=STRIDE)
    assert hits.mean() >= 0.8, hits


def test_overlays_and_targets_by_name(frozen_head):
    model, test = frozen_head
    maps = model.cam([test[0][0]], target="blue")
    assert maps.targets.tolist() == [2]
    over = maps.overlays()
    assert over.shape == (1, 224, 224, 3) and over.dtype == np.uint8
    assert not np.array_equal(over[0], maps.crops[0])
    with pytest.raises(UsageError, match="not a class of this model"):
        model.cam([test[0][0]], target="purple")


def test_kinds_without_a_map_say_why(frozen_head, tmp_path):
    """An RBF-SVM head and the pixel baseline refuse with a sentence naming what has maps."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from pipeline.models.baseline import PixelsModel
    from pipeline.models.frozen import FrozenHeadModel

    model, test = frozen_head
    svm = dict(model.bundle, model=make_pipeline(StandardScaler(), SVC()))
    with pytest.raises(UsageError, match="not linear in the tap's features.*--clf logreg"):
        FrozenHeadModel(svm).cam([test[0][0]])
    with pytest.raises(UsageError, match="pixel baseline has no class-activation map"):
        PixelsModel({"kind": "pixels", "classes": ["a", "b"], "params": {"size": 8},
                     "model": None}).cam([test[0][0]])


def test_finetuned_grad_cam_peaks_on_the_planted_object(tmp_path):
    """A fine-tuned network of the toy backbone (known weights: stage b's channel 1 is
    R - G) whose last layer reads that channel: Grad-CAM at stage b (stride 4) lies on a
    red square planted on noisy grey; the map of "green" (G - R) never peaks on it."""
    import torch
    from conftest import build_toy

    from pipeline.backbones import get_backbone
    from pipeline.models.finetuned import FinetunedModel
    from pipeline.train.finetune import build_network

    toy = build_toy()
    net = build_network([("a", toy.a), ("b", toy.b)], 2, 0.0)
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]))
        net.fc.bias.zero_()
    model = FinetunedModel({
        "config": {"backbone": "toy", "dropout": 0.0}, "classes": ["red", "green"],
        "stage_names": ["a", "b"], "cut": 0, "trunk_state": {}, "top_state": net.state_dict(),
        "preprocessing": get_backbone("toy").preprocessing.to_dict()})
    rng = np.random.default_rng(0)
    files, boxes = [], []
    for i in range(6):
        img = rng.normal(100, 6, (16, 16, 3)).clip(0, 255).astype(np.uint8)
        x0, y0 = (int(v) for v in rng.integers(0, 12, size=2))
        img[y0:y0 + 4, x0:x0 + 4] = (240, 0, 0)
        files.append(tmp_path / f"red_{i}.png")
        boxes.append((x0, y0, x0 + 4, y0 + 4))
        Image.fromarray(img).save(files[-1])
    maps = model.cam(files)
    assert maps.method == "Grad-CAM at b" and maps.maps.shape == (6, 16, 16)
    assert maps.targets.tolist() == [0] * 6
    assert on_object(maps.maps, boxes, grow=4).all()
    assert not on_object(model.cam(files, target="green").maps, boxes, grow=0).any()


@pytest.mark.parametrize("pooling", ["max", "cls"])
def test_frozen_head_on_other_poolings(pooling, tmp_path):
    """Max pooling: gradient x activation at the tap (exact: only argmax positions count),
    on the planted red square (toy backbone: layer2's channel 1 is R - G, stride 4);
    transformer-token poolings are refused with the reason."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.models.frozen import FrozenHeadModel

    rng = np.random.default_rng(1)
    files, labels, boxes = [], [], []
    for i in range(12):
        img = rng.normal(100, 6, (16, 16, 3)).clip(0, 255).astype(np.uint8)
        x0, y0 = (int(v) for v in rng.integers(0, 12, size=2))
        if i % 2 == 0:
            img[y0:y0 + 4, x0:x0 + 4] = (240, 0, 0)
        files.append(tmp_path / f"img_{i}.png")
        labels.append(i % 2)
        boxes.append((x0, y0, x0 + 4, y0 + 4))
        Image.fromarray(img).save(files[-1])
    bundle = {"classes": ["red", "plain"], "tap": "layer2", "weights_source": "imagenet",
              "store_config": {"backbone": "toy", "pooling": "max", "runtime": "eager",
                               "precision": "auto", "weights": "toy-known-weights"}}
    model = FrozenHeadModel(bundle)
    X, _ = model.features(files)
    bundle["model"] = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, labels)
    bundle["store_config"]["pooling"] = pooling
    if pooling == "cls":
        with pytest.raises(UsageError, match="transformer tokens.*CNN taps only"):
            model.cam(files)
        return
    maps = model.cam(files[::2], target="red")
    assert maps.method == "gradient x activation at layer2 (max pooling)"
    assert on_object(maps.maps, boxes[::2], grow=4).all()


def test_scratch_cnn_map_is_at_its_last_block_that_is_still_a_map(tmp_path):
    """The CNN baseline's Grad-CAM is taken at its fourth max-pool (2 x 2 at 32 px), not at
    the global pool after it (1 x 1, no map), and covers the whole crop."""
    import torch

    from pipeline.models.baseline import CnnModel
    from pipeline.train.baselines import make_cnn

    torch.manual_seed(0)
    net = make_cnn(2, width=4, dropout=0.0)
    model = CnnModel({"kind": "cnn", "classes": ["a", "b"],
                      "params": {"size": 32, "width": 4, "dropout": 0.0},
                      "state_dict": net.state_dict()})
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(path)
    maps = model.cam([path, path], target=["a", "b"])
    assert maps.method == "Grad-CAM at block4"
    assert maps.maps.shape == (2, 32, 32) and maps.targets.tolist() == [0, 1]
