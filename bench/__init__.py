"""The benchmark: `python -m bench` runs one module per measurement (see bench/__main__.py); not tests."""
