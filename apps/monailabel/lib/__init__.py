"""Tasks of the japc MONAI Label app."""
