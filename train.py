"""Train an autoencoder: `python train.py --help` lists the config groups."""

from aelab.runtime.cli import main

if __name__ == "__main__":
    main()
