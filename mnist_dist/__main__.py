"""``python -m mnist_dist ...`` is ``mnist-dist ...``."""

from .cli import main

main()
