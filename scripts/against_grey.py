"""Where a colorization checkpoint beats grey and where it loses: python scripts/against_grey.py --help."""

import sys

from aelab.analysis.against_grey import main

if __name__ == "__main__":
    sys.exit(main())
