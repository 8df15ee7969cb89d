"""The benchmark's reusable core: how model search is scored (paper 002, section 3), which members
form a pool (paper 002, section 4.1), the transfer protocol that turns a chosen member into a test
accuracy (paper 000, section 6.3), a resumable record store, and the tables and plots made from
records (paper 000, Tables 1-2; paper 002, Figures 3-7).

- :mod:`expertise.bench.metrics`: regret, relative regret and relative delta (paper 002, eq. 1-2),
  budget curves, zero-regret fractions (Figure 7), percentile bootstrap and group means (Table 1);
- :mod:`expertise.bench.pools`: pools as composable filters over library metadata, parsed from a
  spec such as ``"experts+params<=5e6"``;
- :mod:`expertise.bench.store`: :class:`~expertise.bench.store.RecordStore`, one JSON record per
  finished unit of work, so a killed run resumes and never repeats a unit;
- :mod:`expertise.bench.protocol`: the sweep / retrain / median protocol;
- :mod:`expertise.bench.tables` and :mod:`expertise.bench.plots`: markdown tables and PNG figures.

Accuracies are fractions in [0, 1] everywhere in this package; only tables and plots show percent.
"""
