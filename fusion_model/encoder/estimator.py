"""`ImageEncoder`: out-of-fold encoder outputs for the fusion heads, plus a final model.

``fit(crops, labels, patient_ids)`` splits the lesions into patient-grouped, label-stratified
folds. For each fold an encoder is trained on the other folds (early-stopped on a
patient-grouped validation part of them) and predicts the held-out fold, so every lesion's
out-of-fold logit and embedding come from a model that never saw its patient. A final
encoder is then trained on all lesions for the median best number of epochs; it serves new
data (``decision_function`` / ``transform``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from fusion_model.config import EncoderConfig, ExperimentConfig
from fusion_model.encoder.network import LesionEncoder
from fusion_model.encoder.train import EpochHook, TrainResult, predict, train_encoder
from fusion_model.errors import UserInputError
from fusion_model.splits import inner_validation_split, patient_grouped_folds


class ImageEncoder:
    """The image encoder as an estimator: out-of-fold outputs for the heads and a final model for new lesions."""

    def __init__(self, config: EncoderConfig | None = None, hu_window: tuple[float, float] = (-200.0, 300.0),
                 checkpoint_dir: Path | None = None, progress: bool = True, on_epoch: EpochHook | None = None,
                 folds: int = 5, seed: int = 0):
        self.config = config or EncoderConfig()
        self.hu_window = hu_window
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.on_epoch = on_epoch
        self.folds = folds
        self.seed = seed

    @classmethod
    def for_experiment(cls, config: ExperimentConfig, checkpoint_dir: Path | None = None, progress: bool = True,
                       on_epoch: EpochHook | None = None) -> "ImageEncoder":
        """The unfitted encoder an experiment trains: its encoder section, HU window, folds and seed."""
        return cls(config.encoder, config.preprocess.hu_window, checkpoint_dir, progress, on_epoch,
                   folds=config.split.folds, seed=config.seed)

    @classmethod
    def from_network(cls, config: ExperimentConfig, network: LesionEncoder, oof_auc: float | None = None,
                     final_epochs: int | None = None, progress: bool = False) -> "ImageEncoder":
        """A fitted encoder from its trained final network (as an artifact stores it)."""
        encoder = cls.for_experiment(config, progress=progress)
        network.eval()
        encoder.model_ = network
        encoder.oof_auc_ = oof_auc
        encoder.final_epochs_ = final_epochs
        return encoder

    @classmethod
    def from_oof_outputs(cls, config: ExperimentConfig, oof_logits: np.ndarray, oof_embeddings: np.ndarray,
                         fold_of: np.ndarray) -> "ImageEncoder":
        """An encoder known by its out-of-fold outputs only (a search's cache): enough to fit heads on."""
        encoder = cls.for_experiment(config, progress=False)
        encoder.oof_logits_ = np.asarray(oof_logits)
        encoder.oof_embeddings_ = np.asarray(oof_embeddings)
        encoder.fold_of_ = np.asarray(fold_of)
        encoder.folds_ = [(np.flatnonzero(encoder.fold_of_ != k), np.flatnonzero(encoder.fold_of_ == k))
                          for k in range(int(encoder.fold_of_.max()) + 1)]
        return encoder

    def _checkpoint(self, name: str) -> Path | None:
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / f"{name}.pt"

    def _hook(self, fold: int) -> EpochHook | None:
        if self.on_epoch is None:
            return None
        return lambda epoch, record: self.on_epoch(epoch, {**record, "fold": fold})

    def fit(self, crops: np.ndarray, labels, patient_ids, fit_final: bool = True,
            second_reader_crops: np.ndarray | None = None) -> "ImageEncoder":
        """Fold models (out-of-fold logits and embeddings), then the final model unless ``fit_final`` is off.

        ``second_reader_crops`` (same shape as ``crops``, around a second reader's outline): training batches
        draw each lesion's crop from either set, per epoch; validation and out-of-fold outputs use ``crops``.
        """
        crops = np.asarray(crops)
        labels = np.asarray(labels).astype(int)
        groups = np.asarray(patient_ids)
        if crops.ndim != 5 or len(crops) != len(labels) or len(labels) != len(groups):
            raise UserInputError(f"crops {crops.shape}, {len(labels)} labels and {len(groups)} patient ids "
                                 "must describe the same lesions (crops: lesions, channels, z, y, x)")
        cfg = self.config
        self.folds_ = patient_grouped_folds(labels, groups, self.folds, self.seed)
        n = len(labels)
        self.oof_logits_ = np.full(n, np.nan, dtype=np.float32)
        self.oof_embeddings_ = np.full((n, cfg.embedding_size), np.nan, dtype=np.float32)
        self.fold_of_ = np.full(n, -1, dtype=int)
        self.fold_results_: list[TrainResult] = []
        self.fold_train_patients_: list[set] = []
        for k, (train_idx, test_idx) in enumerate(self.folds_):
            inner_train, inner_val = inner_validation_split(labels[train_idx], groups[train_idx],
                                                            cfg.validation_fraction, self.seed + k)
            result = train_encoder(
                crops, labels, train_idx[inner_train], train_idx[inner_val], cfg, self.hu_window, seed=self.seed,
                checkpoint=self._checkpoint(f"fold{k}"), on_epoch=self._hook(k), progress=self.progress,
                description=f"encoder fold {k + 1}/{len(self.folds_)}", second_reader_crops=second_reader_crops,
            )
            logits, embeddings = predict(result.model, crops[test_idx], cfg)
            self.oof_logits_[test_idx] = logits
            self.oof_embeddings_[test_idx] = embeddings
            self.fold_of_[test_idx] = k
            self.fold_results_.append(result)
            self.fold_train_patients_.append(set(groups[train_idx]))
        self.oof_auc_ = float(roc_auc_score(labels, self.oof_logits_))
        self.final_epochs_ = int(np.median([r.best_epoch for r in self.fold_results_])) + 1
        if fit_final:
            final = train_encoder(crops, labels, np.arange(n), None, cfg, self.hu_window, seed=self.seed,
                                  epochs=self.final_epochs_,
                                  checkpoint=self._checkpoint("final"), progress=self.progress,
                                  description="encoder on all lesions", second_reader_crops=second_reader_crops)
            self.model_ = final.model
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("ImageEncoder is not fitted with a final model; call fit() first")

    def predict_outputs(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of new lesions in one pass (final model, test-time augmentation)."""
        self._check_fitted()
        return predict(self.model_, np.asarray(crops), self.config)

    def decision_function(self, crops: np.ndarray) -> np.ndarray:
        """Malignancy logits of new lesions."""
        return self.predict_outputs(crops)[0]

    def transform(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of new lesions."""
        return self.predict_outputs(crops)[1]
