"""`python -m cifar_mlflow.bench`."""

import sys

from cifar_mlflow.bench.cli import main

sys.exit(main())
