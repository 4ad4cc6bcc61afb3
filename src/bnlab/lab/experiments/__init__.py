"""The registered experiments, one module each (``fig1``: Figure 1 of the paper)."""
