"""Features computed from images: radiological (shape and attenuation) features."""
