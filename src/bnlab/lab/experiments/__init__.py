"""The experiments, one package each (``fig1/``, ``variance/``, ...), found by :mod:`bnlab.lab.registry`.

A package here is an experiment when its ``__init__.py`` defines ``EXPERIMENT``; docs/experiments.md says how to
write one.
"""
