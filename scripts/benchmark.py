"""Throughput table of aelab vs a bare loop vs the usual recipe: python scripts/benchmark.py --help."""

from aelab.benchmark import main

if __name__ == "__main__":
    main()
