"""fusion-model: CT + clinical fusion models for adrenal lesion malignancy risk."""

__version__ = "0.1.0"
