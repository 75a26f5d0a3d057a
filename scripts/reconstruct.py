"""Reconstruct images with a trained reconstruction checkpoint: python scripts/reconstruct.py --help."""

import sys

from aelab.analysis.predict_cli import main

if __name__ == "__main__":
    sys.exit(main("reconstruction"))
