"""Train an autoencoder: `python train.py --help` lists the config groups."""

from aelab.train import main

if __name__ == "__main__":
    main()
