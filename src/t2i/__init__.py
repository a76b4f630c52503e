"""t2i: one toolkit to prepare data for, train, evaluate and sample text-to-image models."""

__version__ = "0.1.0"
