"""Segmentation and detection metrics: per-lesion overlap (MONAI's Dice, 95% Hausdorff distance, surface Dice)
and lesion-wise detection over the component-probability threshold (FROC, operating point)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

SURFACE_TOLERANCE_MM = 2.0
CROP_MARGIN_VOXELS = 3


def overlap_metrics(predicted: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict:
    """Dice, HD95 (mm), surface Dice at 2 mm and volume difference of one lesion (arrays z, y, x of 0/1).

    An empty prediction (a missed lesion) has Dice 0, surface Dice 0, no Hausdorff distance and a volume
    difference of -100%.
    """
    import torch  # here, not at the top: the commands that read these metrics answer a bad argument at once
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    predicted, reference = predicted.astype(bool), reference.astype(bool)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    ref_ml, pred_ml = reference.sum() * voxel_ml, predicted.sum() * voxel_ml
    out = {"reference_ml": ref_ml, "predicted_ml": pred_ml, "volume_difference_ml": pred_ml - ref_ml,
           "volume_difference_percent": 100.0 * (pred_ml - ref_ml) / ref_ml if ref_ml else float("nan")}
    if not predicted.any():
        return {**out, "dice": 0.0, "hd95_mm": float("nan"), "surface_dice_2mm": 0.0}
    both = np.argwhere(predicted | reference)
    lo = np.maximum(both.min(axis=0) - CROP_MARGIN_VOXELS, 0)
    hi = both.max(axis=0) + CROP_MARGIN_VOXELS + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))

    def onehot(mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(np.pad(mask[box], CROP_MARGIN_VOXELS))
        return torch.stack([~m, m]).float()[None]

    y_pred, y = onehot(predicted), onehot(reference)
    spacing = [float(v) for v in spacing_zyx]
    dice = float(compute_dice(y_pred, y, include_background=False)[0, 0])
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about its own use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = float(compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing)[0, 0])
        surface = float(compute_surface_dice(y_pred, y, [SURFACE_TOLERANCE_MM], spacing=spacing)[0, 0])
    return {**out, "dice": dice, "hd95_mm": hd95, "surface_dice_2mm": surface}


def scan_detection(component_labels: np.ndarray, probabilities: dict[int, float], lesion_masks: list[np.ndarray]
                   ) -> tuple[list[float], list[float], list[list[int]]]:
    """One scan's detection outcome: per lesion the highest probability of a component touching it (0: none),
    the probabilities of the components touching no lesion, and per lesion the touching components' labels."""
    touching_per_lesion, touched, lesion_probability = [], set(), []
    for mask in lesion_masks:
        labels = sorted(int(v) for v in np.unique(component_labels[mask.astype(bool)]) if v)
        touching_per_lesion.append(labels)
        touched.update(labels)
        lesion_probability.append(max((probabilities[v] for v in labels), default=0.0))
    false_positive_probability = [p for v, p in probabilities.items() if v not in touched]
    return lesion_probability, false_positive_probability, touching_per_lesion


@dataclass
class DetectionRecord:
    """Detection outcome over scans: per reference lesion the highest probability among components touching
    it (0 when none does), and the probabilities of components touching no lesion (false positives)."""

    lesion_probability: list[float] = field(default_factory=list)
    false_positive_probability: list[float] = field(default_factory=list)
    scans: int = 0

    def add_scan(self, component_labels: np.ndarray, probabilities: dict[int, float],
                 lesion_masks: list[np.ndarray]) -> list[list[int]]:
        """Score one scan; return, per lesion, the labels of the components that touch it."""
        lesion_probability, false_positive_probability, touching = scan_detection(component_labels, probabilities,
                                                                                  lesion_masks)
        self.add(lesion_probability, false_positive_probability)
        return touching

    def add(self, lesion_probability: list[float], false_positive_probability: list[float]) -> None:
        """Add one scored scan (see :func:`scan_detection`)."""
        self.lesion_probability += lesion_probability
        self.false_positive_probability += false_positive_probability
        self.scans += 1

    def at(self, threshold: float) -> tuple[float, float]:
        """(lesion sensitivity, false positives per scan) keeping components with probability >= threshold."""
        lesions = np.asarray(self.lesion_probability)
        fps = np.asarray(self.false_positive_probability)
        sensitivity = float(np.mean(lesions >= threshold)) if len(lesions) else float("nan")
        return sensitivity, float(np.sum(fps >= threshold) / max(self.scans, 1))

    def froc(self) -> list[dict]:
        """The FROC curve: one point per distinct component probability, threshold descending."""
        values = np.unique(np.concatenate([self.lesion_probability, self.false_positive_probability, [1.0]]))
        points = []
        for threshold in values[::-1]:
            if threshold <= 0:
                continue
            sensitivity, fp = self.at(float(threshold))
            points.append({"threshold": float(threshold), "sensitivity": sensitivity, "fp_per_scan": fp})
        return points

    def operating_threshold(self, max_fp_per_scan: float, floor: float) -> float:
        """The lowest component-probability threshold (not below ``floor``) with at most ``max_fp_per_scan``
        false positives per scan: the most sensitive operating point within that rate."""
        fps = np.sort(np.asarray(self.false_positive_probability))[::-1]
        allowed = int(np.floor(max_fp_per_scan * max(self.scans, 1) + 1e-9))
        if len(fps) <= allowed:
            return float(floor)
        return float(max(floor, np.nextafter(fps[allowed], np.inf)))


def summarise(values) -> dict:
    """Mean, SD, median, quartiles and range of per-lesion values (NaN and None ignored)."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(array):
        return {"n": 0, "mean": None, "sd": None, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    return {"n": len(array), "mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1
            else 0.0, "median": float(np.median(array)), "q1": float(np.percentile(array, 25)),
            "q3": float(np.percentile(array, 75)), "min": float(array.min()), "max": float(array.max())}


def overlaps(component_labels: np.ndarray, lesion_masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(lesions, components) intersection-over-union and whether each pair touches, for component labels
    1..n of a label array (column k is label k + 1)."""
    n = int(component_labels.max()) if component_labels.size else 0
    sizes = np.bincount(component_labels.ravel(), minlength=n + 1)[1:].astype(float)
    iou = np.zeros((len(lesion_masks), n))
    for i, mask in enumerate(lesion_masks):
        mask = mask.astype(bool)
        inter = np.bincount(component_labels[mask].ravel(), minlength=n + 1)[1:].astype(float)
        union = sizes + mask.sum() - inter
        iou[i] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        iou[i][inter == 0] = 0.0
    touching = np.zeros_like(iou, dtype=bool)
    for i, mask in enumerate(lesion_masks):
        values = np.unique(component_labels[mask.astype(bool)])
        touching[i, values[values > 0] - 1] = True
    return iou, touching


def hits_by_iou(iou: np.ndarray, probabilities: np.ndarray, minimum: float = 0.5) -> np.ndarray:
    """Greedy assignment as in object detection: components by probability descending, each taking the free
    lesion with the highest IoU >= ``minimum``; per component the lesion index (-1: a false positive)."""
    assigned = np.full(iou.shape[1], -1)
    free = np.ones(iou.shape[0], dtype=bool)
    for k in np.argsort(-probabilities, kind="stable"):
        if not free.any():
            break
        candidates = np.where(free & (iou[:, k] >= minimum))[0]
        if len(candidates):
            best = candidates[np.argmax(iou[candidates, k])]
            assigned[k] = best
            free[best] = False
    return assigned


def iou_detection(iou: np.ndarray, probabilities: np.ndarray, minimum: float = 0.5
                  ) -> tuple[list[float], list[float]]:
    """One scan's detection with a hit defined by IoU >= ``minimum`` (greedy, one component per lesion): per
    lesion the probability of its component (0: none), and the probabilities of the unassigned components."""
    assigned = hits_by_iou(iou, probabilities, minimum)
    lesion_probability = [0.0] * iou.shape[0]
    for k, lesion in enumerate(assigned):
        if lesion >= 0:
            lesion_probability[lesion] = float(probabilities[k])
    return lesion_probability, [float(p) for p, a in zip(probabilities, assigned) if a < 0]


def average_precision(scores, true_positive, positives: int) -> float:
    """Area under the precision-recall curve of detections ranked by score, with the precision envelope (all-point
    interpolation, as PASCAL VOC 2010+ and COCO's per-class AP before its recall sampling); detections of equal
    score enter together, so a tie of hits and false positives is not ordered by chance. NaN without
    positives."""
    if positives <= 0:
        return float("nan")
    scores = np.asarray(scores, dtype=float)
    tp = np.asarray(true_positive, dtype=bool)
    if not len(tp):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # the ranks where a distinct score ends
    cum_tp = np.cumsum(tp)[last_of_tie]
    ranked = np.arange(1, len(tp) + 1)[last_of_tie]
    precision = np.maximum.accumulate((cum_tp / ranked)[::-1])[::-1]  # the precision envelope
    recall = np.concatenate([[0.0], cum_tp / positives])
    return float(np.sum((recall[1:] - recall[:-1]) * precision))


def detection_ap_by_type(detections: list[dict], lesion_types: list[str]) -> dict:
    """Average precision at IoU >= 0.5 per lesion type, and their mean.

    ``detections``: one dict per component with ``score`` and ``type`` (the assigned lesion's type; None: a false
    positive) and optionally ``type_probabilities`` ({type: p}). Detection AP of a type ranks every component by
    its score; components assigned to lesions of other types are left out. Classification AP (when the
    components carry type probabilities) ranks by score x P(type): a hit must be a lesion of that type.
    """
    out: dict = {"detection": {}, "classification": {}}
    for kind in sorted(set(lesion_types)):
        positives = sum(t == kind for t in lesion_types)
        kept = [d for d in detections if d["type"] in (None, kind)]
        out["detection"][kind] = average_precision([d["score"] for d in kept], [d["type"] == kind for d in kept],
                                                   positives)
        if detections and all("type_probabilities" in d for d in detections):
            out["classification"][kind] = average_precision(
                [d["score"] * float(d["type_probabilities"].get(kind, 0.0)) for d in detections],
                [d["type"] == kind for d in detections], positives)
    for key in ("detection", "classification"):
        values = [v for v in out[key].values() if np.isfinite(v)]
        out[f"mean_{key}_ap"] = float(np.mean(values)) if values else None
    if not out["classification"]:
        del out["classification"]
    return out


def classification_ap(detections: list[dict], lesion_types: list[str], probabilities) -> dict:
    """Classification average precision per class of a model's lesion-type heads (``probabilities``: a frame of
    type probabilities, index the detections' ``id``, one column per class): types the heads merged into their
    ``rare`` class count as that class; a detection the model could not score has probability 0."""
    classes = list(probabilities.columns)
    rare = "rare" if "rare" in classes else None

    def as_class(kind):
        return kind if kind is None or kind in classes or rare is None else rare

    scored = [{**d, "type": as_class(d["type"]),
               "type_probabilities": probabilities.loc[d["id"]].to_dict() if d["id"] in probabilities.index else {}}
              for d in detections]
    result = detection_ap_by_type(scored, [as_class(t) for t in lesion_types])
    return {"per_type": result.get("classification", {}), "mean": result.get("mean_classification_ap")}
