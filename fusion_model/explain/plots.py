"""Explanation figures: waterfall, CT slices with mask contour and saliency, beeswarm, bars."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fusion_model.catalogue import FEATURE_GROUPS  # noqa: E402
from fusion_model.explain.names import format_value, label_with_unit  # noqa: E402
from fusion_model.report.figures import png_bytes  # noqa: E402

RED, BLUE = "#c0392b", "#2e6da4"


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def waterfall(values: pd.Series, contributions: pd.Series, base: float, probability: float, top: int = 10,
              dpi: int = 90) -> bytes:
    """Contributions of the top features (log-odds), from the head's base value to this lesion's margin."""
    order = contributions.abs().sort_values(ascending=False).index
    shown = list(order[:top])
    rest = float(contributions[order[top:]].sum()) if len(order) > top else 0.0
    rows = [(f"{label_with_unit(n)} = {format_value(n, values[n])}", float(contributions[n])) for n in shown]
    if len(order) > top:
        rows.append((f"{len(order) - top} other features", rest))
    rows = rows[::-1]
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(rows) + 1.3))
    start = base + sum(c for _, c in rows)  # the margin; walk back down so the top row ends at the margin
    cumulative = base
    for i, (label, c) in enumerate(rows):
        ax.barh(i, c, left=cumulative, color=RED if c > 0 else BLUE, height=0.6)
        ax.text(cumulative + c + (0.02 if c > 0 else -0.02), i, f"{c:+.2f}", va="center",
                ha="left" if c > 0 else "right", fontsize=7)
        cumulative += c
    ax.axvline(base, color="grey", ls=":", lw=1)
    ax.axvline(start, color="black", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7.5)
    ax.set_xlabel(f"log-odds of malignancy: base {base:+.2f} -> this lesion {start:+.2f} "
                  f"(calibrated probability {probability:.0%})", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    lo, hi = min(base, start, *(np.cumsum([base] + [c for _, c in rows]))), max(
        base, start, *(np.cumsum([base] + [c for _, c in rows])))
    pad = 0.15 * (hi - lo + 0.5)
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig, dpi)


def lesion_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel at the centre of the mask's bounding box (the crop's centre when empty)."""
    idx = np.argwhere(mask > 0.5)
    if not len(idx):
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(round(v)) for v in idx.mean(axis=0))


def ct_slices(crop: np.ndarray, saliency: np.ndarray | None, channel_names: list[str], dpi: int = 70) -> bytes:
    """Axial, coronal and sagittal slices through the lesion centre for each phase: mask contour in
    green, Grad-CAM saliency (>= 20% of its peak) in colour."""
    crop = np.asarray(crop, dtype=np.float32)
    mask = crop[-1]
    phases = crop[:-1] if len(crop) > 1 else crop
    names = channel_names[:-1] if len(crop) > 1 else channel_names
    z, y, x = lesion_centre(mask)
    views = [("axial", lambda a: a[z]), ("coronal", lambda a: a[:, y][::-1]), ("sagittal", lambda a: a[:, :, x][::-1])]
    fig, axes = plt.subplots(len(phases), 3, figsize=(6.0, 2.05 * len(phases)), squeeze=False)
    for r, (phase, name) in enumerate(zip(phases, names)):
        for c, (view, take) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(take(phase), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if saliency is not None:
                heat = np.ma.masked_less(take(saliency), 0.2)
                ax.imshow(heat, cmap="inferno", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            if take(mask).max() > 0.5:
                ax.contour(take(mask), levels=[0.5], colors="lime", linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(view, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.subplots_adjust(wspace=0.03, hspace=0.06)
    return png_bytes(fig, dpi)


def mean_abs_bar(shap_frame: pd.DataFrame, title: str, top: int = 15) -> bytes:
    """Bar chart of mean |SHAP| per feature, largest first."""
    importance = shap_frame.abs().mean().sort_values(ascending=False)[:top][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(importance) + 1.2))
    ax.barh([label_with_unit(n) for n in importance.index], importance.to_numpy(), color=BLUE)
    ax.set_xlabel("mean |SHAP value| (log-odds)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def beeswarm(values: pd.DataFrame, shap_frame: pd.DataFrame, title: str, top: int = 15, seed: int = 0) -> bytes:
    """One row per feature: each lesion's SHAP value, coloured by its feature value (grey = missing)."""
    order = shap_frame.abs().mean().sort_values(ascending=False).index[:top][::-1]
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6.8, 0.34 * len(order) + 1.4))
    for i, name in enumerate(order):
        s = shap_frame[name].to_numpy()
        v = values[name].to_numpy(dtype=float)
        missing = np.isnan(v)
        finite = v[~missing]
        lo, hi = (np.nanpercentile(finite, 5), np.nanpercentile(finite, 95)) if finite.size else (0, 1)
        colour = np.clip((v - lo) / (hi - lo if hi > lo else 1), 0, 1)
        jitter = rng.uniform(-0.3, 0.3, len(s))
        ax.scatter(s[~missing], i + jitter[~missing], c=colour[~missing], cmap="coolwarm", s=8, vmin=0, vmax=1)
        ax.scatter(s[missing], i + jitter[missing], color="#aaaaaa", s=8)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(order)), [label_with_unit(n) for n in order], fontsize=7.5)
    ax.set_xlabel("SHAP value (log-odds; > 0 raises the risk). Colour: feature value low (blue) to high (red); "
                  "grey: missing", fontsize=7.5)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def group_bar(group_frame: pd.DataFrame, title: str) -> bytes:
    """Mean absolute and mean signed contribution per feature group."""
    mean_abs = group_frame.abs().mean()
    mean_signed = group_frame.mean()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(mean_abs) + 1.2))
    labels = [FEATURE_GROUPS.get(g, g) for g in mean_abs.index]
    ax.barh(labels, mean_abs.to_numpy(), color=BLUE, label="mean |contribution|")
    ax.barh(labels, mean_signed.to_numpy(), color=RED, height=0.3, label="mean signed contribution")
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel("log-odds")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7.5)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)
