import numpy as np
import pandas as pd
import pytest

from fusion_model.cohort import load_cohort, validate_cohort
from fusion_model.datasets.medmnist import import_medmnist, load_medmnist_npz
from fusion_model.errors import UserInputError
from tests.conftest import SHARED
from tests.helpers import sphere_mask


def tiny_npz(path, splits=("train", "test")):
    arrays = {}
    for k, split in enumerate(splits):
        volumes = np.stack([sphere_mask((28, 28, 28), (14, 14, 14), 4 + i + k) * 255 for i in range(3)])
        arrays[f"{split}_images"] = volumes
        arrays[f"{split}_labels"] = np.array([[0], [1], [0]], dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def test_import_any_subset_of_splits(tmp_path):
    npz = tiny_npz(tmp_path / "x.npz", splits=("test",))
    out = import_medmnist(npz, tmp_path / "cohort", progress=False)
    report = validate_cohort(out, require_label=True, progress=False)
    assert report.ok, [p.line() for p in report.errors]
    cohort = load_cohort(out)
    assert cohort.spec.ct_intensities is False
    assert cohort.table["split"].unique().tolist() == ["test"]
    # 64 mm cube in 28 voxels; a sphere of radius 4 voxels is ~18.3 mm across
    assert cohort.table.loc[0, "size_mm"] == pytest.approx(9 * 64 / 28, abs=64 / 28)
    assert {"volume_ml", "sphericity", "elongation"} <= set(cohort.table.columns)
    from fusion_model.features.radiological import SHAPE_PROFILE_FEATURES

    declared = {f.name for f in cohort.spec.extra_features}
    assert set(SHAPE_PROFILE_FEATURES) <= declared and set(SHAPE_PROFILE_FEATURES) <= set(cohort.table.columns)
    assert cohort.table["solidity"].between(0.85, 1.0).all()  # balls are convex
    assert cohort.table["component_count"].eq(1).all()


def test_bad_npz_is_refused_with_the_keys_found(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserInputError, match="keys present: \\['x'\\]"):
        load_medmnist_npz(tmp_path / "other.npz")
    np.savez(tmp_path / "half.npz", train_images=np.zeros((2, 4, 4, 4)))
    with pytest.raises(UserInputError, match="only one of"):
        load_medmnist_npz(tmp_path / "half.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserInputError, match="not a readable npz"):
        load_medmnist_npz(tmp_path / "junk.npz")


@pytest.mark.skipif(not (SHARED / "data/adrenalmnist3d").is_dir(), reason="../shared/data not present")
@pytest.mark.slow
def test_import_shared_adrenalmnist3d(tmp_path):
    out = import_medmnist(SHARED / "data/adrenalmnist3d/adrenalmnist3d_28_trainval.npz", tmp_path / "adrenal",
                          progress=False)
    report = validate_cohort(out, require_label=True, progress=False)
    assert report.ok, [p.line() for p in report.errors[:5]]
    assert report.summary["splits"] == {"train": 1188, "val": 98}
    table = pd.read_csv(out / "clinical.csv")
    prevalence = table.groupby("split")["label"].mean()
    assert prevalence["train"] == pytest.approx(0.218, abs=0.001)
    assert prevalence["val"] == pytest.approx(0.224, abs=0.001)
    # adrenal masses are larger than normal glands
    assert table.loc[table.label == 1, "volume_ml"].median() > table.loc[table.label == 0, "volume_ml"].median()
