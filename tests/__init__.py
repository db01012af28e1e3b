"""Fashion-MNIST Studio test suite (a package, so `from tests.prereq import require` resolves here)."""
