"""The lesion segmenter: metrics against hand computations, components and side matching, scans on the
segmenter's grid, bad input, and train -> predict -> evaluate on a small cohort of phantoms that it must learn."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from fusion_model.config import SegmentConfig
from fusion_model.errors import UserInputError
from fusion_model.segment.infer import find_components
from fusion_model.segment.matching import Component, LesionQuery, match_lesions
from fusion_model.segment.metrics import (
    DetectionRecord,
    average_precision,
    classification_ap,
    detection_ap_by_type,
    hits_by_iou,
    iou_detection,
    overlap_metrics,
    overlaps,
)
from tests.helpers import sphere_mask, to_image

# ---------------------------------------------------------------- metrics


def test_overlap_metrics_match_hand_computation():
    reference = np.zeros((20, 20, 20), bool)
    reference[5:15, 5:15, 5:15] = True  # 1000 voxels
    predicted = np.zeros_like(reference)
    predicted[5:15, 5:15, 7:17] = True  # shifted 2 voxels along x: 800 shared
    figures = overlap_metrics(predicted, reference, (1.0, 1.0, 1.0))
    assert figures["dice"] == pytest.approx(2 * 800 / 2000)
    assert figures["volume_difference_percent"] == pytest.approx(0.0)
    assert figures["hd95_mm"] == pytest.approx(2.0)  # every surface point is at most 2 voxels from the other
    # with 0.5 mm voxels along x the same shift is 1 mm: within the 2 mm surface tolerance everywhere
    scaled = overlap_metrics(predicted, reference, (1.0, 1.0, 0.5))
    assert scaled["hd95_mm"] == pytest.approx(1.0)
    assert scaled["surface_dice_2mm"] == pytest.approx(1.0)
    assert scaled["reference_ml"] == pytest.approx(0.5)


def test_a_missed_lesion_scores_zero():
    reference = sphere_mask((16, 16, 16), (8, 8, 8), 4).astype(bool)
    figures = overlap_metrics(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert figures["dice"] == 0 and figures["surface_dice_2mm"] == 0 and np.isnan(figures["hd95_mm"])
    assert figures["volume_difference_percent"] == pytest.approx(-100.0)


def test_froc_and_operating_point():
    record = DetectionRecord()
    labels = np.zeros((10, 10, 10), np.uint16)
    labels[1:3, 1:3, 1:3] = 1  # touches lesion A
    labels[6:8, 6:8, 6:8] = 2  # touches nothing: a false positive
    lesion_a = np.zeros(labels.shape, bool)
    lesion_a[2:4, 2:4, 2:4] = True
    lesion_b = np.zeros(labels.shape, bool)
    lesion_b[8:, 0:2, 0:2] = True  # missed
    touching = record.add_scan(labels, {1: 0.9, 2: 0.7}, [lesion_a, lesion_b])
    assert touching == [[1], []]
    record.add_scan(np.zeros_like(labels), {}, [])  # a scan with no lesion and no component
    assert record.at(0.8) == (0.5, 0.0)
    assert record.at(0.6) == (0.5, 0.5)
    curve = record.froc()
    assert [p["threshold"] for p in curve] == sorted([p["threshold"] for p in curve], reverse=True)
    # within 0.5 FP per scan (2 scans: one FP allowed) the threshold can go down to the floor
    assert record.operating_threshold(0.5, floor=0.5) == 0.5
    # with no FP allowed it must sit just above the false positive's 0.7
    strict = record.operating_threshold(0.0, floor=0.5)
    assert 0.7 < strict < 0.7001 and record.at(strict) == (0.5, 0.0)


# ---------------------------------------------------------------- components and matching


def _reference(shape=(20, 40, 40), spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    body = np.full(shape, 40.0, np.float32)  # all body: the midline is the image centre (x = 19.5 mm)
    return to_image(body, spacing)


def test_components_are_sized_ranked_and_sided():
    probability = np.zeros((20, 40, 40), np.float32)
    probability += sphere_mask((20, 40, 40), (10, 20, 8), 4) * 0.95  # right of the midline (x < centre)
    probability += sphere_mask((20, 40, 40), (10, 20, 31), 4) * 0.6  # left
    probability[2, 2, 20] = 0.99  # a single voxel: below the minimum size
    labels, components = find_components(probability, _reference(), SegmentConfig(min_component_mm3=10))
    assert [c.side for c in components] == ["right", "left"]
    assert [round(c.probability, 2) for c in components] == [0.95, 0.6]
    assert set(np.unique(labels)) == {0, 1, 2}


def _component(label, probability, side, diameter_mm=20.0, gland_distance_mm=None, volume_mm3=500.0):
    return Component(label, volume_mm3, probability, (0.0, 0.0, 0.0), side, diameter_mm, gland_distance_mm)


def _labels(matches):
    return [m.label for m in matches]


def test_matching_uses_the_side_then_probability():
    components = [_component(1, 0.95, "left"), _component(2, 0.8, "right"), _component(3, 0.6, "right")]
    q = LesionQuery
    assert _labels(match_lesions([q("right")], components, 0.5)) == [2]
    assert _labels(match_lesions([q("left"), q("right")], components, 0.5)) == [1, 2]
    assert _labels(match_lesions([q(None), q("left")], components, 0.5)) == [2, 1]  # the side claims first
    assert _labels(match_lesions([q("left")], components, 0.99)) == [None]  # nothing at the operating point
    matches = match_lesions([q("left"), q("left")], components, 0.5)
    assert _labels(matches) == [1, None]
    assert "taken by lesion 1" in matches[1].reason and "on the right side" in matches[1].reason


def test_matching_takes_only_a_plausible_component_and_says_why():
    blob = _component(1, 1.0, "right", diameter_mm=62.0, gland_distance_mm=4.0, volume_mm3=92_600.0)  # liver
    lesion = _component(2, 0.7, "right", diameter_mm=14.0, gland_distance_mm=0.0)
    far = _component(3, 0.99, "right", diameter_mm=13.0, gland_distance_mm=40.0)
    (match,) = match_lesions([LesionQuery("right", 12.5)], [blob, lesion, far], 0.5, 2.5, 15.0)
    assert match.label == 2 and match.reason.startswith("component 2 (")
    assert "62 mm across and the table gives 12.5 mm" in match.refused[1]
    assert "40 mm from the adrenal glands" in match.refused[3]
    # without the lesion's component: none, and every refusal named
    (none,) = match_lesions([LesionQuery("right", 12.5)], [blob, far], 0.5, 2.5, 15.0,
                            suppressed=[_component(0, 1.0, "right", 80.0, 55.0, 150_000.0)])
    assert none.label is None
    assert none.reason.startswith("no plausible component: component 1 (92.6 mL, p 1.00, right, 62 mm across")
    assert "suppressed: 55 mm from the adrenal glands" in none.reason
    # no size in the table: size is not checked; a smaller than plausible component is refused
    assert _labels(match_lesions([LesionQuery("right")], [blob], 0.5, 2.5, 15.0)) == [1]
    assert _labels(match_lesions([LesionQuery("right", 80.0)], [lesion], 0.5, 2.5, 15.0)) == [None]
    # a component the refiner did not confirm: the reason gives both stages' scores
    unconfirmed = replace(_component(4, 0.99 * 0.2, "right", 14.0, 0.0), detector_probability=0.99,
                          refiner_confidence=0.2)
    (weak,) = match_lesions([LesionQuery("right", 12.5)], [unconfirmed], 0.5, 2.5, 15.0)
    assert weak.label is None
    assert "probability 0.20 (the detector's 0.99 times the refiner's 0.20) is below 0.50" in weak.refused[4]
    # nothing at all
    (empty,) = match_lesions([LesionQuery("left", 20.0)], [], 0.5)
    assert empty.reason == "no component on the left side with probability >= 0.50"


def test_iou_hits_and_average_precision_match_hand_computation():
    labels = np.zeros((10, 10, 10), np.uint16)
    labels[0:4, 0:4, 0:4] = 1  # 64 voxels, on lesion A (exactly): IoU 1
    labels[0:4, 0:4, 4:6] = 2  # 32 voxels touching lesion A's neighbour B (IoU 32/96 < 0.5)
    labels[8:10, 8:10, 8:10] = 3  # touches nothing
    lesion_a = labels == 1
    lesion_b = np.zeros_like(lesion_a)
    lesion_b[0:4, 0:4, 4:10] = True  # 96 voxels
    iou, touching = overlaps(labels, [lesion_a, lesion_b])
    assert iou[0, 0] == pytest.approx(1.0) and iou[1, 1] == pytest.approx(32 / 96) and iou[0, 2] == 0
    assert touching.tolist() == [[True, False, False], [False, True, False]]
    probabilities = np.array([0.9, 0.8, 0.7])
    assert hits_by_iou(iou, probabilities).tolist() == [0, -1, -1]
    assert iou_detection(iou, probabilities) == ([0.9, 0.0], [0.8, 0.7])
    # two lesions, ranked detections TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 0.5 + 0.5 * 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([0.9], [False], 1) == 0 and np.isnan(average_precision([0.5], [True], 0))
    # a tie of a hit and a false positive enters together: precision 1/2 at recall 1, whatever their order
    assert average_precision([1.0, 1.0], [False, True], 1) == average_precision([1.0, 1.0], [True, False], 1) == 0.5
    detections = [{"score": 0.9, "type": "adenoma", "type_probabilities": {"adenoma": 0.8, "metastasis": 0.2}},
                  {"score": 0.8, "type": None, "type_probabilities": {"adenoma": 0.5, "metastasis": 0.5}},
                  {"score": 0.7, "type": "metastasis", "type_probabilities": {"adenoma": 0.9, "metastasis": 0.1}}]
    ap = detection_ap_by_type(detections, ["adenoma", "metastasis"])
    assert ap["detection"]["adenoma"] == pytest.approx(1.0)  # the metastasis's component is left out
    assert ap["detection"]["metastasis"] == pytest.approx(0.5)  # ranked FP (0.8) then TP (0.7)
    # classification: metastasis scores 0.18, 0.4, 0.07 -> the hit ranks third: precision 1/3
    assert ap["classification"]["metastasis"] == pytest.approx(1 / 3)
    assert ap["mean_detection_ap"] == pytest.approx(0.75)
    # against heads that merged metastasis into 'rare': a metastasis hit counts for 'rare'
    heads = pd.DataFrame({"adenoma": [0.8, 0.5, 0.9], "rare": [0.2, 0.5, 0.1]}, index=["a", "b", "c"])
    for d, name in zip(detections, "abc"):
        d["id"] = name
    merged = classification_ap(detections, ["adenoma", "metastasis"], heads)
    assert set(merged["per_type"]) == {"adenoma", "rare"}
    assert merged["per_type"]["rare"] == pytest.approx(1 / 3)  # rare scores 0.18, 0.4, 0.07: the hit ranks third

# ---------------------------------------------------------------- scans, regions, bad input


GLAND_BOXES = {"right": (slice(9, 15), slice(20, 28), slice(11, 15)),
               "left": (slice(9, 15), slice(20, 28), slice(33, 37))}
DISTRACTOR = ((12, 42, 24), 4.0)  # (z, y, x) voxel centre and radius: about 26 mm from either gland


def _phantom_cohort(root: Path, patients: int = 10, seed: int = 0, shape=(24, 48, 48), spacing=(2.0, 2.0, 2.0),
                    outlined: int | None = None, glands: bool = True, distractor: bool = False) -> Path:
    """Bright spheres (one per patient, random place and size) in noisy soft tissue, on two sides, near two
    'glands' written as TotalSegmentator writes them (glands/PATIENT/adrenal_gland_*.nii.gz); with
    ``distractor``, one more bright sphere far from both glands (not a lesion of the table)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(patients):
        pid = f"P{i + 1:02d}"
        side = "right" if i % 2 else "left"
        x = int(rng.integers(30, 40)) if side == "left" else int(rng.integers(8, 18))
        centre = (int(rng.integers(8, 16)), int(rng.integers(16, 32)), x)
        mask = sphere_mask(shape, centre, float(rng.uniform(3.0, 5.0)))
        ct = np.where(mask > 0, 60.0, 0.0) + rng.normal(0, 12, shape)
        if distractor:
            blob = sphere_mask(shape, *DISTRACTOR) > 0
            ct[blob] = 60.0 + rng.normal(0, 12, int(blob.sum()))
        sitk.WriteImage(to_image(ct.astype(np.int16), spacing), str(root / f"images/{pid}.nii.gz"))
        if glands:
            (root / "glands" / pid).mkdir(parents=True)
            for gland_side, box in GLAND_BOXES.items():
                gland = np.zeros(shape, np.uint8)
                gland[box] = 1
                sitk.WriteImage(to_image(gland, spacing), str(root / f"glands/{pid}/adrenal_gland_{gland_side}.nii.gz"))
        sitk.WriteImage(to_image(mask, spacing), str(root / f"masks/{pid}.nii.gz"))
        has_mask = outlined is None or i < outlined
        rows.append({"patient_id": pid, "lesion_id": f"{pid}-L1", "centre": "A" if i % 3 else "B", "label": i % 2,
                     "lesion_type": "metastasis" if i % 2 else "adenoma", "side": side, "unenhanced_path": f"images/{pid}.nii.gz",
                     "mask_path": f"masks/{pid}.nii.gz" if has_mask else None})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    (root / "cohort.json").write_text(json.dumps({"name": "phantoms", "phases": ["unenhanced"]}))
    return root


# The refiner learns these phantoms' lesions within a few epochs (crop Dice 0.97): 16 epochs of 32-voxel crops, not
# the default 70, which took four fifths of the module's training fixture. The detector sees these small phantoms at
# 3 mm (the default, 4 mm, is sized for the benchmark's abdomens) and is validated every other epoch.
TINY_SEGMENTER = {"channels": [8, 16, 32], "patch_voxels": [32, 32, 16], "epochs": 12, "iterations_per_epoch": 12,
                  "batch_size": 4, "learning_rate": 0.01, "min_component_mm3": 40, "min_extent_mm": 20,
                  "threads": 2, "hu_window": [-100, 150], "patience": 12, "spacing_mm": 3.0, "validate_every": 2,
                  "refine_epochs": 16, "refine_voxels": 32}


def test_scan_on_the_isotropic_grid_and_region(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.scans import Region, cohort_scans, load_scan

    root = _phantom_cohort(tmp_path / "c", patients=2, spacing=(1.0, 1.0, 2.5))
    scan = cohort_scans(load_cohort(root))[0]
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20)
    volume = load_scan(scan, ["unenhanced"], config, with_target=True)
    assert volume.grid.GetSpacing() == (2.0, 2.0, 2.0)
    # voxel centres span 23 x 2.5 mm along z and 47 x 1 mm in-plane: 2 mm voxels over the same span
    assert volume.image.shape == (1, 29, 24, 24)
    assert 0 <= volume.image.min() and volume.image.max() <= 1
    reference_ml = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks/P01.nii.gz"))).sum() * 2.5 / 1000
    assert volume.target.sum() * 8 / 1000 == pytest.approx(reference_ml, rel=0.3)  # a small lesion on 2 mm voxels
    boxed = load_scan(scan, ["unenhanced"], config, with_target=True,
                      region=Region(box_mm=(10.0, 20.0, 10.0, 20.0, 10.0, 20.0)))
    assert boxed.image.shape[1:] == (21, 21, 21)  # 10-20 mm box + 20 mm margin each side, clipped at 0 mm


def test_refiner_crops_carry_each_phase_in_both_windows_and_the_enhancement():
    from fusion_model.segment.refine import crop_on, difference_pair, refiner_channels

    reference = to_image(np.zeros((20, 20, 20), np.float32), (1.0, 1.0, 1.0))
    phases = {"unenhanced": 40.0, "venous": 110.0}  # a lesion's 40 HU, the liver's 110 HU in the venous phase
    images = [to_image(np.full((20, 20, 20), hu, np.float32), (1.0, 1.0, 1.0)) for hu in phases.values()]
    config = SegmentConfig(refine_voxels=16, hu_window=(-250, 350), refine_soft_tissue_window=(-30, 170),
                           refine_difference_window=(-50, 200))
    difference = difference_pair(list(phases), config)
    crop, _ = crop_on(images, (10.0, 10.0, 10.0), 8.0, config, reference.GetDirection(), difference)
    assert crop.shape == (refiner_channels(list(phases), config), 16, 16, 16) == (5, 16, 16, 16)
    expected = [(40 + 250) / 600, (110 + 250) / 600, (40 + 30) / 200, (110 + 30) / 200, (70 + 50) / 250]
    assert crop.reshape(5, -1).mean(axis=1) == pytest.approx(expected, abs=1e-5)
    # the narrow window spreads the same 70 HU over 3 times the range of the wide one
    assert (expected[3] - expected[2]) == pytest.approx(3 * (expected[1] - expected[0]))
    wide_only = config.model_copy(update={"refine_soft_tissue_window": None})
    assert refiner_channels(list(phases), wide_only) == 3
    with pytest.raises(ValueError, match="refine_soft_tissue_window"):
        SegmentConfig(refine_soft_tissue_window=(100, 0))


def test_a_segmenter_saved_before_the_soft_tissue_window_and_confirmation_loads_as_it_was_trained(tmp_path):
    from fusion_model.segment.artifact import MANIFEST, Segmenter, load_segmenter
    from fusion_model.segment.network import build_segmenter
    from fusion_model.segment.refine import refiner_channels

    config = SegmentConfig(channels=(4, 8), refine_voxels=16, refine_soft_tissue_window=None)
    phases = ["unenhanced", "venous"]
    segmenter = Segmenter(build_segmenter(config, 2), config, phases, ([1, 1, 1], [1, 1, 1]), 0.8, {},
                          build_segmenter(config, refiner_channels(phases, config)))
    segmenter.save(tmp_path / "seg")
    manifest = json.loads((tmp_path / "seg" / MANIFEST).read_text())
    del manifest["config"]["refine_soft_tissue_window"]  # as written by the earlier release
    del manifest["config"]["refine_confirms"]
    (tmp_path / "seg" / MANIFEST).write_text(json.dumps(manifest))
    loaded = load_segmenter(tmp_path / "seg")
    assert loaded.config.refine_soft_tissue_window is None
    assert loaded.config.refine_confirms is False  # its operating point was set on the detector's probabilities
    assert next(loaded.refiner.parameters()).shape[1] == 3  # two phases and their difference


def test_batch_augmentation_mirrors_image_and_target_together_and_repeats_with_the_seed():
    from fusion_model.segment.train import augment_batch

    config = SegmentConfig(intensity_jitter=0.1)
    rng = np.random.default_rng(0)
    target = (rng.random((6, 1, 8, 10, 12)) > 0.8).astype(np.int64)
    image = np.concatenate([target * 0.6, target * 0.3 + 0.1], axis=1).astype(np.float32)  # the target, visible

    def run(seed):
        return augment_batch(torch.from_numpy(image.copy()), torch.from_numpy(target.copy()), config,
                             np.random.default_rng(seed))

    x, y = run(1)
    again_x, again_y = run(1)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    mirrored = 0
    for i in range(len(x)):
        # scale and shift are one affine map per patch: undo it from the background (0) and a lesion voxel (0.6)
        inside = y[i, 0].bool()
        shift = float(x[i, 0][~inside].mean())
        scale = (float(x[i, 0][inside].mean()) - shift) / 0.6
        assert abs(scale - 1) <= 0.1 + 1e-6 and abs(shift) <= 0.1 + 1e-6
        assert torch.allclose((x[i, 0] - shift) / scale, y[i, 0].float() * 0.6, atol=1e-5)  # moved together
        mirrored += not torch.equal(y[i], torch.from_numpy(target[i]))
    assert mirrored >= 3  # 6 patches, each left as it is with probability 1/8
    plain = SegmentConfig(intensity_jitter=0.0, flip=False)
    x, y = augment_batch(torch.from_numpy(image.copy()), torch.from_numpy(target.copy()), plain,
                         np.random.default_rng(1))
    assert torch.equal(x, torch.from_numpy(image)) and torch.equal(y, torch.from_numpy(target))


def test_detector_batches_repeat_with_the_seed_in_any_process(monkeypatch):
    """The crops of a batch come from (seed, epoch) alone. MONAI's Compose is falsy or truthy by its length, which
    builds a flattened Compose whose constructor reseeds the crop from MONAI's global seed (the operating system's
    entropy when unset): a batch function that tested ``if transform`` cropped differently in every process."""
    import monai.utils.misc

    from fusion_model.segment.train import _batch, _training_example, training_transforms

    monkeypatch.setattr(monai.utils.misc, "_seed", None)  # as in a fresh process: no global MONAI seed
    config = SegmentConfig(patch_voxels=(8, 8, 8), patches_per_volume=2, flip=False, intensity_jitter=0.0)
    rng = np.random.default_rng(0)
    target = np.zeros((24, 30, 28), dtype=np.uint8)
    target[10:14, 12:17, 9:13] = 1
    image = rng.random((2, *target.shape)).astype(np.float32)
    examples = [_training_example(image, target, (8, 8, 8), np.random.default_rng(1))]
    transform = training_transforms(config)

    def epoch(seed):
        transform.set_random_state(seed=seed)
        generator = np.random.default_rng(seed)
        return [_batch(examples, np.array([0]), transform, config, generator)[0] for _ in range(4)]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert len({hash(x.numpy().tobytes()) for x in first}) > 1  # the crops move within an epoch


def test_segment_train_refuses_a_cohort_without_masks(tmp_path):
    from fusion_model.segment.train import train_segmenter

    root = _phantom_cohort(tmp_path / "c", patients=3, outlined=0)
    with pytest.raises(UserInputError, match="no lesion has a mask"):
        train_segmenter(root, tmp_path / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    assert not (tmp_path / "seg").exists()


def test_a_scan_too_small_for_the_segmenter_is_refused(tmp_path):
    from fusion_model.segment.train import train_segmenter

    root = _phantom_cohort(tmp_path / "c", patients=4, shape=(4, 48, 48))  # 8 mm thick
    with pytest.raises(UserInputError, match=r"P01\.nii\.gz.*covers only 96 x 96 x 8 mm"):
        train_segmenter(root, tmp_path / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    assert not (tmp_path / "seg").exists()


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_segmenter(tmp_path_factory):
    from fusion_model.segment.train import train_segmenter

    root = tmp_path_factory.mktemp("segment")
    cohort = _phantom_cohort(root / "cohort", patients=14, seed=1)
    run = train_segmenter(cohort, root / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    return {"root": root, "cohort": cohort, "run": run}


def test_train_learns_and_writes_a_segmenter(trained_segmenter):
    from fusion_model.segment.artifact import load_segmenter

    run = trained_segmenter["run"]
    assert run.figures["early_stopping_lesion_dice"]["median"] > 0.7
    assert run.figures["learned_glands"] and run.figures["gland_outlines"].endswith("glands")
    loaded = load_segmenter(run.out)
    assert loaded.learned_glands
    assert loaded.phases == ["unenhanced"] and loaded.threshold == run.segmenter.threshold
    assert loaded.spacing_range == ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
    assert not list(run.out.parent.glob(".seg.checkpoint.pt"))  # the checkpoint goes once the segmenter is written


def test_predict_writes_a_valid_cohort_with_automatic_masks(trained_segmenter, tmp_path):
    from fusion_model.cohort import load_cohort, validate_cohort
    from fusion_model.segment.predict import predict_masks

    source = _phantom_cohort(tmp_path / "new", patients=6, seed=5, outlined=0)
    run = predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto", progress=False)
    report = validate_cohort(tmp_path / "auto", progress=False)
    assert report.ok, report.problems
    cohort = load_cohort(tmp_path / "auto")
    table = cohort.table
    found = table["mask_path"].notna()
    assert run.found == int(found.sum()) >= 5
    assert (table.loc[found, "mask_source"] == "auto").all()
    assert set(pd.read_csv(tmp_path / "auto" / "not_found.csv")["lesion_id"]) == set(table.loc[~found, "lesion_id"])
    # the automatic masks overlap the truth the generator knows
    for lesion in cohort.lesions():
        if lesion.mask_path is None:
            continue
        auto = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion.mask_path))) == lesion.mask_label
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "masks" / f"{lesion.patient_id}.nii.gz"))) > 0
        assert 2 * (auto & truth).sum() / (auto.sum() + truth.sum()) > 0.6
    # images are shared, not re-encoded
    assert (tmp_path / "auto/images/P01.nii.gz").read_bytes() == (source / "images/P01.nii.gz").read_bytes()


def test_predict_on_a_local_dask_cluster_writes_the_same_cohort(local_cluster, trained_segmenter, tmp_path):
    from fusion_model.segment.predict import predict_masks

    source = _phantom_cohort(tmp_path / "new", patients=5, seed=5, outlined=0)
    serial = predict_masks(trained_segmenter["run"].out, source, tmp_path / "one", progress=False)
    parallel = predict_masks(trained_segmenter["run"].out, source, tmp_path / "two", progress=False,
                             engine=local_cluster)
    assert parallel.found == serial.found >= 4
    for name in ["clinical.csv", "matching.csv", "components.csv", "not_found.csv",
                 *sorted(p.name for p in (tmp_path / "one/masks").iterdir())]:
        folder = "masks/" if name.endswith(".nii.gz") else ""
        assert (tmp_path / "two" / folder / name).read_bytes() == (tmp_path / "one" / folder / name).read_bytes(), name


def test_evaluate_reports_overlap_and_detection(trained_segmenter, tmp_path):
    from fusion_model.segment.evaluate import evaluate_segmenter

    cohort = _phantom_cohort(tmp_path / "test", patients=6, seed=9)
    result = evaluate_segmenter(trained_segmenter["run"].out, cohort, tmp_path / "report", progress=False)
    metrics = json.loads((tmp_path / "report/metrics.json").read_text(encoding="utf-8"))
    assert metrics["overall"]["lesions"] == 6 and set(metrics["per_centre"]) == {"A", "B"}
    assert metrics["overall"]["dice"]["median"] > 0.6
    assert metrics["overall"]["detection"]["operating_point"]["sensitivity"] >= 5 / 6
    overall = metrics["overall"]
    assert overall["detection_iou"]["lesions"] == 6 and overall["detection_iou"]["sensitivity_within_fp_per_scan"]
    assert overall["unscored"]["count"] == 6 - int(round(6 * overall["found_by_matching"]))
    fp = overall["false_positives"]
    assert fp["outside_glands"] is not None and fp["count"] == len(
        result.components.query("~suppressed and ~touches_lesion and probability >= @result.metrics['component_threshold']"))
    ap = metrics["average_precision_iou_0.5"]
    assert set(ap["detection"]) == {"adenoma", "metastasis"} and ap["mean_detection_ap"] > 0.6
    assert set(overall["dice_by_side"]) == {"left", "right"}
    components = pd.read_csv(tmp_path / "report/components.csv")
    kept = components[~components["suppressed"].astype(bool)]
    assert metrics["refiner_confirms"] and len(kept)  # the product of the two stages' scores, both in the table
    assert kept["probability"].to_numpy() == pytest.approx(
        (kept["detector_probability"] * kept["refiner_confidence"]).to_numpy(), abs=1e-6)
    lesions = pd.read_csv(tmp_path / "report/lesions.csv")
    assert lesions["dice"].median() == pytest.approx(result.metrics["overall"]["dice"]["median"])
    html = (tmp_path / "report/report.html").read_text(encoding="utf-8")
    assert "FROC" in html and html.count("data:image/png;base64,") >= 5
    assert "IoU ≥ 0.5" in html and "Average precision per lesion type" in html and "False positives" in html
    for name in ("froc", "dice_by_centre", "overlay_best", "overlay_median", "overlay_worst"):
        assert (tmp_path / f"report/figures/{name}.png").stat().st_size > 1000


def test_the_detector_learns_where_the_glands_are(trained_segmenter, tmp_path):
    import torch

    from fusion_model.cohort import load_cohort
    from fusion_model.segment.artifact import load_segmenter
    from fusion_model.segment.infer import probability_map
    from fusion_model.segment.scans import cohort_scans, load_scan, read_regions

    segmenter = load_segmenter(trained_segmenter["run"].out)
    source = _phantom_cohort(tmp_path / "new", patients=3, seed=5, outlined=0)
    regions = read_regions(source / "glands", source)
    for scan in cohort_scans(load_cohort(source)):
        volume = load_scan(scan, segmenter.phases, segmenter.config, with_target=False,
                           glands=regions[scan.patient_id])
        gland_probability = probability_map(segmenter.network, volume.image, segmenter.config,
                                            torch.device("cpu"))[1]
        learned = gland_probability >= 0.5
        assert learned[volume.glands > 0].mean() >= 0.7  # the true glands fall in the learned region
        assert learned.mean() < 0.25  # which is not the whole scan


def test_a_blob_far_from_the_glands_is_suppressed_and_matching_says_why(trained_segmenter, tmp_path):
    from fusion_model.segment.predict import MATCHING_FILE, predict_masks
    from fusion_model.segment.scans import read_regions

    source = _phantom_cohort(tmp_path / "new", patients=6, seed=5, outlined=0, distractor=True)
    learned = predict_masks(trained_segmenter["run"].out, source, tmp_path / "learned", progress=False)
    assert learned.summary["gland_source"] == {"learned": 6}
    assert pd.read_csv(tmp_path / "learned/components.csv")["gland_distance_mm"].notna().all()
    # the glands given as TotalSegmentator outputs
    run = predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto",
                        regions=read_regions(source / "glands", source), progress=False)
    assert run.summary["gland_source"] == {"given": 6}
    matching = pd.read_csv(tmp_path / "auto" / MATCHING_FILE)
    assert list(matching["lesion_id"]) == [f"P{i:02d}-L1" for i in range(1, 7)]
    found = matching[matching["component"].notna()]
    # (the tiny test segmenter is less sure on the region's crop than on the whole scans it trained on)
    assert len(found) == run.found >= 2 and found["reason"].str.contains(r"mm from a gland").all()
    assert matching.loc[matching["component"].isna(), "reason"].str.startswith("no ").all()
    assert (matching["gland_source"] == "given").all() and learned.found >= 5


class _BrightIsLesion(torch.nn.Module):
    """A stand-in detector: lesion logits from the windowed intensity (bright = lesion), no gland output."""

    def forward(self, x):
        logit = (x[:, :1] - 0.58) * 40  # 45 HU: well above the noise of the background (0 +- 12 HU)
        return torch.cat([-logit, logit], dim=1)


def test_a_lesion_merged_with_an_organ_is_re_outlined_at_the_table_size(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.infer import segment_scan, reoutline_at_table_size
    from fusion_model.segment.scans import cohort_scans, lesion_queries, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=1, seed=3)
    image = sitk.ReadImage(str(root / "images/P01.nii.gz"))
    ct = sitk.GetArrayFromImage(image).astype(np.float32)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks/P01.nii.gz"))) > 0
    z, y, x = np.argwhere(lesion).mean(axis=0).round().astype(int)
    organ = np.zeros_like(lesion)
    organ[:, :, x:] = True  # a bright organ from the (left-sided) lesion's centre to the scan's edge: one blob
    organ[:, : y - 2] = False
    ct[organ] = 60.0
    out = sitk.GetImageFromArray(ct.astype(np.int16))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(root / "images/P01.nii.gz"))
    diameter = 2 * float((lesion.sum() * 8 / (4 / 3 * np.pi)) ** (1 / 3))  # mm, the sphere of its volume
    table = pd.read_csv(root / "clinical.csv")
    assert table.loc[0, "side"] == "left"
    table["size_mm"] = round(diameter, 1)
    table.to_csv(root / "clinical.csv", index=False)
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20, patch_voxels=(48, 48, 24), hu_window=(-100, 150),
                           min_component_mm3=40, refine_voxels=32, refine_test_time_flips=1)
    (scan,) = cohort_scans(load_cohort(root))
    volume = load_scan(scan, ["unenhanced"], config, with_target=True,
                       glands=read_regions(root / "glands", root)["P01"])
    found = segment_scan(_BrightIsLesion(), _BrightIsLesion(), volume, config, torch.device("cpu"), ["unenhanced"])
    queries = lesion_queries(scan)
    (blob,) = [c for c in found.components if c.volume_mm3 > 20 * lesion.sum()]
    matches = match_lesions(queries, found.components, 0.5, config.match_size_ratio, config.gland_margin_mm)
    assert matches[0].label is None and "and the table gives" in matches[0].refused[blob.label]
    split, matches = reoutline_at_table_size(_BrightIsLesion(), volume, found, queries, matches, 0.5, config,
                                     torch.device("cpu"), ["unenhanced"])
    (match,) = matches
    assert match.label is not None and "re-outlined at the table's size inside component" in match.reason
    new = next(c for c in split.components if c.label == match.label)
    assert new.diameter_mm <= config.match_size_ratio * queries[0].size_mm
    taken = split.labels == match.label
    assert not (taken & (found.labels != 0) & (found.labels != blob.label)).any()  # from the blob (or background)
    assert sorted(c.label for c in split.components) == list(range(1, len(split.components) + 1))
    rest = next(c for c in split.components if c.label == blob.label)
    assert rest.volume_mm3 == pytest.approx(((split.labels == blob.label).sum()) * 8)  # the blob keeps the rest
    assert (taken & lesion).sum() > 0.8 * lesion.sum()  # the lesion comes out (a stand-in refiner: with some organ)


class _BrighterThan(torch.nn.Module):
    """A stand-in refiner that outlines only what is brighter than ``hu`` (in the window -100..150 HU)."""

    def __init__(self, hu: float):
        super().__init__()
        self.level = (hu + 100) / 250

    def forward(self, x):
        logit = (x[:, :1] - self.level) * 40
        return torch.cat([-logit, logit], dim=1)


@pytest.mark.parametrize("confirms", [True, False])
def test_the_refiner_confirms_a_lesion_and_rejects_what_it_does_not_outline(tmp_path, confirms):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.infer import segment_scan
    from fusion_model.segment.scans import cohort_scans, load_scan

    root = _phantom_cohort(tmp_path / "c", patients=1, seed=3, glands=False, distractor=True)
    image = sitk.ReadImage(str(root / "images/P01.nii.gz"))
    ct = sitk.GetArrayFromImage(image).astype(np.float32)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks/P01.nii.gz"))) > 0
    ct[lesion] += 100.0  # the lesion at 160 HU, the distractor (a 'normal gland') at 60 HU: both bright to the detector
    out = sitk.GetImageFromArray(ct.astype(np.int16))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(root / "images/P01.nii.gz"))
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20, patch_voxels=(48, 48, 24), hu_window=(-100, 150),
                           min_component_mm3=40, refine_voxels=32, refine_test_time_flips=1,
                           refine_soft_tissue_window=None, refine_confirms=confirms)
    (scan,) = cohort_scans(load_cohort(root))
    volume = load_scan(scan, ["unenhanced"], config, with_target=True)
    found = segment_scan(_BrightIsLesion(), _BrighterThan(110.0), volume, config, torch.device("cpu"),
                         ["unenhanced"])
    distractor = sphere_mask(lesion.shape, *DISTRACTOR) > 0
    by_place = {("lesion" if (found.labels == c.label)[lesion].any() else
                 "distractor" if (found.labels == c.label)[distractor].any() else "other"): c for c in found.components}
    kept, rejected = by_place["lesion"], by_place["distractor"]
    assert [c.label for c in found.components] == list(range(1, len(found.components) + 1))
    assert [c.probability for c in found.components] == sorted((c.probability for c in found.components),
                                                               reverse=True)
    assert kept.detector_probability > 0.99 and rejected.detector_probability > 0.99  # the detector takes both
    assert kept.refiner_confidence > 0.99 and rejected.refiner_confidence < 0.3
    assert (found.labels == rejected.label)[distractor].mean() > 0.5  # outlined by nothing: it keeps its voxels
    if confirms:
        assert kept.label == 1 and kept.probability > 0.99
        assert rejected.probability == pytest.approx(rejected.detector_probability * rejected.refiner_confidence)
        assert rejected.probability < 0.3  # below matching's 0.5: no table row can take it
    else:
        assert kept.probability == kept.detector_probability and rejected.probability > 0.99


class _BrightestOnly(torch.nn.Module):
    """A stand-in detector that finds only the brightest part of a lesion (above 100 HU)."""

    def forward(self, x):
        logit = (torch.nn.functional.avg_pool3d(x[:, :1], 3, stride=1, padding=1) - 0.8) * 40
        return torch.cat([-logit, logit], dim=1)


def _partly_found_lesion(tmp_path, core_radius_voxels: float):
    """A one-patient cohort whose lesion (28 mm across, size_mm 28 in the table) has a brighter core, segmented by
    a detector that finds the core only (no refiner): the lesion mask, scan, volume, config and SegmentedScan."""
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.infer import segment_scan
    from fusion_model.segment.scans import cohort_scans, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=1, seed=3)
    image = sitk.ReadImage(str(root / "images/P01.nii.gz"))
    centre = tuple(np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks/P01.nii.gz")))).mean(axis=0)
                   .round().astype(int))
    lesion = sphere_mask((24, 48, 48), centre, 7.0) > 0
    core = sphere_mask((24, 48, 48), centre, core_radius_voxels) > 0
    ct = np.where(core, 160.0, np.where(lesion, 60.0, 0.0)) + np.random.default_rng(0).normal(0, 12, lesion.shape)
    for array, path in ((ct.astype(np.int16), "images/P01.nii.gz"), (lesion.astype(np.uint8), "masks/P01.nii.gz")):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(root / path))
    table = pd.read_csv(root / "clinical.csv")
    table["size_mm"] = 28.0
    table.to_csv(root / "clinical.csv", index=False)
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20, patch_voxels=(48, 48, 24), hu_window=(-100, 150),
                           min_component_mm3=20, refine_voxels=32, refine_test_time_flips=1, refine=False)
    (scan,) = cohort_scans(load_cohort(root))
    volume = load_scan(scan, ["unenhanced"], config, with_target=True,
                       glands=read_regions(root / "glands", root)["P01"])
    found = segment_scan(_BrightestOnly(), None, volume, config, torch.device("cpu"), ["unenhanced"])
    return lesion, scan, volume, config, found


def test_a_lesion_only_partly_found_is_re_outlined_at_the_table_size(tmp_path):
    from fusion_model.segment.infer import reoutline_at_table_size
    from fusion_model.segment.scans import lesion_queries

    lesion, scan, volume, config, found = _partly_found_lesion(tmp_path, core_radius_voxels=2.0)  # an 8 mm core
    (part,) = found.components
    assert part.diameter_mm * config.match_size_ratio < 28  # the detector found a small part only
    queries = lesion_queries(scan)
    matches = match_lesions(queries, found.components, 0.5, config.match_size_ratio, config.gland_margin_mm)
    assert matches[0].label is None and "and the table gives 28" in matches[0].refused[part.label]
    grown, matches = reoutline_at_table_size(_BrightIsLesion(), volume, found, queries, matches, 0.5, config,
                                             torch.device("cpu"), ["unenhanced"])
    (match,) = matches
    assert match.label is not None and "re-outlined at the table's size around component" in match.reason
    taken = grown.labels == match.label
    assert 2 * (taken & lesion).sum() / (taken.sum() + lesion.sum()) > 0.8  # the whole lesion comes out
    assert [c.label for c in grown.components] == [1]


def test_a_components_apparent_size_is_its_extent_or_its_volumes_sphere_when_smaller():
    from fusion_model.segment.infer import apparent_size_mm

    ball = Component(1, np.pi / 6 * 30.0**3, 1.0, (0.0, 0.0, 0.0), "right", 30.0)
    assert apparent_size_mm(ball) == pytest.approx(30.0)
    sliver = Component(1, 2200.0, 1.0, (0.0, 0.0, 0.0), "right", 29.0)  # 29 mm along a lesion's edge, 2.2 mL
    assert apparent_size_mm(sliver) == pytest.approx(16.1, abs=0.1)
    assert apparent_size_mm(Component(1, np.pi / 6 * 8.0**3, 1.0, (0.0, 0.0, 0.0), "right")) == pytest.approx(8.0)


def test_a_matched_lesion_found_only_in_part_is_regrown_at_the_table_size(tmp_path):
    from fusion_model.segment.infer import apparent_size_mm, regrow_undersized
    from fusion_model.segment.scans import lesion_queries

    lesion, scan, volume, config, found = _partly_found_lesion(tmp_path, core_radius_voxels=4.0)  # a 16 mm core
    (part,) = found.components
    assert 28 / config.match_size_ratio < apparent_size_mm(part) < 28 / config.regrow_undersized_ratio  # matched
    queries = lesion_queries(scan)
    matches = match_lesions(queries, found.components, 0.5, config.match_size_ratio, config.gland_margin_mm)
    assert matches[0].label == part.label

    def dice(labels, label):
        taken = labels == label
        return 2 * (taken & lesion).sum() / (taken.sum() + lesion.sum())

    assert dice(found.labels, part.label) < 0.5
    grown, regrown = regrow_undersized(_BrightIsLesion(), volume, found, queries, matches, config,
                                       torch.device("cpu"), ["unenhanced"])
    (match,) = regrown
    assert match.label == part.label and "re-outlined at the table's size around it" in match.reason
    assert match.reason.startswith(matches[0].reason)
    assert dice(grown.labels, part.label) > 0.8  # the whole lesion comes out
    assert (grown.labels[found.labels == part.label] == part.label).all()  # holding what was found
    (component,) = grown.components
    assert component.volume_mm3 == pytest.approx((grown.labels == part.label).sum() * 8)
    assert abs(component.diameter_mm - 28) < abs(part.diameter_mm - 28)
    # off: nothing changes; a component near its table size is left as found
    same, kept = regrow_undersized(_BrightIsLesion(), volume, found, queries, matches,
                                   config.model_copy(update={"regrow_undersized_ratio": None}),
                                   torch.device("cpu"), ["unenhanced"])
    assert same is found and kept == matches
    near = [LesionQuery(queries[0].side, part.diameter_mm * 1.2)]
    same, kept = regrow_undersized(_BrightIsLesion(), volume, found, near, matches, config, torch.device("cpu"),
                                   ["unenhanced"])
    assert (same.labels == found.labels).all() and kept == matches


def test_components_far_from_the_glands_are_suppressed(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.infer import segment_scan
    from fusion_model.segment.scans import cohort_scans, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=2, distractor=True)
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20, patch_voxels=(48, 48, 24), hu_window=(-100, 150),
                           min_component_mm3=40)
    regions = read_regions(root / "glands", root)
    for scan in cohort_scans(load_cohort(root)):
        volume = load_scan(scan, ["unenhanced"], config, with_target=True, glands=regions[scan.patient_id])
        found = segment_scan(_BrightIsLesion(), None, volume, config, torch.device("cpu"), ["unenhanced"])
        assert found.gland_source == "given"
        (blob,) = found.suppressed
        assert blob.volume_mm3 == pytest.approx(8 * (sphere_mask((24, 48, 48), *DISTRACTOR) > 0).sum(), rel=0.2)
        assert 22 < blob.gland_distance_mm < 31 and blob.label == 0  # about 26 mm by hand
        (lesion,) = found.components
        assert lesion.label == 1 and lesion.gland_distance_mm <= 15
        assert set(np.unique(found.labels)) == {0, 1}  # the suppressed blob is not in the label array
        assert 2 * ((found.labels == 1) & volume.lesion_masks[0]).sum() / (
            (found.labels == 1).sum() + volume.lesion_masks[0].sum()) > 0.8
        # without glands nothing is checked or suppressed
        plain = load_scan(scan, ["unenhanced"], config, with_target=False)
        unchecked = segment_scan(_BrightIsLesion(), None, plain, config, torch.device("cpu"), ["unenhanced"])
        assert unchecked.gland_source is None and not unchecked.suppressed and len(unchecked.components) == 2
        assert all(c.gland_distance_mm is None for c in unchecked.components)


def test_unfound_lesions_are_counted_by_label_and_type(trained_segmenter, tmp_path):
    from fusion_model.segment.predict import predict_masks

    source = _phantom_cohort(tmp_path / "new", patients=4, seed=5, outlined=0)
    table = pd.read_csv(source / "clinical.csv")
    table["size_mm"] = 200.0  # no component is anywhere near that size (nor a fifth of it): nothing may be taken
    table.to_csv(source / "clinical.csv", index=False)
    run = predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto", progress=False)
    assert run.found == 0
    assert run.summary["unscored"] == {"count": 4, "by_label": {"0": 2, "1": 2},
                                       "by_lesion_type": {"adenoma": 2, "metastasis": 2}}
    not_found = pd.read_csv(tmp_path / "auto/not_found.csv")
    assert list(not_found.columns) == ["lesion_id", "patient_id", "row", "side", "label", "lesion_type", "reason"]
    assert not_found["reason"].str.contains("and the table gives 200 mm").all()


def test_predict_refuses_other_phases_and_spacing(trained_segmenter, tmp_path):
    from fusion_model.segment.predict import predict_masks

    model = trained_segmenter["run"].out
    venous_only = _phantom_cohort(tmp_path / "venous", patients=2)
    spec = json.loads((venous_only / "cohort.json").read_text())
    (venous_only / "cohort.json").write_text(json.dumps({**spec, "phases": ["venous"]}))
    table = pd.read_csv(venous_only / "clinical.csv").rename(columns={"unenhanced_path": "venous_path"})
    table.to_csv(venous_only / "clinical.csv", index=False)
    with pytest.raises(UserInputError, match=r"trained on phases \['unenhanced'\]"):
        predict_masks(model, venous_only, tmp_path / "out1", progress=False)
    coarse = _phantom_cohort(tmp_path / "coarse", patients=2, shape=(4, 12, 12), spacing=(8.0, 8.0, 8.0))
    with pytest.raises(UserInputError, match="far outside the segmenter's training range"):
        predict_masks(model, coarse, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_a_killed_training_resumes_where_it_stopped(tmp_path):
    from safetensors.torch import load_file

    from fusion_model.segment.train import train_segmenter

    cohort = _phantom_cohort(tmp_path / "c", patients=6, seed=2)
    config = SegmentConfig(**{**TINY_SEGMENTER, "epochs": 3, "iterations_per_epoch": 2, "refine_epochs": 2})
    whole = train_segmenter(cohort, tmp_path / "whole", config, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(record):
        if record["stage"] == "detector" and record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_segmenter(cohort, tmp_path / "resumed", config, progress=False, on_epoch=kill_after_first_epoch)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.checkpoint.pt").is_file()
    resumed = train_segmenter(cohort, tmp_path / "resumed", config, progress=False)
    assert resumed.figures["resumed_from_epoch"] == 1
    for name in ("segmenter.safetensors", "refiner.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "resumed" / name))
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert resumed.segmenter.threshold == whole.segmenter.threshold


def test_cli_segment_errors_are_one_line(tmp_path):
    from tests.test_cli import run_cli

    root = _phantom_cohort(tmp_path / "c", patients=3, outlined=0)
    result = run_cli("segment", "train", "--cohort", root, "--out", tmp_path / "seg")
    assert result.returncode == 2
    assert "no lesion has a mask" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("segment", "predict", "--model", tmp_path / "nothing", "--cohort", root, "--out", tmp_path / "o")
    assert result.returncode == 2 and "not a segmenter" in result.stderr


def test_cohort_rows_without_masks_are_listed_not_dropped(tmp_path):
    from fusion_model.cohort import load_cohort, validate_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.imaging.cache import ImageCache

    root = _phantom_cohort(tmp_path / "c", patients=4, outlined=2)
    report = validate_cohort(root, progress=False)
    assert report.ok and report.summary["mask_sources"] == {"manual": 2, "none": 2}
    assert sum("not outlined yet" in p.message for p in report.problems) == 2
    cohort = load_cohort(root)
    images = cohort.images(PreprocessConfig(spacing_mm=4, crop_size_mm=32), ImageCache(tmp_path / "cache"),
                           progress=False)
    assert images.lesion_ids == ["P01-L1", "P02-L1"]
    assert [e.lesion_id for e in images.errors] == ["P03-L1", "P04-L1"]
    assert "segment predict" in images.errors[0].message
    with pytest.raises(UserInputError, match=r"2 lesion\(s\) have no mask_path \(rows 4 \(P03-L1\), 5 \(P04-L1\)\)"):
        cohort.images(PreprocessConfig(spacing_mm=4, crop_size_mm=32), ImageCache(tmp_path / "cache"), strict=True,
                      progress=False)


def test_predict_writes_dicom_seg_for_dicom_images(trained_segmenter, tmp_path):
    """A cohort of DICOM series gets a DICOM SEG per scan beside the NIfTI masks; read back with highdicom onto
    the CT grid, it holds the same lesion voxels."""
    from fusion_model.imaging.dicom_masks import read_dicom_mask
    from fusion_model.imaging.io import read_image, write_dicom_series
    from fusion_model.segment.predict import predict_masks

    root = _phantom_cohort(tmp_path / "nifti", patients=2, seed=5, outlined=0)
    table = pd.read_csv(root / "clinical.csv")
    for i, row in table.iterrows():
        series = write_dicom_series(sitk.ReadImage(str(root / row["unenhanced_path"])),
                                    root / f"images/{row['patient_id']}_ct")
        table.loc[i, "unenhanced_path"] = series.relative_to(root).as_posix()
    table.to_csv(root / "clinical.csv", index=False)
    run = predict_masks(trained_segmenter["run"].out, root, tmp_path / "auto", progress=False)
    assert run.dicom_seg_files == run.found >= 1
    auto = pd.read_csv(tmp_path / "auto/clinical.csv")
    for _, row in auto.dropna(subset=["mask_path"]).iterrows():
        ct = read_image(tmp_path / "auto" / row["unenhanced_path"])
        seg = tmp_path / "auto/masks" / f"{row['patient_id']}_auto_seg.dcm"
        from_seg = sitk.GetArrayFromImage(read_dicom_mask(seg, int(row["mask_label"]), ct)) > 0
        from_nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "auto" / row["mask_path"]))) == \
            row["mask_label"]
        assert from_seg.any() and np.array_equal(from_seg, from_nifti)


def test_regions_from_boxes_or_organ_masks(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.scans import cohort_scans, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=2)
    organ = np.zeros((24, 48, 48), np.uint8)
    organ[10:14, 20:30, 30:40] = 7  # an adrenal label of an organ segmentation
    sitk.WriteImage(to_image(organ, (2.0, 2.0, 2.0)), str(root / "masks/P02_organs.nii.gz"))
    (root / "regions.csv").write_text("patient_id,x_min_mm,x_max_mm,y_min_mm,y_max_mm,z_min_mm,z_max_mm,"
                                      "region_mask_path\nP01,10,20,10,20,10,20,\nP02,,,,,,,masks/P02_organs.nii.gz\n")
    regions = read_regions(root / "regions.csv", root)
    assert regions["P01"].box_mm == (10.0, 20.0, 10.0, 20.0, 10.0, 20.0)
    scan = cohort_scans(load_cohort(root))[1]
    volume = load_scan(scan, ["unenhanced"], SegmentConfig(spacing_mm=2.0, min_extent_mm=20), with_target=False,
                       region=regions["P02"])
    # the organ's box (x 60-78 mm, y 40-58 mm, z 20-26 mm) + 20 mm, clipped to the scan (0-94 mm, 0-46 mm in z)
    assert volume.grid.GetOrigin() == pytest.approx((40.0, 20.0, 0.0))
    assert volume.image.shape[1:] == (24, 30, 28)
    (root / "bad.csv").write_text("patient_id,x_min_mm,x_max_mm,y_min_mm,y_max_mm,z_min_mm,z_max_mm\nP01,20,10,0,5,0,5\n")
    with pytest.raises(UserInputError, match=r"bad\.csv row 2: box .* each \*_min_mm must be below"):
        read_regions(root / "bad.csv", root)
    (root / "none.csv").write_text("patient_id,centre\nP01,A\n")
    with pytest.raises(UserInputError, match="give the box columns"):
        read_regions(root / "none.csv", root)


def test_regions_from_totalsegmentator_outputs(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.scans import GLAND_LEFT, GLAND_RIGHT, cohort_scans, gland_map, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=3)
    scans = cohort_scans(load_cohort(root))
    # the folder layout TotalSegmentator writes: PATIENT/adrenal_gland_right.nii.gz and _left
    regions = read_regions(root / "glands", root)
    assert set(regions) == {"P01", "P02", "P03"} and regions["P01"].has_glands
    glands = gland_map(regions["P01"], sitk.ReadImage(str(root / "images/P01.nii.gz")), "P01")
    assert (glands[GLAND_BOXES["right"]] == GLAND_RIGHT).all() and (glands[GLAND_BOXES["left"]] == GLAND_LEFT).all()
    volume = load_scan(scans[0], ["unenhanced"], SegmentConfig(spacing_mm=2.0, min_extent_mm=20), with_target=False,
                       region=regions["P01"])
    assert volume.glands is not None and set(np.unique(volume.glands)) == {0, GLAND_RIGHT, GLAND_LEFT}
    # its multi-label file ('total' task: 8 right, 9 left), and the same with a label map of other values
    multi = tmp_path / "multi"
    multi.mkdir()
    labels = np.zeros((24, 48, 48), np.uint8)
    labels[GLAND_BOXES["right"]], labels[GLAND_BOXES["left"]], labels[0:3] = 8, 9, 5  # 5: liver
    for pid in ("P01", "P02"):
        sitk.WriteImage(to_image(labels, (2.0, 2.0, 2.0)), str(multi / f"{pid}.nii.gz"))
    regions = read_regions(multi, root)
    glands = gland_map(regions["P02"], sitk.ReadImage(str(root / "images/P02.nii.gz")), "P02")
    assert (glands > 0).sum() == 2 * 6 * 8 * 4 and (glands[GLAND_BOXES["left"]] == GLAND_LEFT).all()
    (multi / "labels.json").write_text(json.dumps({"3": "adrenal_gland_right", "4": "adrenal_gland_left"}))
    with pytest.raises(UserInputError, match=r"no adrenal-gland voxel \(labels \[3, 4\]; give the file's label map"):
        gland_map(read_regions(multi, root)["P01"], sitk.ReadImage(str(root / "images/P01.nii.gz")), "P01")
    (multi / "labels.json").write_text("{not json")
    with pytest.raises(UserInputError, match="labels.json: not a JSON label map"):
        read_regions(multi, root)
    (multi / "labels.json").write_text(json.dumps({"liver": 5}))
    with pytest.raises(UserInputError, match="names neither adrenal_gland_right nor adrenal_gland_left"):
        read_regions(multi, root)
    # a patient folder without gland files, an empty folder
    (tmp_path / "ts" / "P01").mkdir(parents=True)
    (tmp_path / "ts/P01/liver.nii.gz").write_bytes(b"")
    (tmp_path / "ts/P01/spleen.nii.gz").write_bytes(b"")
    with pytest.raises(UserInputError, match="holds no adrenal_gland_right / adrenal_gland_left file"):
        read_regions(tmp_path / "ts", root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no patient folder or file"):
        read_regions(tmp_path / "empty", root)


def test_cli_segment_predict_and_evaluate(trained_segmenter, tmp_path):
    from typer.testing import CliRunner

    from fusion_model.cli import app

    model = trained_segmenter["run"].out
    cohort = _phantom_cohort(tmp_path / "c", patients=3, seed=11)
    runner = CliRunner()
    result = runner.invoke(app, ["segment", "predict", "--model", str(model), "--cohort", str(cohort), "--out",
                                 str(tmp_path / "auto"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "outlined" in result.output and (tmp_path / "auto/clinical.csv").is_file()
    result = runner.invoke(app, ["segment", "evaluate", "--model", str(model), "--cohort", str(cohort), "--out",
                                 str(tmp_path / "report"), "--centre", "A"])
    assert result.exit_code == 0, result.output
    assert "Dice median" in result.output and (tmp_path / "report/report.html").is_file()
    assert json.loads((tmp_path / "report/metrics.json").read_text(encoding="utf-8"))["centre"] == "A"


def test_automatic_masks_against_manual_ones(trained_segmenter, tmp_path):
    """segment predict keeps the input's own masks as the second reader: agreement measures auto vs manual."""
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.cohort import validate_cohort
    from fusion_model.segment.predict import MANUAL_MASKS, predict_masks

    source = _phantom_cohort(tmp_path / "src", patients=5, seed=8, outlined=5)
    predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto", progress=False)
    assert validate_cohort(tmp_path / "auto", progress=False).ok
    table = pd.read_csv(tmp_path / "auto/clinical.csv")
    assert table["mask_path_b"].str.startswith(MANUAL_MASKS + "/").all()
    result = run_agreement(tmp_path / "auto", tmp_path / "r", AgreementSettings(), progress=False)
    dice = result.metrics["comparisons"][0]["segmentation"]["dice"]
    found = int(table["mask_path"].notna().sum())
    assert result.metrics["lesions_compared"] == found and dice["mean"] > 0.5


def test_data_parallel_training_with_torchrun_follows_the_single_process_loss_curve(tmp_path):
    """Two processes (gloo, on the CPU) each stepping on half of every global batch, gradients averaged by
    DistributedDataParallel: the same loss curve as one process on the whole batch, the same early stopping."""
    import os
    import subprocess
    import sys

    import yaml

    cohort = _phantom_cohort(tmp_path / "cohort", patients=6, seed=3)
    settings = {**TINY_SEGMENTER, "epochs": 2, "iterations_per_epoch": 3, "refine_epochs": 2, "threads": 1,
                "validate_every": 1}
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(settings))
    common = ["-m", "fusion_model.cli", "segment", "train", "--cohort", str(cohort), "--config",
              str(tmp_path / "seg.yaml"), "--device", "cpu"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True,
                         encoding="utf-8", env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *common, "--out", str(tmp_path / "two")], capture_output=True, encoding="utf-8", env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # the leader reports and writes, once
    history = {name: json.loads((tmp_path / name / "segmenter.json").read_text())["history"]
               for name in ("one", "two")}
    for stage in ("detector", "refiner"):
        single = [e["train_loss"] for e in history["one"][stage]]
        parallel = [e["train_loss"] for e in history["two"][stage]]
        assert len(single) == len(parallel) > 1
        # each of the two processes stepped on half of the batch the single one stepped on
        assert {(e["processes"], e["patches_per_process"]) for e in history["one"][stage]} == {(1, 4)}
        assert {(e["processes"], e["patches_per_process"]) for e in history["two"][stage]} == {(2, 2)}
        assert parallel == pytest.approx(single, rel=1e-4)
        assert [e["val_dice"] for e in history["two"][stage]] == pytest.approx(
            [e["val_dice"] for e in history["one"][stage]], rel=1e-3)


def test_segment_train_gpus_is_refused_without_them(tmp_path):
    from tests.helpers import write_cohort
    from tests.test_cli import run_cli

    cohort = write_cohort(tmp_path / "c", n_lesions=2)  # a cohort that loads: it is checked first
    result = run_cli("segment", "train", "--cohort", cohort, "--out", tmp_path / "s", "--gpus", "2")
    assert result.returncode == 2 and "CUDA device(s) visible" in result.stderr and "Traceback" not in result.stderr
