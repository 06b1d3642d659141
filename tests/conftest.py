from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Fixtures that train a model: every test that uses one, directly or through another fixture, is an
# end-to-end test and carries the 'slow' marker (`pytest -m "not slow"` is the quick loop).
TRAINING_FIXTURES = {"trained_model", "fitted", "trained_segmenter"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """A small synthetic cohort, written once per test session."""
    from fusion_model.config import SynthConfig
    from fusion_model.synthetic.generate import synthesize_cohort

    out = tmp_path_factory.mktemp("synthetic") / "cohort"
    return synthesize_cohort(out, SynthConfig(patients=24, seed=7, two_lesion_fraction=0.2), progress=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_MODEL_CACHE", str(tmp_path / "cache"))


TINY_EXPERIMENT = {
    "name": "tiny", "seed": 0,
    "preprocess": {"spacing_mm": 4.0, "crop_size_mm": 64},
    "encoder": {"width": 4, "depth": 2, "stem_stride": 2, "embedding_size": 8, "epochs": 3, "tta_views": 1},
    "xgboost": {"n_estimators": 60},
    "split": {"folds": 3},
}


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A tiny model trained on one synthetic cohort, and a second (external) labelled cohort."""
    import yaml

    from fusion_model import pipeline
    from fusion_model.config import SynthConfig, load_experiment
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort

    root = tmp_path_factory.mktemp("trained")
    train_cohort = synthesize_cohort(root / "train", SynthConfig(patients=60, seed=31), progress=False)
    test_cohort = synthesize_cohort(root / "test", SynthConfig(patients=36, seed=32), progress=False)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_EXPERIMENT))
    cache = root / "cache"
    pipeline.train(load_experiment(config), train_cohort, root / "model", ImageCache(cache), progress=False)
    return {"model": root / "model", "train_cohort": train_cohort, "test_cohort": test_cohort, "config": config,
            "cache": cache}


@pytest.fixture(scope="session")
def local_cluster():
    """One local Dask cluster of two worker processes for the tests that need a cluster to run on, not a fresh one
    (each start costs seconds); a test that kills a worker starts its own."""
    from fusion_model.engine import Engine, EngineSettings

    with Engine(EngineSettings(workers=2)) as engine:
        yield engine
