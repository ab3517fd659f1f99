"""Evaluation of reconstructions against ground truth: geometry metrics, image metrics and a visual-hull baseline."""
