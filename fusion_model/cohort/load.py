"""Loading a cohort directory: spec, validated table, and one record per lesion.

Loading reads only cohort.json and clinical.csv; volumes are read one lesion at a time by
whoever needs them (validation, preprocessing, features), never all at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from clinical_schema import PATH_COLUMNS, validate_clinical_table
from clinical_schema.coercion import NA_STRINGS
from fusion_model.cohort.spec import TABLE_FILE, CohortSpec, read_cohort_spec
from fusion_model.config import PreprocessConfig
from fusion_model.errors import CohortValidationError, UserInputError
from fusion_model.imaging.cache import ImageCache
from fusion_model.records import LesionRecord

if TYPE_CHECKING:  # reading images needs SimpleITK: imported when images() is called
    from fusion_model.imaging.extract import CohortImages


DELIMITERS = (",", ";", "\t")
_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")


def csv_delimiter(path: Path) -> str:
    """The delimiter of a CSV file's header line: comma, or the semicolon (or tab) that spreadsheet
    software writes in much of Europe."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline()
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: is not UTF-8 text ({err.reason}); save it as CSV UTF-8") from None
    counts = {d: header.count(d) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: (counts[d], d == ","))


def read_clinical_csv(path: Path) -> pd.DataFrame:
    """Every cell as text (coercion belongs to the schema); empty-like cells as missing.

    Comma-, semicolon- and tab-separated files are read alike; in a semicolon-separated file a decimal
    comma (``3,5``) is read as a decimal point, as the spreadsheet that wrote it meant.
    """
    if not Path(path).is_file():
        raise UserInputError(f"{path}: not found; the cohort's clinical table must be a CSV with one row per lesion")
    na_values = sorted(NA_STRINGS | {s.upper() for s in NA_STRINGS} | {s.title() for s in NA_STRINGS})
    delimiter = csv_delimiter(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=na_values, skipinitialspace=True,
                            sep=delimiter, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: cannot be parsed as CSV ({str(err).strip()})") from None
    except pd.errors.EmptyDataError:
        raise UserInputError(f"{path}: is empty; it needs a header row and one row per lesion") from None
    if delimiter == ";":
        table = table.apply(lambda col: col.map(
            lambda v: v.replace(",", ".") if isinstance(v, str) and _DECIMAL_COMMA.match(v) else v))
    return table


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """Resolve a path from the table; it must stay inside the cohort directory."""
    rel = Path(relative)
    if rel.is_absolute():
        raise UserInputError(f"{what}: path {relative!r} is absolute; give it relative to the cohort directory")
    root_resolved = root.resolve()
    resolved = (root_resolved / rel).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise UserInputError(
            f"{what}: path {relative!r} leads outside the cohort directory; copy the file into the cohort"
        )
    return resolved


@dataclass
class Cohort:
    """A loaded cohort directory: its spec, its schema-checked table, and the lesions' file records."""

    root: Path
    spec: CohortSpec
    table: pd.DataFrame
    lines: list[int] | None = None  # line in clinical.csv of each table row (default: position + 2)

    def subset(self, lesion_ids) -> "Cohort":
        """The same cohort restricted to some lesions; error messages keep the original line numbers."""
        keep = self.table["lesion_id"].isin(list(lesion_ids)).to_numpy()
        lines = [self.line_of(i) for i in range(len(self.table)) if keep[i]]
        return Cohort(self.root, self.spec, self.table[keep].reset_index(drop=True), lines)

    def select(self, centre: str | None = None, split: str | None = None) -> "Cohort":
        """The cohort restricted to one centre and/or one value of its split column."""
        keep = self.table["lesion_id"].notna()
        for column, value, what in (("centre", centre, "centres"), ("split", split, "splits")):
            if value is None:
                continue
            present = sorted(self.table[column].dropna().unique()) if column in self.table else []
            if value not in present:
                raise UserInputError(f"{column} {value!r} is not in {self.root / TABLE_FILE}; {what}: {present}")
            keep &= self.table[column] == value
        return self if keep.all() else self.subset(self.table["lesion_id"][keep])

    def line_of(self, row_index: int) -> int:
        """The line of clinical.csv (header = 1) that holds table row ``row_index``."""
        return self.lines[row_index] if self.lines is not None else row_index + 2

    @property
    def has_labels(self) -> bool:
        """Whether every lesion has a benign/malignant label."""
        return "label" in self.table and self.table["label"].notna().all()

    def lesion(self, row_index: int) -> LesionRecord:
        """The file record of the lesion in this table row (paths resolved inside the cohort)."""
        row = self.table.iloc[row_index]
        line = self.line_of(row_index)
        where = f"{TABLE_FILE} row {line} (lesion {row['lesion_id']})"
        phase_paths = {}
        for phase in self.spec.phases:
            value = row.get(PATH_COLUMNS[phase])
            if value is not None and not pd.isna(value):
                phase_paths[phase] = resolve_inside(self.root, str(value), f"{where}, column {PATH_COLUMNS[phase]!r}")
        mask_label = row.get("mask_label")
        label = row.get("label")
        return LesionRecord(
            lesion_id=str(row["lesion_id"]),
            patient_id=str(row["patient_id"]),
            centre=str(row["centre"]),
            row=line,
            mask_path=None if pd.isna(row.get("mask_path")) else
            resolve_inside(self.root, str(row["mask_path"]), f"{where}, column 'mask_path'"),
            mask_label=None if mask_label is None or pd.isna(mask_label) else int(mask_label),
            phase_paths=phase_paths,
            label=None if label is None or pd.isna(label) else int(label),
        )

    def lesion_b(self, row_index: int, masks_b_dir: Path | None = None) -> LesionRecord | None:
        """The lesion's record with a second reader's mask (``mask_path_b`` / ``mask_label_b``, or with
        ``masks_b_dir`` the file of the same name as ``mask_path`` in that folder, same label), or None where
        there is no second mask (a lesion read once)."""
        record = self.lesion(row_index)
        if masks_b_dir is not None:
            if record.mask_path is None:
                return None
            path = Path(masks_b_dir) / record.mask_path.name
            return replace(record, mask_path=path, mask_label=record.mask_label) if path.exists() else None
        row = self.table.iloc[row_index]
        value = row.get("mask_path_b")
        if value is None or pd.isna(value):
            return None
        label = row.get("mask_label_b")
        where = f"{TABLE_FILE} row {record.row} (lesion {record.lesion_id}), column 'mask_path_b'"
        return replace(record, mask_path=resolve_inside(self.root, str(value), where),
                       mask_label=None if label is None or pd.isna(label) else int(label))

    @property
    def outlined(self) -> pd.Series:
        """Per table row: whether the lesion has a mask."""
        return self.table["mask_path"].notna()

    def require_masks(self) -> None:
        """Refuse a cohort with lesions not outlined yet, naming them (training and evaluation need masks)."""
        missing = np.flatnonzero(~self.outlined.to_numpy())
        if len(missing):
            rows = ", ".join(f"{self.line_of(i)} ({self.table['lesion_id'].iloc[i]})" for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserInputError(
                f"{self.root / TABLE_FILE}: {len(missing)} lesion(s) have no mask_path (rows {rows}{more}); outline "
                "them, or run 'fusion-model segment predict --model SEG --cohort DIR --out NEWDIR' and use NEWDIR")

    def lesions(self) -> Iterator[LesionRecord]:
        """Every lesion's file record, in table order."""
        for i in range(len(self.table)):
            yield self.lesion(i)

    def images(self, config: PreprocessConfig, cache: ImageCache, **options) -> CohortImages:
        """Crops and radiological features of every lesion, cached (:func:`extract_lesion_images`;
        ``options``: crops, features, strict, progress, engine)."""
        from fusion_model.imaging.extract import extract_lesion_images

        if options.get("strict"):
            self.require_masks()
        return extract_lesion_images(list(self.lesions()), self.spec.phases, self.spec.ct_intensities, config,
                                     cache, **options)

    def lesion_by_id(self, lesion_id: str) -> LesionRecord:
        """The file record of one lesion, by its lesion_id."""
        matches = self.table.index[self.table["lesion_id"] == lesion_id].tolist()
        if not matches:
            raise UserInputError(f"lesion {lesion_id!r} is not in {self.root / TABLE_FILE}")
        return self.lesion(int(matches[0]))


def mask_sources(table: pd.DataFrame) -> pd.Series:
    """Each lesion's mask source (manual / auto; an empty cell, or no mask_source column, means manual), or
    ``none`` where mask_path is empty."""
    column = table["mask_source"] if "mask_source" in table else pd.Series(index=table.index, dtype=object)
    column = column.fillna("manual")
    if "mask_path" in table:
        column = column.where(table["mask_path"].notna(), "none")
    return column


def load_cohort(root: Path, require_label: bool = False) -> Cohort:
    """Read cohort.json and clinical.csv and check the table against the schema.

    Raises :class:`CohortValidationError` listing every table problem. File-level checks
    (existence, geometry, masks) are :func:`fusion_model.cohort.validate_cohort`'s job.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: not a directory; give the cohort directory (with cohort.json)")
    spec = read_cohort_spec(root)
    raw = read_clinical_csv(root / TABLE_FILE)
    result = validate_clinical_table(raw, spec.extra_features, require_label=require_label)
    if not result.ok:
        first = result.problems[0].message(str(root / TABLE_FILE))
        more = f" (and {len(result.problems) - 1} more problems; run 'fusion-model validate {root}')" \
            if len(result.problems) > 1 else ""
        raise CohortValidationError(first + more, result.problems)
    if len(result.table) == 0:
        raise UserInputError(f"{root / TABLE_FILE}: has a header but no lesion rows; add one row per lesion")
    return Cohort(root=root, spec=spec, table=result.table.reset_index(drop=True))
