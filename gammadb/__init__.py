"""gammadb: an experiment database for SGD across feature-learning strength (gamma) and learning rate (eta)."""

__version__ = "0.1.0"
