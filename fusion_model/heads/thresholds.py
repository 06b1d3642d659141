"""Operating thresholds chosen on training (out-of-fold) probabilities only."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def operating_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Youden's J maximum, and for 90% and 95% sensitivity a threshold that reaches it with the best
    specificity any threshold reaching it has (a corner of the ROC curve)."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.minimum(thresholds, 1.0)
    out = {"youden": float(thresholds[int(np.argmax(tpr - fpr))])}
    for name, target in (("sensitivity_90", 0.90), ("sensitivity_95", 0.95)):
        reaching = np.flatnonzero(tpr >= target)
        out[name] = float(thresholds[reaching[0]]) if reaching.size else 0.0
    return out
