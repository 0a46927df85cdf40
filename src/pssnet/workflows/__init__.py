"""Workflows that drive several layers at once: the top of the house, below the command line.

- :mod:`.evaluate`: ``pssnet eval`` on run directories (read a run, evaluate it, write
  ``eval.json``, the Pareto report and the deployment bundle).
"""

from .evaluate import evaluate_run_dir, reuse_mismatch

__all__ = ["evaluate_run_dir", "reuse_mismatch"]
