import json

import numpy as np
import pandas as pd
import pytest

from clinical_schema import ExtraFeature, validate_clinical_table
from clinical_schema.export import data_dictionary_markdown, to_json_schema


def table(**overrides):
    base = {
        "patient_id": ["P1", "P2", "P3"], "lesion_id": ["L1", "L2", "L3"], "centre": ["A", "A", "B"],
        "label": ["0", "1", "0"], "mask_path": ["m1", "m2", "m3"],
        "size_mm": ["21", "45.5", ""], "unenhanced_hu": ["5", "35", ""],
        "cortisol_post_dst_ug_dl": ["1.2", "", "3.4"], "sex": ["F", "M", "F"],
    }
    base.update(overrides)
    return pd.DataFrame(base, dtype=str)


def problems_at(result, column):
    return [(p.row, p.lesion_id, p.value, p.check) for p in result.problems if p.column == column]


def test_valid_table_passes_and_keeps_missing_as_nan():
    result = validate_clinical_table(table(), require_label=True)
    assert result.ok, result.problems
    assert np.isnan(result.table.loc[1, "cortisol_post_dst_ug_dl"])
    assert result.table["size_mm"].dtype == "float64"


@pytest.mark.parametrize("column, values, bad_row, expected_check", [
    ("size_mm", ["21", "-4", "30"], 3, "> 0"),
    ("size_mm", ["21", "400", "30"], 3, "<= 300"),
    ("unenhanced_hu", ["5", "35", "999"], 4, "<= 200"),
    ("age_years", ["50", "abc", "60"], 3, "readable as a number"),
    ("sex", ["F", "X", "M"], 3, "one of: F, M"),
    ("lesion_type", ["adenoma", "tumour", "cyst"], 3, "one of: adenoma"),
    ("potassium_mmol_l", ["4.1", "4.0", "12"], 4, "<= 9.0"),
    ("label", ["0", "2", "1"], 3, "readable as 0/1 or benign/malignant"),
    ("hypertension", ["yes", "maybe", "no"], 3, "readable as yes/no"),
])
def test_each_check_names_row_lesion_and_column(column, values, bad_row, expected_check):
    result = validate_clinical_table(table(**{column: values}))
    found = problems_at(result, column)
    assert len(found) == 1, result.problems
    row, lesion_id, value, check = found[0]
    assert row == bad_row and lesion_id == f"L{bad_row - 1}"
    assert check.startswith(expected_check)
    assert f"row {bad_row}" in result.problems[0].message() or any(
        f"row {bad_row}" in p.message() for p in result.problems)


def test_all_failures_reported_at_once():
    result = validate_clinical_table(table(size_mm=["-1", "x", "500"], sex=["F", "Q", "M"]))
    assert len(result.problems) == 4
    frame = result.problems_frame()
    assert list(frame.columns) == ["row", "lesion_id", "column", "value", "check", "hint"]
    assert frame["row"].tolist() == [2, 3, 3, 4]


def test_zero_lab_value_is_refused_with_a_hint():
    result = validate_clinical_table(table(cortisol_post_dst_ug_dl=["0", "", "1"]))
    (problem,) = result.problems
    assert problem.row == 2 and "left empty, not 0" in problem.hint


def test_duplicate_lesion_id_and_empty_required_cell():
    result = validate_clinical_table(table(lesion_id=["L1", "L1", "L3"], centre=["A", "", "B"]))
    checks = {(p.column, p.check) for p in result.problems}
    assert ("lesion_id", "unique") in checks and ("centre", "not empty") in checks


def test_missing_label_only_an_error_when_required():
    t = table(label=["0", "", "1"])
    assert validate_clinical_table(t).ok
    result = validate_clinical_table(t, require_label=True)
    assert [(p.row, p.column) for p in result.problems] == [(3, "label")]


def test_missing_required_column():
    result = validate_clinical_table(table().drop(columns=["centre"]))
    assert [(p.column, p.check) for p in result.problems] == [("centre", "required column")]


@pytest.mark.parametrize("column, raw, expected", [
    ("sex", ["female", "M", " male "], ["F", "M", "M"]),
    ("hypertension", ["Yes", "false", "1"], [True, False, True]),
    ("bilateral", ["0", "TRUE", "n"], [False, True, False]),
    ("label", ["benign", "Malignant", "1"], [0, 1, 1]),
    ("side", ["L", "right", "R"], ["left", "right", "right"]),
    ("lesion_type", ["ACC", "Pheo", "Adrenocortical carcinoma"],
     ["adrenocortical_carcinoma", "pheochromocytoma", "adrenocortical_carcinoma"]),
])
def test_common_spellings_are_coerced(column, raw, expected):
    result = validate_clinical_table(table(**{column: raw}))
    assert result.ok, result.problems
    assert result.table[column].tolist() == expected


def test_empty_like_cells_become_missing():
    result = validate_clinical_table(table(hypertension=["", "NA", "n/a"], age_years=["", "NaN", "61"]))
    assert result.ok
    assert result.table["hypertension"].isna().all()
    assert result.table["age_years"].isna().tolist() == [True, True, False]


def test_undeclared_columns_are_named_and_declared_extras_accepted():
    t = table(ki67_percent=["5", "40", ""], age_year=["1", "2", "3"])
    result = validate_clinical_table(t)
    named = {p.column: p.hint for p in result.problems}
    assert set(named) == {"ki67_percent", "age_year"}
    assert "cohort.json" in named["ki67_percent"] and "age_years" in named["age_year"]

    extra = [ExtraFeature(name="ki67_percent", unit="%", min=0, max=100)]
    result = validate_clinical_table(t.drop(columns=["age_year"]), extra)
    assert result.ok and result.table["ki67_percent"].tolist()[:2] == [5.0, 40.0]
    result = validate_clinical_table(table(ki67_percent=["5", "140", ""]), extra)
    assert [(p.row, p.column, p.check) for p in result.problems] == [(3, "ki67_percent", "<= 100.0")]


def test_json_schema_export_matches_the_model():
    schema = to_json_schema([ExtraFeature(name="ki67_percent", unit="%", min=0, max=100)])
    json.dumps(schema)
    props = schema["properties"]
    assert props["size_mm"]["exclusiveMinimum"] == 0 and props["size_mm"]["x-unit"] == "mm"
    assert props["sex"]["enum"] == ["F", "M", None]
    assert props["ki67_percent"]["maximum"] == 100
    assert set(schema["required"]) == {"patient_id", "lesion_id", "centre", "mask_path"}
    assert schema["additionalProperties"] is False


def test_data_dictionary_lists_every_column_with_units():
    text = data_dictionary_markdown()
    for column, unit in [("cortisol_post_dst_ug_dl", "ug/dL"), ("size_mm", "mm"), ("unenhanced_hu", "HU"),
                         ("potassium_mmol_l", "mmol/L"), ("plasma_metanephrines_xuln", "x ULN")]:
        line = next(line for line in text.splitlines() if f"`{column}`" in line)
        assert unit in line
