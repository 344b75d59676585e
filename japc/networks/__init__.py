"""Encoders, prototype heads, rater prototype calibration and losses."""
