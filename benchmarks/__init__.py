"""Benchmarks, run as modules from the repository root (``python -m benchmarks.<name> --help``).

Optional side-by-side references (nnU-Net v2, PyTorch) live in a separate venv built from
``requirements-bench.txt``; the runtime venv never needs them.
"""
