"""`python -m cifar_mlflow.compare`."""

import sys

from cifar_mlflow.compare.cli import main

sys.exit(main())
