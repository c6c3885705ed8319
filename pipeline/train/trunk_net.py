"""The frozen trunk as the trunk cache runs it: one pass, an output at every cut."""

from __future__ import annotations

import torch.nn as nn


class TrunkCuts(nn.Module):
    """``stages`` (modules) run in order; the output is the tuple of the outputs after
    each stage count of ``cuts`` (ascending).  One pass through the trunk gives every
    depth's frozen output: the explorer's depths cut it at several stages."""

    def __init__(self, stages, cuts):
        super().__init__()
        self.cuts = tuple(sorted({int(c) for c in cuts}))
        if not self.cuts or self.cuts[0] < 1 or self.cuts[-1] > len(stages):
            raise ValueError(f"cuts {list(cuts)} must lie in 1 .. {len(stages)}")
        self.stages = nn.ModuleList(stages[:self.cuts[-1]])

    def extra_repr(self) -> str:
        # in the module's repr, so the exported-model cache key (runtimes.model_key) tells
        # the same stages cut at other depths apart
        return f"cuts={self.cuts}"

    def forward(self, x):
        outs = []
        for n, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if n in self.cuts:
                outs.append(x)
        return tuple(outs)
