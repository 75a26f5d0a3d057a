"""Colorize images with a trained colorization checkpoint: python scripts/colorize.py --help."""

import sys

from aelab.analysis.predict_cli import main

if __name__ == "__main__":
    sys.exit(main("colorization"))
