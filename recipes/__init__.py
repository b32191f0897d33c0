"""Runnable examples of dq_plugins, one module each; run them from the repository root as modules:
``python -m recipes.lightning_classification --config recipes/configs/lightning_mnist.yaml``.

Their shared pieces (data, label noise, configuration, report, the example model) are in
:mod:`recipes.common`, also used by ``benchmarks`` and the tests.
"""
