"""What the stages contribute to the shared registries, gathered above them: importing this module
registers every built-in unit kind (each stage keeps its kinds beside its code). The command line
and the demo import it, so ``expertise`` knows every kind before it plans or names one; the stage
packages and :mod:`expertise.units` never import it."""

import expertise.bench.units  # noqa: F401  embed, selection, halving
import expertise.dat.units  # noqa: F401  dat
import expertise.transfer.units  # noqa: F401  transfer_sweep, transfer_retrain
import expertise.upstream.units  # noqa: F401  baseline, full_expert, epn, adapter_bank
from expertise.units.registry import KINDS

__all__ = ["KINDS"]
