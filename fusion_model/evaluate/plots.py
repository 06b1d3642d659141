"""Report figures (matplotlib, Agg): each function takes the metrics dict and returns PNG bytes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from fusion_model.report.figures import png_bytes


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _auc_label(auc: dict) -> str:
    ci = auc.get("ci")
    return f"AUC {auc['value']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else " (no CI)")


def _colours(names: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def roc_plot(metrics: dict) -> bytes:
    """ROC curves of every model, training Youden thresholds marked, rules as points."""
    models = {k: v for k, v in metrics["models"].items() if v.get("auc")}
    colours = _colours(list(metrics["models"]))
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    for name, m in models.items():
        auc = m["auc"]
        label = f"{name}: {_auc_label(auc)}"
        if m["kind"] == "rule":
            point = m["operating_points"][0]
            fpr, tpr = 1 - point["specificity"]["value"], point["sensitivity"]["value"]
            ax.plot([0, fpr, 1], [0, tpr, 1], ls="--", lw=1, color=colours[name])
            ax.plot(fpr, tpr, marker="s", ms=8, ls="none", color=colours[name], label=label)
            continue
        ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], lw=2, color=colours[name], label=label)
        for point in m["operating_points"]:
            if point.get("key") == "youden":
                ax.plot(1 - point["specificity"]["value"], point["sensitivity"]["value"], marker="o", ms=8,
                        mec="black", color=colours[name])
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC curves (circle: Youden threshold from training; "
                                                          "square: guideline rule)")
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right", fontsize=7.5)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def calibration_plot(metrics: dict) -> bytes | None:
    """Reliability diagram with a histogram of predictions (None without calibrated models)."""
    models = {k: v for k, v in metrics["models"].items() if v.get("calibration")}
    if not models:
        return None
    colours = _colours(list(metrics["models"]))
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.4, 7.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal")
    edges = np.linspace(0, 1, 21)
    for name, m in models.items():
        c = m["calibration"]
        x = [b["mean_predicted"] for b in c["bins"]]
        y = [b["observed"] for b in c["bins"]]
        ax.plot(x, y, marker="o", ls="none", color=colours[name],
                label=f"{name}: slope {_fmt(c['slope'], 2)}, intercept {_fmt(c['intercept'], 2)}, "
                      f"Brier {c['brier']:.3f}")
        if c.get("smoothed"):
            ax.plot(c["smoothed"]["predicted"], c["smoothed"]["observed"], lw=1.8, color=colours[name])
        hist.stairs(c["histogram"], edges, color=colours[name], lw=1.5)
    ax.set(ylabel="observed share malignant", ylim=(-0.02, 1.02),
           title="Reliability diagram (points: 10 bins; lines: LOWESS)")
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3)
    hist.set(xlabel="predicted probability of malignancy", ylabel="lesions", xlim=(0, 1))
    hist.grid(alpha=0.3)
    return png_bytes(fig)


def decision_curve_plot(metrics: dict) -> bytes | None:
    """Net benefit against treating all or none (None without calibrated models)."""
    models = {k: v for k, v in metrics["models"].items() if v.get("decision_curve")}
    if not models:
        return None
    colours = _colours(list(metrics["models"]))
    ref = metrics["decision_curve_reference"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    t = np.asarray(ref["thresholds"])
    ax.plot(t, ref["treat_all"], color="grey", lw=1.5, label="treat all (resect every lesion)")
    ax.plot(t, ref["treat_none"], color="black", lw=1.5, label="treat none")
    top = max(ref["treat_all"][0], 0.05)
    primary = metrics.get("primary_model")
    for name, m in models.items():
        curve = m["decision_curve"]
        ax.plot(curve["thresholds"], curve["net_benefit"], lw=2, color=colours[name], label=name)
        band = curve.get("net_benefit_ci")
        if band and (name == primary or len(models) == 1):
            ax.fill_between(curve["thresholds"], band["low"], band["high"], color=colours[name], alpha=0.15,
                            lw=0, label=f"{name}: 95% bootstrap interval")
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05 * top * 2, top * 1.15),
           title="Decision curve")
    ax.legend(fontsize=7.5)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def subgroup_plot(metrics: dict, model: str) -> bytes | None:
    """One model's AUC with CIs per subgroup (None when no subgroup has it)."""
    rows = [r for r in metrics["subgroups"] if model in r["models"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.2))
    labels = []
    for i, row in enumerate(rows):
        entry = row["models"][model]
        labels.append(f"{row['by']}: {row['group']} (n={row['n']})" + (" *" if row["small"] else ""))
        if entry.get("auc"):
            auc = entry["auc"]
            if auc.get("ci"):
                ax.plot(auc["ci"], [i, i], color="black", lw=1.2)
            ax.plot(auc["value"], i, marker="s", color="tab:blue" if not row["small"] else "tab:orange")
        else:
            ax.text(0.52, i, "AUC undefined (one class)", va="center", fontsize=7, color="grey")
    overall = metrics["models"][model].get("auc")
    if overall:
        ax.axvline(overall["value"], color="tab:blue", ls="--", lw=1)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7.5)
    ax.invert_yaxis()
    ax.set(xlim=(0.3, 1.0), xlabel=f"AUC of {model} (95% CI, {metrics['settings']['auc_ci_shown_description']}); "
                                   "* small subgroup",
           title="Subgroups")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def confusion_plot(metrics: dict, model: str) -> bytes | None:
    """The primary model's confusion matrix of lesion types (counts; colour: share of the true type)."""
    subtype = metrics.get("subtype") or {}
    block = (subtype.get("variants") or {}).get(model)
    if not block:
        return None
    confusion = block["confusion"]
    classes, counts = confusion["classes"], np.asarray(confusion["counts"])
    shares = np.asarray(confusion["row_normalised"])
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2.2, 0.9 * len(classes) + 1.6))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("most likely type")
    ax.set_ylabel("true type")
    ax.set_title(f"{model}: lesion type", fontsize=9)
    return png_bytes(fig)
