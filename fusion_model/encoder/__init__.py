"""The imaging encoder: a compact 3D CNN (and a 2.5D variant) giving a logit and an embedding."""
