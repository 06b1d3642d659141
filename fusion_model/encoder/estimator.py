"""`ImageEncoder`: out-of-fold encoder outputs for the fusion heads, and the networks that score new lesions.

``fit(crops, labels, patient_ids)`` splits the lesions into patient-grouped, label-stratified
folds. For each fold an encoder is trained on the other folds (for the whole schedule,
``encoder.stopping: last_epoch``, the default; or early-stopped on a patient-grouped validation part
of them, ``best_validation``) and predicts the held-out fold, so every lesion's out-of-fold logit and
embedding come from a model that never saw its patient. Early stopping on the few dozen lesions of a
validation part picks noisy epochs (as early as the second) and leaves the folds' logits on different
scales; the annealed end of the one-cycle schedule does neither.

New lesions (``decision_function`` / ``transform``) are scored by the average of the fold networks
(``encoder.inference: fold_ensemble``, the default: the networks whose outputs the heads learned from), or
by a final network trained on all lesions for the median best number of epochs (``final``); the fold
networks are kept either way. With ``embedding_alignment: procrustes`` every network's embedding is mapped
into one shared space (:mod:`fusion_model.encoder.alignment`) before it is averaged or handed to the heads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from fusion_model.config import EncoderConfig, ExperimentConfig
from fusion_model.encoder.alignment import SimilarityMap, consensus_maps
from fusion_model.encoder.network import LesionEncoder
from fusion_model.encoder.train import EpochHook, TrainResult, predict, train_encoder
from fusion_model.encoder.weights import describe_pretrained
from fusion_model.engine import Engine, on_cluster
from fusion_model.errors import UserInputError
from fusion_model.splits import inner_validation_split, patient_grouped_folds


@dataclass
class FoldTask:
    """One fold network to train: its number, the lesions it trains on (and early-stops on), the held-out ones."""

    fold: int
    fit_idx: np.ndarray
    val_idx: np.ndarray | None
    test_idx: np.ndarray


def train_fold(task: FoldTask, crops: np.ndarray, labels: np.ndarray, second_reader_crops: np.ndarray | None,
               config: EncoderConfig, hu_window: tuple[float, float], seed: int, checkpoint: Path | None,
               folds: int, device: str, channels: Sequence[str] | None, progress: bool = False,
               on_epoch: EpochHook | None = None) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """Train one fold network and score its held-out lesions: a task of the fold pass (folds are independent and
    seeded, so a fold trained on a worker is the fold trained here on the same device type and threads)."""
    result = train_encoder(
        crops, labels, task.fit_idx, task.val_idx, config, hu_window, seed=seed,
        checkpoint=checkpoint / f"fold{task.fold}.pt" if checkpoint is not None else None, on_epoch=on_epoch,
        progress=progress, description=f"encoder fold {task.fold + 1}/{folds}",
        second_reader_crops=second_reader_crops, device=device, channels=channels)
    logits, embeddings = predict(result.model, crops[task.test_idx], config)
    return result, logits, embeddings


class ImageEncoder:
    """The image encoder as an estimator: out-of-fold outputs for the heads and a final model for new lesions."""

    def __init__(self, config: EncoderConfig | None = None, hu_window: tuple[float, float] = (-200.0, 300.0),
                 checkpoint_dir: Path | None = None, progress: bool = True, on_epoch: EpochHook | None = None,
                 folds: int = 5, seed: int = 0, device: str = "cpu", engine: Engine | None = None):
        self.config = config or EncoderConfig()
        self.engine = engine  # where the fold networks train: this process (None), or one per Dask worker
        self.device = device  # where networks train: cpu, cuda or auto (the trained networks live on the CPU)
        self.hu_window = hu_window
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.on_epoch = on_epoch
        self.folds = folds
        self.seed = seed

    @classmethod
    def for_experiment(cls, config: ExperimentConfig, checkpoint_dir: Path | None = None, progress: bool = True,
                       on_epoch: EpochHook | None = None, device: str = "cpu",
                       engine: Engine | None = None) -> "ImageEncoder":
        """The unfitted encoder an experiment trains: its encoder section, HU window, folds and seed (and the
        engine its fold networks train on)."""
        return cls(config.encoder, config.preprocess.hu_window, checkpoint_dir, progress, on_epoch,
                   folds=config.split.folds, seed=config.seed, device=device, engine=engine)

    @classmethod
    def from_networks(cls, config: ExperimentConfig, fold_models: list[LesionEncoder],
                      final_model: LesionEncoder | None, alignment: dict[str, SimilarityMap] | None = None,
                      inference: str | None = None, oof_auc: float | None = None, final_epochs: int | None = None,
                      progress: bool = False) -> "ImageEncoder":
        """A fitted encoder from its trained networks (as an artifact stores them): the fold networks, the final
        one (or None), the embedding maps by network name (``fold0``.., ``final``) and how new lesions are
        scored (default: the config's)."""
        encoder = cls.for_experiment(config, progress=progress)
        for network in [*fold_models, *([final_model] if final_model is not None else [])]:
            network.eval()
        encoder.fold_models_ = list(fold_models)
        if final_model is not None:
            encoder.model_ = final_model
        encoder.alignment_ = alignment
        encoder.inference_ = inference or config.encoder.inference
        encoder.oof_auc_ = oof_auc
        encoder.final_epochs_ = final_epochs
        encoder.check_fitted()
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
            second_reader_crops: np.ndarray | None = None, channels: Sequence[str] | None = None) -> "ImageEncoder":
        """Fold models (out-of-fold logits and embeddings), then the final model unless ``fit_final`` is off.

        ``second_reader_crops`` (same shape as ``crops``, around a second reader's outline): training batches
        draw each lesion's crop from either set, per epoch; validation and out-of-fold outputs use ``crops``.
        ``channels``: the crops' channel names (default: images, then the mask).
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
        self.inference_ = cfg.inference
        self.pretrained_ = None
        if cfg.pretrained:  # provenance for the artifact: which weights every network started from
            self.pretrained_ = describe_pretrained(cfg.pretrained)
        tasks = []
        for k, (train_idx, test_idx) in enumerate(self.folds_):
            if cfg.stopping == "last_epoch":
                fit_idx, val_idx = train_idx, None
            else:
                inner_train, inner_val = inner_validation_split(labels[train_idx], groups[train_idx],
                                                                cfg.validation_fraction, self.seed + k)
                fit_idx, val_idx = train_idx[inner_train], train_idx[inner_val]
            tasks.append(FoldTask(k, fit_idx, val_idx, test_idx))
        fixed = dict(config=cfg, hu_window=self.hu_window, seed=self.seed, folds=len(self.folds_),
                     device=self.device, channels=channels,
                     checkpoint=Path(self.checkpoint_dir).absolute() if self.checkpoint_dir is not None else None)
        engine = self.engine
        if on_cluster(engine):  # one fold per worker, at once
            trained = engine.map(functools.partial(train_fold, **fixed), tasks, "encoder folds", self.progress,
                                 shared={"crops": crops, "labels": labels, "second_reader_crops": second_reader_crops})
        else:
            trained = (train_fold(task, crops, labels, second_reader_crops, **fixed, progress=self.progress,
                                  on_epoch=self._hook(task.fold)) for task in tasks)
        for (k, (train_idx, test_idx)), (result, logits, embeddings) in zip(enumerate(self.folds_), trained):
            self.oof_logits_[test_idx] = logits
            self.oof_embeddings_[test_idx] = embeddings
            self.fold_of_[test_idx] = k
            self.fold_results_.append(result)
            self.fold_train_patients_.append(set(groups[train_idx]))
        self.fold_models_ = [r.model for r in self.fold_results_]
        self.oof_auc_ = float(roc_auc_score(labels, self.oof_logits_))
        self.final_epochs_ = int(np.median([r.best_epoch for r in self.fold_results_])) + 1
        if fit_final and cfg.inference == "final":
            final = train_encoder(crops, labels, np.arange(n), None, cfg, self.hu_window, seed=self.seed,
                                  epochs=self.final_epochs_,
                                  checkpoint=self._checkpoint("final"), progress=self.progress,
                                  description="encoder on all lesions", second_reader_crops=second_reader_crops,
                                  device=self.device, channels=channels)
            self.model_ = final.model
        self.alignment_ = None
        if cfg.embedding_alignment == "procrustes":
            self.alignment_ = self._fit_alignment(crops)
            for k in range(len(self.folds_)):
                rows = self.fold_of_ == k
                self.oof_embeddings_[rows] = self.alignment_[f"fold{k}"](self.oof_embeddings_[rows])
        return self

    def _networks(self, inference: str | None = None) -> list[tuple[str, LesionEncoder]]:
        """The networks that score new lesions, by name: the fold networks, or the final one."""
        mode = inference or self.inference_
        if mode == "final":
            if not hasattr(self, "model_"):
                raise UserInputError("this encoder has no final network (it was trained with encoder.inference: "
                                     "fold_ensemble); score with the fold ensemble or retrain with inference: final")
            return [("final", self.model_)]
        return [(f"fold{k}", m) for k, m in enumerate(self.fold_models_)]

    def _fit_alignment(self, crops: np.ndarray) -> dict[str, SimilarityMap]:
        """Each network's map onto the consensus of all networks' embeddings of the training lesions."""
        named = [(f"fold{k}", m) for k, m in enumerate(self.fold_models_)]
        if hasattr(self, "model_"):
            named.append(("final", self.model_))
        embeddings = [predict(network, crops, self.config)[1] for _, network in named]
        return dict(zip([name for name, _ in named], consensus_maps(embeddings)))

    def check_fitted(self) -> None:
        """Refuse to score before any network is trained."""
        if not getattr(self, "fold_models_", None) and not hasattr(self, "model_"):
            raise RuntimeError("ImageEncoder has no trained networks; call fit() first")

    def predict_outputs(self, crops: np.ndarray, inference: str | None = None,
                        tta_views: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of new lesions: each scoring network's (test-time augmentation as configured,
        embedding mapped into the shared space), averaged. ``inference`` overrides the encoder's choice
        (``fold_ensemble`` or ``final``)."""
        self.check_fitted()
        crops = np.asarray(crops)
        logits, embeddings = [], []
        for name, network in self._networks(inference):
            logit, embedding = predict(network, crops, self.config, tta_views=tta_views)
            if self.alignment_ is not None:
                embedding = self.alignment_[name](embedding)
            logits.append(logit)
            embeddings.append(embedding)
        return np.mean(logits, axis=0).astype(np.float32), np.mean(embeddings, axis=0).astype(np.float32)

    def decision_function(self, crops: np.ndarray) -> np.ndarray:
        """Malignancy logits of new lesions."""
        return self.predict_outputs(crops)[0]

    def transform(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of new lesions."""
        return self.predict_outputs(crops)[1]

    def scoring_networks(self) -> list[LesionEncoder]:
        """The networks whose average scores new lesions (for saliency)."""
        self.check_fitted()
        return [network for _, network in self._networks()]
