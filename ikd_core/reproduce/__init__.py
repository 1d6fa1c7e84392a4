"""The ``python -m ikd_core benchmark`` command: reproduce the paper's tables on MVTec AD (or the demo data).

* :mod:`ikd_core.reproduce.run`: train (or reuse a checkpoint) and evaluate each category, write its curves
  and GIF (``run_benchmark``, ``run_category``);
* :mod:`ikd_core.reproduce.report`: the markdown tables beside the paper's numbers, the JSON and the ROC / PRO
  plots.

Not to be confused with ``benchmarks/`` at the repository root: scripts that measure speed and memory
(``python -m benchmarks.NAME``).
"""
