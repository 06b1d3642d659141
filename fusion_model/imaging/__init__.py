"""CT imaging: reading volumes, geometry checks, lesion-centred crops and their cache."""
