"""Data: raw NIfTI I/O, fingerprint, planning, preprocessing, sampling and augmentation."""
