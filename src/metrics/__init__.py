"""KiTS19/KiTS21 evaluation (Dice, Surface Dice) and the metrics.csv / summary.json writers.

numpy, scipy and nibabel only: scoring never imports MindSpore.
"""
