"""`python -m cifar_mlflow.train`."""

import sys

from cifar_mlflow.train.cli import main

sys.exit(main())
