"""Explanations for clinicians: SHAP contributions of the heads (contributions), CT saliency of
the encoder (saliency), plain-language feature names (names), figures (plots) and the
`fusion-model explain` runner with its case cards and case review page (run)."""
