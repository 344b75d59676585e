"""MONAI dictionary transforms for multi-rater cases, preprocessing and self-supervised episodes."""
