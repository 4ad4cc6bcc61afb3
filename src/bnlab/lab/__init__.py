"""The lab: experiments as registered functions over frozen dataclass configurations, a training engine, run
folders with their records, figures and self-contained HTML reports, and the ``bnlab list|run|report`` commands.

Read in this order: :mod:`~bnlab.lab.registry` → :mod:`~bnlab.lab.config` → :mod:`~bnlab.lab.engine` →
:mod:`~bnlab.lab.runner` → :mod:`~bnlab.lab.records` → :mod:`~bnlab.lab.report`, then an experiment
(:mod:`bnlab.lab.experiments.fig1`).
"""
