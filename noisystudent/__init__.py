"""noisystudent: Noisy Student k-fold training for single-cell microscopy images."""

__version__ = "0.1.0"
