"""The lab: experiments as packages of functions over frozen dataclass configurations, a training loop with
hooks, run folders with their records and artifacts, sweeps that resume, figures, self-contained HTML reports,
the tour, and the ``bnlab list|run|resume|report`` commands.

Read in this order: :mod:`~bnlab.lab.registry` → :mod:`~bnlab.lab.config` → :mod:`~bnlab.lab.train` →
:mod:`~bnlab.lab.runner` → :mod:`~bnlab.lab.records` and :mod:`~bnlab.lab.store` → :mod:`~bnlab.lab.result` →
:mod:`~bnlab.lab.report`, then an experiment package under ``bnlab/lab/experiments/``. The shared code knows no
experiment by name; docs/experiments.md says how to add one.
"""
