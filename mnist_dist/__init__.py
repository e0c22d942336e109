"""mnist-dist: the MNIST step-model study as a distributed, reproducible training tool."""

__version__ = "0.1.0"
