"""The report's figures: matplotlib figures rendered to inline SVG data URIs.

Each function takes plain numbers (no run records, no files) and returns a
``data:image/svg+xml;base64,...`` string that the template puts in an
``<img>``, so the report stays one self-contained file and no two figures
share SVG ids.  Figures are built with :class:`matplotlib.figure.Figure`
directly: no pyplot, no global backend state, nothing at import time.
"""

from __future__ import annotations

import base64
import io

import numpy as np

#: Text stays text in the SVG (small files, crisp print); the browser picks the font.
SVG_RC = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
          "axes.spines.top": False, "axes.spines.right": False}


def mpl_text(text) -> str:
    """``text`` safe for matplotlib: a ``$`` in a class name must not start mathtext."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _figure(width: float, height: float, layout="constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def to_data_uri(fig) -> str:
    """Render ``fig`` as SVG and return it as a base64 data URI."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def depth_plot(series: dict, references: list, taps: list, ylabel: str = "accuracy") -> str:
    """Test accuracy (or another metric, ``ylabel``) against tap depth, one line per head.

    ``series`` maps a line name to ``[(tap, accuracy, ci_low, ci_high), ...]``;
    ``references`` is ``[(name, accuracy)]`` drawn as horizontal lines (the
    baselines, fine-tuning runs, the majority-class reference); ``taps`` is the
    x-axis order.
    """
    import matplotlib

    with matplotlib.rc_context(SVG_RC):
        fig = _figure(6.4, 3.4)
        ax = fig.add_subplot()
        x_of = {t: i for i, t in enumerate(taps)}
        for name, points in series.items():
            points = sorted(points, key=lambda p: x_of[p[0]])
            xs = [x_of[p[0]] for p in points]
            acc = np.array([p[1] for p in points])
            # The point is the seeds' mean, the bar the median run's interval: the mean can
            # sit outside it (or a rounding hair past an end at 0% or 100%), and matplotlib
            # refuses a negative error bar.
            err = np.clip([[a - p[2] for a, p in zip(acc, points)],
                           [p[3] - a for a, p in zip(acc, points)]], 0, None)
            ax.errorbar(xs, acc, yerr=err, marker="o", capsize=3, label=mpl_text(name))
        styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
        for i, (name, acc) in enumerate(references):
            ax.axhline(acc, color="0.35", linestyle=styles[i % len(styles)], linewidth=1,
                       label=mpl_text(f"{name} ({acc:.3f})"))
        ax.set_xticks(range(len(taps)), [mpl_text(t) for t in taps])
        ax.set_xlim(-0.3, len(taps) - 0.7)
        return _accuracy_figure(fig, ax, "tap (shallow to deep)", ylabel)


def pareto_plot(points: list, ylabel: str = "accuracy") -> str:
    """Accuracy against cost, one point per backbone, on two panels: GFLOPs (log) and
    measured extraction img/s; the Pareto front (nothing both cheaper and more accurate)
    is joined by a line.  ``points``: ``{name, accuracy, gflops, images_per_second,
    front_gflops, front_speed}`` (costs may be None: the point is left out of that panel).
    """
    import matplotlib

    with matplotlib.rc_context(SVG_RC):
        fig = _figure(7.2, 3.2)
        panels = ((fig.add_subplot(1, 2, 1), "gflops", "front_gflops",
                   "GFLOPs per image (to the tap)"),
                  (fig.add_subplot(1, 2, 2), "images_per_second", "front_speed",
                   "extraction img/s (measured)"))
        for ax, key, front_key, label in panels:
            shown = [p for p in points if p.get(key)]
            for p in shown:
                ax.scatter([p[key]], [p["accuracy"]], marker="o" if p[front_key] else "x")
                ax.annotate(mpl_text(p["name"]), (p[key], p["accuracy"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            front = sorted((p for p in shown if p[front_key]), key=lambda p: p[key])
            if len(front) > 1:
                ax.plot([p[key] for p in front], [p["accuracy"] for p in front], "--",
                        color="0.4", linewidth=1)
            if key == "gflops" and shown:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        return to_data_uri(fig)


#: Legend entries drawn beside an accuracy plot; more go underneath it.
LEGEND_BESIDE = 8


def _accuracy_figure(fig, ax, xlabel: str, ylabel: str = "accuracy") -> str:
    """Shared finish of the test-accuracy plots: labels, 0-1 axis, grid, legend on the right."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    n = len(ax.get_legend_handles_labels()[1])
    if n > LEGEND_BESIDE:
        # a long legend beside the axes squeezes them to a sliver: one column underneath,
        # the figure made taller by its lines (constrained layout keeps it inside)
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + 0.16 * n)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7,
                   ncol=1, frameon=False)
    else:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return to_data_uri(fig)



def fewshot_plot(curves: dict, colours=None) -> str:
    """Accuracy against labelled images per class k, on a log2 axis.

    ``curves`` maps a name to ``[(k, mean, low, high), ...]`` (``low``/``high``
    the 95% band, shaded); ``colours`` optionally maps a name to a colour.
    """
    import matplotlib

    with matplotlib.rc_context(SVG_RC):
        fig = _figure(6.4, 3.4)
        ax = fig.add_subplot()
        shots = sorted({p[0] for points in curves.values() for p in points})
        for name, points in curves.items():
            ks = [p[0] for p in points]
            mean = np.array([p[1] for p in points])
            # A t band of a mean near 1 can pass 1; accuracy cannot.
            low = np.clip([p[2] for p in points], 0, 1)
            high = np.clip([p[3] for p in points], 0, 1)
            line, = ax.plot(ks, mean, marker="o", color=(colours or {}).get(name),
                            label=mpl_text(name))
            ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        return _accuracy_figure(fig, ax, "labelled images per class (k)")


def learning_curve_plot(history: list, best_epoch=None) -> str:
    """Loss, accuracy and learning rate per epoch of one run's ``history``."""
    import matplotlib

    epochs = [h["epoch"] for h in history]
    with matplotlib.rc_context(SVG_RC):
        # A fixed layout: one of these per run, and a layout engine doubles the cost.
        fig = _figure(9.0, 2.5, layout=None)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.18, top=0.9, wspace=0.28)
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
            for split, style in (("train", "-"), ("val", "--")):
                values = [h.get(f"{split}_{key}") for h in history]
                if any(v is not None for v in values):
                    ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                            marker=".", label=split)
            if best_epoch:
                ax.axvline(best_epoch, color="0.6", linewidth=0.8, linestyle=":")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, frameon=False)
        ax_acc.set_ylim(0, 1.02)
        groups = []
        for h in history:
            for g in (h.get("lr") or {}):
                if g not in groups:
                    groups.append(g)
        for g in groups:
            lrs = [(h.get("lr") or {}).get(g) for h in history]
            ax_lr.plot(epochs, [np.nan if v is None else v for v in lrs], marker=".",
                       label=mpl_text(g))
        if groups and all(v > 0 for h in history for v in (h.get("lr") or {}).values()):
            ax_lr.set_yscale("log")
        ax_lr.set_title("learning rate per parameter group")
        ax_lr.set_xlabel("epoch")
        ax_lr.grid(alpha=0.3)
        if groups:
            ax_lr.legend(fontsize=7, frameon=False)
        return to_data_uri(fig)


def confusion_plot(matrix, classes) -> str:
    """Row-normalised confusion matrix ``(K, K)`` (rows true, columns predicted), with counts."""
    import matplotlib

    cm = np.asarray(matrix, dtype=float)
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(9.0, 2.2 + 0.45 * k)
    with matplotlib.rc_context(SVG_RC):
        fig = _figure(size + 1.0, size)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.6 else "black")
        labels = [mpl_text(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
        return to_data_uri(fig)


def feature_map_plot(panels: list, classes) -> str:
    """2-D projections side by side: ``panels`` is ``[(title, xy (n, 2), labels (n,))]``."""
    import matplotlib

    n = len(panels)
    with matplotlib.rc_context(SVG_RC):
        fig = _figure(3.2 * n + 1.6, 3.3)
        axes = np.atleast_1d(fig.subplots(1, n))
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for ax, (title, xy, labels) in zip(axes, panels):
            for c, name in enumerate(classes):
                m = labels == c
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], s=16 if len(labels) < 400 else 7,
                               color=cmap(c % cmap.N), alpha=0.8,
                               linewidths=0, label=mpl_text(name))
            ax.set_title(mpl_text(title))
            ax.set_xticks([])
            ax.set_yticks([])
        if len(classes) <= 20:
            axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                            frameon=False, markerscale=1.8)
        return to_data_uri(fig)


def reliability_plot(before: list, after: list, temperature: float) -> str:
    """The reliability diagram: each confidence bin's accuracy against its mean confidence,
    before and after temperature scaling (``before``/``after``: ``[{confidence,
    accuracy, n}]``, :func:`pipeline.calibration.reliability`); the diagonal is a
    perfectly calibrated model, a marker's area its images."""
    import matplotlib

    with matplotlib.rc_context(SVG_RC):
        fig = _figure(3.6, 3.2)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="calibrated")
        for bins, name, colour in ((before, "as fitted", "#d62728"),
                                   (after, f"scaled (T = {temperature:.2f})", "#1f77b4")):
            if not bins:
                continue
            conf = [b["confidence"] for b in bins]
            acc = [b["accuracy"] for b in bins]
            n = np.array([b["n"] for b in bins], dtype=float)
            ax.plot(conf, acc, color=colour, lw=1.2, label=name)
            ax.scatter(conf, acc, s=12 + 60 * n / n.max(), color=colour, alpha=0.7)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        return to_data_uri(fig)
