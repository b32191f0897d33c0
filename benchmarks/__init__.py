"""Benchmarks of dq_plugins, one module each, run from the repository root as modules
(``python -m benchmarks.overhead --quick``); each writes its section of ``benchmarks/RESULTS.md``."""
