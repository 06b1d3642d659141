"""What the heads gain from the encoder's embedding, and how new lesions are best scored.

One encoder is trained (``encoder.inference: final``, so the fold networks and a final network both exist) on
the training centres of a cohort; then, on the same networks, the heads are fitted three ways:

- ``aligned``: the embedding's principal components in the shared space (generalised Procrustes; default);
- ``unaligned``: the principal components of each network's own coordinates (the old behaviour);
- ``logit only``: no embedding components, the image logit alone (``features.embedding_components: 0``);

and the held-out centre is scored with the fold ensemble and with the final network. Prints, per variant, the
out-of-fold AUC on the training lesions and the held-out AUC (DeLong 95% CI) of each combination.

    python benchmarks/encoder_ablation.py --cohort COHORT [--config experiments/synthetic_demo.yaml]
        [--test-centre centre_c] [--set encoder.input_pooling=false ...]

e.g. on ``fusion-model synth --out cohorts/s400 --patients 400 --seed 21``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    """Run the ablation; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="default: the packaged synthetic_demo.yaml")
    parser.add_argument("--test-centre", default="centre_c")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    import yaml

    from fusion_model import pipeline
    from fusion_model.cohort import load_cohort
    from fusion_model.config import load_experiment, packaged_experiment, with_params
    from fusion_model.encoder.estimator import ImageEncoder
    from fusion_model import stats
    from fusion_model.imaging.cache import ImageCache, default_cache_dir
    from fusion_model.model import FusionModel

    config = load_experiment(args.config or packaged_experiment("synthetic_demo.yaml"))
    params = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.sets)}
    config = with_params(config, {**params, "encoder.inference": "final"})
    cohort = load_cohort(args.cohort, require_label=True)
    train_mask = pipeline.split_lesions(cohort.table, config, args.test_centre)
    data, _, _ = pipeline.lesion_data(cohort, config, ImageCache(default_cache_dir()), progress=False)
    train_ids = set(cohort.table["lesion_id"][train_mask])
    is_train = data.table.index.isin(train_ids)
    train, test = data.subset(np.flatnonzero(is_train)), data.subset(np.flatnonzero(~is_train))
    y, groups = train.table["label"].astype(int).to_numpy(), train.table["patient_id"].to_numpy()
    y_test = test.table["label"].astype(int).to_numpy()

    started = time.perf_counter()
    encoder = ImageEncoder.for_experiment(config, progress=False).fit(train.crops, y, groups)
    minutes = (time.perf_counter() - started) / 60
    aligned_oof, maps = encoder.oof_embeddings_.copy(), encoder.alignment_
    raw_oof = aligned_oof.copy()
    for k in range(len(encoder.folds_)):  # undo the fold maps: each network's own coordinates
        rows = encoder.fold_of_ == k
        m = maps[f"fold{k}"]
        raw_oof[rows] = (aligned_oof[rows] - m.target_mean) @ m.rotation.T / max(m.scale, 1e-12) + m.source_mean

    figures = {"cohort": str(args.cohort), "set": params, "training_lesions": int(is_train.sum()),
               "test_lesions": int((~is_train).sum()), "encoder_minutes": minutes,
               "encoder_oof_auc": encoder.oof_auc_, "settings": {}}
    print(f"encoder: {minutes:.1f} min, out-of-fold logit AUC {encoder.oof_auc_:.3f}; "
          f"{figures['training_lesions']} training, {figures['test_lesions']} held-out lesions")
    settings = {"aligned": (aligned_oof, maps, config),
                "unaligned": (raw_oof, None, config),
                "logit only": (aligned_oof, maps, with_params(config, {"features.embedding_components": 0}))}
    for name, (oof_embeddings, alignment, setting_config) in settings.items():
        encoder.oof_embeddings_, encoder.alignment_ = oof_embeddings, alignment
        model = FusionModel(setting_config, progress=False).fit_heads(train, y, groups, encoder)
        block = {"oof_auc": model.oof_auc_, "held_out": {}}
        for inference in ("fold_ensemble", "final"):
            encoder.inference_ = inference
            predicted = model.predict_variants(test)
            block["held_out"][inference] = {}
            for variant in model.variants_:
                d = stats.delong(y_test, predicted[f"p_{variant}"].to_numpy(float))
                block["held_out"][inference][variant] = {"auc": float(d.aucs[0]), "ci95": list(d.ci(0))}
        encoder.inference_ = "final"
        figures["settings"][name] = block
        print(f"\n{name}:")
        for variant in model.variants_:
            held = block["held_out"]
            print(f"  {variant:22s} OOF {block['oof_auc'][variant]:.3f}; held out: fold ensemble "
                  f"{held['fold_ensemble'][variant]['auc']:.3f} ({held['fold_ensemble'][variant]['ci95'][0]:.3f}-"
                  f"{held['fold_ensemble'][variant]['ci95'][1]:.3f}), final {held['final'][variant]['auc']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return figures


if __name__ == "__main__":
    main()
