"""bnlab's benchmarks: one runner (``python -m benchmarks.run``), a shape catalogue, JSON + Markdown results.

Every row carries its competitor (PyTorch, measured in the same run, interleaved) and the byte floor (the bytes the
operation must move over the copy bandwidth measured in the same run). Performance goals are checked here, never
by timed unit tests. ``python -m benchmarks.engine_overhead`` measures the lab's training engine against a
hand-written PyTorch loop.
"""
