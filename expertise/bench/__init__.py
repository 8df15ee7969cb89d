"""Evaluation: how model search is scored (paper 002, section 3), which members form a pool (paper
002, section 4.1), the benchmark runner, and the tables and figures made from records (paper 000,
Tables 1-2; paper 002, Figures 3-7). Fine-tunes go through :mod:`expertise.transfer.protocol`, and
every unit of work is a record in :mod:`expertise.store`.

- :mod:`expertise.bench.metrics`: regret, relative regret and relative delta (paper 002, eq. 1-2),
  budget curves, zero-regret fractions (Figure 7), percentile bootstrap and group means (Table 1);
- :mod:`expertise.bench.pools`: pools as composable filters over library metadata, parsed from a
  spec such as ``"experts+params<=5e6"``;
- :mod:`expertise.bench.runner`: :func:`~expertise.bench.runner.run_bench` and the report;
- :mod:`expertise.bench.tables` and :mod:`expertise.bench.figures`: markdown tables and PNG figures.

Accuracies are fractions in [0, 1] everywhere in this package; only tables and plots show percent.
"""
