"""``python -m maml_anomaly``: the same command line as ``maml-anomaly``."""

from maml_anomaly.cli import main

if __name__ == "__main__":
    main()
