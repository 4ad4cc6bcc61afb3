"""Model-level tools over batch-norm modules: pure functions that return a new model or a report."""

from bnlab.tools.convert import convert

__all__ = ["convert"]
