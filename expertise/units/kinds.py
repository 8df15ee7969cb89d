"""Imported by :func:`expertise.units.registry.get_kind`: the stages' modules that register the
built-in unit kinds (each stage keeps its kinds beside its code)."""

import expertise.bench.units  # noqa: F401  embed, selection
import expertise.transfer.units  # noqa: F401  transfer_sweep, transfer_retrain
import expertise.upstream.units  # noqa: F401  full_expert, epn, adapter_bank
import expertise.dat.units  # noqa: F401  dat
