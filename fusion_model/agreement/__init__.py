"""`fusion-model agreement`: do two readers (or perturbed outlines) give the same segmentation, features and
model answer?"""
