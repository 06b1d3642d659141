"""From a PACS export to a cohort directory: `fusion-model import-dicom`."""
