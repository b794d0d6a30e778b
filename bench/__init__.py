"""The benchmarks, one script each; `python -m bench` runs them all (bench/__main__.py)."""
