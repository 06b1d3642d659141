"""The agreement report: Dice histogram, the worst lesions' contours in three planes, ranked feature ICCs,
Bland-Altman plots (size, attenuation, each variant's probability); HTML + metrics.json + CSV + PNG."""

from __future__ import annotations

import json

import numpy as np

from fusion_model.agreement.readings import HU_FEATURE, READER_A, SIZE_FEATURE
from fusion_model.report.figures import plt, png_bytes
from fusion_model.report.html import data_uri, render, write_report_dir

CT_WINDOW_HU = (-200.0, 300.0)
WORST_SHOWN = 3
COLOURS = {READER_A: "#2ca02c", "other": "#d62728"}
LABELS = {SIZE_FEATURE: "maximal axial diameter (mm)", HU_FEATURE: "unenhanced mean attenuation (HU)"}


def dice_histogram_png(blocks: list[dict]) -> bytes:
    """Per-lesion Dice of every comparison (histograms as steps)."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for block in blocks:
        hist = block["segmentation"]["dice_histogram"]
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
        ax.stairs(counts, edges, label=block["title"], lw=1.6, fill=len(blocks) == 1, alpha=0.8 if len(blocks) == 1
                  else 1.0)
    low = min((b["segmentation"]["dice"]["min"] or 0.0) for b in blocks)
    ax.set_xlim(max(0.0, min(0.7, np.floor(low * 20) / 20)), 1.0)
    ax.set_xlabel("Dice with the first reader's outline")
    ax.set_ylabel("lesions")
    if len(blocks) > 1:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Per-lesion Dice", fontsize=9)
    return png_bytes(fig)


def contours_png(reading, comparison) -> bytes:
    """Axial, coronal and sagittal slices through the lesion: first outline green, the other red."""
    views = reading.views
    dice = reading.overlap[comparison.name]["dice"]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.2))
    for ax, plane in zip(axes, ("axial", "coronal", "sagittal")):
        ct = views.ct[plane]
        extent = views.extent_mm[plane]
        ax.imshow(ct, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=extent, aspect="equal")
        height, width = ct.shape
        xs = np.linspace(extent[0], extent[1], width)
        ys = np.linspace(extent[3], extent[2], height)
        for name, colour in ((READER_A, COLOURS[READER_A]), (comparison.name, COLOURS["other"])):
            outline = views.outlines[name][plane]
            if outline.any():
                ax.contour(xs, ys, outline.astype(float), levels=[0.5], colors=colour, linewidths=1.3)
        ax.set_title(plane, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{reading.lesion_id}: Dice {dice:.2f} (first reader green, {comparison.title} red)", fontsize=9)
    return png_bytes(fig)


def icc_png(block: dict) -> bytes:
    """Every feature's ICC(2,1) with its 95% CI, ranked, with the 0.75 and 0.9 bands."""
    rows = [f for f in block["features"] if f["icc2_1"]][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.26 * len(rows) + 1.2))
    y = np.arange(len(rows))
    values = np.array([f["icc2_1"]["icc"] for f in rows])
    lows = np.array([(f["icc2_1"]["ci95"] or [f["icc2_1"]["icc"]] * 2)[0] for f in rows])
    highs = np.array([(f["icc2_1"]["ci95"] or [f["icc2_1"]["icc"]] * 2)[1] for f in rows])
    colours = ["#1c6b2c" if v >= 0.9 else "#2b5d8a" if v >= 0.75 else "#c0392b" for v in values]
    ax.errorbar(values, y, xerr=[values - lows, highs - values], fmt="none", ecolor="#889", lw=1)
    ax.scatter(values, y, c=colours, s=18, zorder=3)
    for bound in (0.75, 0.9):
        ax.axvline(bound, color="grey", ls=":", lw=1)
    ax.set_yticks(y, [f["feature"] for f in rows], fontsize=7)
    ax.set_xlim(min(0.0, float(np.nanmin(lows)) if len(rows) else 0.0), 1.0)
    ax.set_xlabel("ICC(2,1), absolute agreement, 95% CI")
    ax.set_title(f"Feature reproducibility: {block['title']}", fontsize=9)
    return png_bytes(fig)


def _bland_altman_axes(ax, a, b, summary: dict, label: str) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    mean, diff = (a[keep] + b[keep]) / 2, b[keep] - a[keep]
    ax.plot(mean, diff, ".", alpha=0.6, color="#2b5d8a")
    if summary.get("bias") is not None:
        ax.axhline(summary["bias"], color="k", lw=1.2, label=f"bias {summary['bias']:.3g}")
        for limit in summary["limits"]:
            ax.axhline(limit, color="#c0392b", ls="--", lw=1)
        ax.legend(fontsize=7, loc="best", title=f"LoA {summary['limits'][0]:.3g} to {summary['limits'][1]:.3g}",
                  title_fontsize=7)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel(f"mean of both ({label})", fontsize=8)
    ax.set_ylabel("other minus first", fontsize=8)
    ax.tick_params(labelsize=7)


def feature_bland_altman_png(block: dict, a_values: dict, b_values: dict) -> bytes | None:
    """Bland-Altman plots of the size and unenhanced attenuation measured on either outline."""
    names = [n for n in (SIZE_FEATURE, HU_FEATURE) if n in block["bland_altman"]]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        _bland_altman_axes(ax, a_values[name], b_values[name], block["bland_altman"][name], LABELS[name])
        ax.set_title(LABELS[name], fontsize=9)
    fig.suptitle(f"Bland-Altman: {block['title']}", fontsize=9)
    return png_bytes(fig)


def probability_bland_altman_png(block: dict, predictions) -> bytes:
    """Bland-Altman plots of each variant's probability with either outline."""
    variants = list(block["model"])
    fig, axes = plt.subplots(1, len(variants), figsize=(3.4 * len(variants), 3.2), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        rows = predictions[predictions["variant"] == variant]
        _bland_altman_axes(ax, rows["p_a"], rows["p_b"], block["model"][variant]["bland_altman"], "probability")
        ax.set_title(variant, fontsize=9)
    fig.suptitle(f"Malignancy probability: {block['title']}", fontsize=9)
    return png_bytes(fig)


def write_agreement_report(agreement, out, overwrite: bool = False):
    """Write report.html, metrics.json, lesions.csv, feature_icc.csv, predictions.csv and the figures."""
    metrics = agreement.metrics
    blocks = metrics["comparisons"]
    pngs = {"dice_histogram.png": dice_histogram_png(blocks)}
    figures: dict[str, dict] = {}
    by_id = {r.lesion_id: r for r in agreement.readings}
    for comparison, block in zip(agreement.comparisons, blocks):
        name = comparison.name
        shown = {}
        for rank, row in enumerate(block["segmentation"]["worst"][:WORST_SHOWN]):
            key = f"{name}/contours_{rank + 1}.png"
            pngs[key] = contours_png(by_id[row["lesion_id"]], comparison)
            shown[key] = row["lesion_id"]
        if any(f["icc2_1"] for f in block["features"]):
            pngs[f"{name}/feature_icc.png"] = icc_png(block)
        kept = [r for r in agreement.readings if name in r.features]
        a_values = {n: [r.features[READER_A].get(n, np.nan) for r in kept] for n in (SIZE_FEATURE, HU_FEATURE)}
        b_values = {n: [r.features[name].get(n, np.nan) for r in kept] for n in (SIZE_FEATURE, HU_FEATURE)}
        ba = feature_bland_altman_png(block, a_values, b_values)
        if ba is not None:
            pngs[f"{name}/bland_altman_features.png"] = ba
        if "model" in block:
            rows = agreement.predictions[agreement.predictions["comparison"] == name]
            pngs[f"{name}/bland_altman_probability.png"] = probability_bland_altman_png(block, rows)
        figures[name] = shown
    html = render("agreement.html.j2", m=metrics, package_version=metrics["package_version"],
                  created_utc=metrics["created_utc"], images={k: data_uri(v) for k, v in pngs.items()},
                  contours=figures)
    files = {"report.html": html, "metrics.json": json.dumps(metrics, indent=2, allow_nan=False) + "\n",
             "lesions.csv": agreement.lesions.to_csv(index=False),
             "feature_icc.csv": agreement.feature_icc.to_csv(index=False),
             **{f"figures/{k}": v for k, v in pngs.items()}}
    if agreement.predictions is not None:
        files["predictions.csv"] = agreement.predictions.to_csv(index=False)
    return write_report_dir(out, files, overwrite=overwrite)
