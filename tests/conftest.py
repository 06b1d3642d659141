from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """A small synthetic cohort, written once per test session."""
    from fusion_model.synthetic.generate import SynthConfig, synthesize_cohort

    out = tmp_path_factory.mktemp("synthetic") / "cohort"
    return synthesize_cohort(out, SynthConfig(patients=24, seed=7, two_lesion_fraction=0.2), progress=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_MODEL_CACHE", str(tmp_path / "cache"))
