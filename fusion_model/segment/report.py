"""The segmentation report: FROC curve, Dice per centre, contour overlays; HTML + metrics.json + PNGs."""

from __future__ import annotations

import json

import numpy as np

from fusion_model.report.figures import plt, png_bytes
from fusion_model.report.html import data_uri, render, write_report_dir

CT_WINDOW_HU = (-200.0, 300.0)


def froc_png(metrics: dict) -> bytes:
    """Sensitivity against false positives per scan, overall and per centre, operating point marked."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    blocks = [("all centres, touching", metrics["overall"], "detection", "k", 2.2, "-"),
              (f"all centres, IoU >= {metrics.get('iou_hit', 0.5):g}", metrics["overall"], "detection_iou", "k", 1.6,
               "--")]
    blocks += [(name, block, "detection", None, 1.2, "-") for name, block in metrics["per_centre"].items()]
    for name, block, key, colour, width, style in blocks:
        if key not in block:
            continue
        curve = block[key]["froc"]
        fp = [0.0] + [p["fp_per_scan"] for p in curve]
        sens = [0.0] + [p["sensitivity"] for p in curve]
        line, = ax.step(fp, sens, where="post", label=name, color=colour, lw=width, ls=style)
        op = block[key]["operating_point"]
        ax.plot(op["fp_per_scan"], op["sensitivity"], "o", color=line.get_color(), ms=7 if colour else 5)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.02)
    right = max([2.0] + [p["fp_per_scan"] for p in metrics["overall"]["detection"]["froc"] if p["fp_per_scan"] < 8])
    ax.set_xlim(0, right)
    ax.set_title(f"FROC (dots: operating point, component probability >= {metrics['component_threshold']:.2f})",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return png_bytes(fig)


def dice_png(lesions) -> bytes:
    """Per-lesion Dice by centre (box and points)."""
    centres = sorted(lesions["centre"].unique())
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    data = [lesions.loc[lesions["centre"] == c, "dice"].to_numpy() for c in centres]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(centres) + 1), centres)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.12, 0.12, len(values)), values, ".", alpha=0.5, color="#2b5d8a")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-lesion Dice (a missed lesion counts 0)", fontsize=9)
    return png_bytes(fig)


def overlay_png(view, title: str) -> bytes:
    """CT slice with the reference (green) and predicted (red) contours."""
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.imshow(view.ct, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=view.extent_mm)
    height, width = view.ct.shape
    xs = np.linspace(view.extent_mm[0], view.extent_mm[1], width)
    ys = np.linspace(view.extent_mm[3], view.extent_mm[2], height)
    for mask, colour in ((view.reference, "#2ca02c"), (view.predicted, "#d62728")):
        if mask.any():
            ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors=colour, linewidths=1.4)
    ax.set_title(f"{title}: {view.lesion_id}, Dice {view.dice:.2f}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return png_bytes(fig)


def write_segment_report(evaluation, overwrite: bool = False):
    """Write report.html, metrics.json, lesions.csv and the PNG figures into the evaluation's folder."""
    metrics = evaluation.metrics
    pngs = {"froc.png": froc_png(metrics), "dice_by_centre.png": dice_png(evaluation.lesions)}
    views = sorted(evaluation.views, key=lambda v: v.dice)
    picks = []
    if views:
        picks = [("worst", views[0]), ("median", views[len(views) // 2]), ("best", views[-1])]
    for name, view in picks:
        pngs[f"overlay_{name}.png"] = overlay_png(view, name)
    html = render("segment.html.j2", m=metrics, package_version=metrics["package_version"],
                  created_utc=metrics["created_utc"],
                  images={k: data_uri(v) for k, v in pngs.items()}, overlays=[n for n, _ in picks],
                  worst=evaluation.lesions.sort_values("dice").head(10).to_dict("records"))
    files = {"report.html": html, "metrics.json": json.dumps(metrics, indent=2, allow_nan=False) + "\n",
             "lesions.csv": evaluation.lesions.to_csv(index=False),
             "components.csv": evaluation.components.to_csv(index=False),
             **{f"figures/{k}": v for k, v in pngs.items()}}
    return write_report_dir(evaluation.out, files, overwrite=overwrite)
