"""Models built for the tests only (not part of the product)."""
