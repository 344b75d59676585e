"""Run the MONAI bundle's command lines as a user types them, from the bundle's folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO_ROOT / "bundles" / "japc_multirater"

# The settings of tests.synthetic.tiny_config, as bundle overrides.
TINY_SETTINGS = {
    "spatial_size": "[32, 32]",
    "japc#preprocessing#superpixel_min_size": "20",
    "japc#model#feature_channels": "32",
    "japc#model#attention_dim": "8",
    "japc#training#lr_step": "4",
    "seed": "7",
    "log_every": "1",
}
TINY_OVERRIDES = [part for key, value in TINY_SETTINGS.items() for part in (f"--{key}", value)]


def run_command(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command`` in the bundle folder; fail the test with its output when it exits non-zero."""
    result = subprocess.run(command, cwd=BUNDLE_DIR, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def run_bundle(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <arguments>`` in the bundle folder."""
    return run_command([sys.executable, "-m", "monai.bundle", *arguments], timeout=timeout)
