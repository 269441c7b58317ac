"""`python -m cifar_mlflow COMMAND ...`, the same as the `cifar-mlflow` console script."""

import sys

from cifar_mlflow.cli import main

sys.exit(main())
