"""Write DIR/report.md (tables, curves, grids) from a run or multirun dir: python scripts/report.py DIR."""

import sys

from aelab.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
