"""The figure of reconstructions and colorizations of the same test images: python scripts/showcase.py --help."""

import sys

from aelab.analysis.showcase import main

if __name__ == "__main__":
    sys.exit(main())
