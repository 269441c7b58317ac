"""`python -m cifar_mlflow.tune`."""

import sys

from cifar_mlflow.tune.cli import main

sys.exit(main())
