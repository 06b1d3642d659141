"""`fusion-model segment`: find and outline adrenal lesions with a MONAI 3D U-Net (train, predict, evaluate)."""
