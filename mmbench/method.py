"""The method contract, where plugins import it from: `from mmbench.method import Method, RunContext`.

The contract lives in mmbench/train/method.py (the hooks and `ctx` members, each with an example); this
module re-exports it with the types a method's hooks see (models, batches), so that a plugin needs only
`mmbench.method` and `mmbench.registry`.
"""

from mmbench.data import Batch, PlannedBatch, Split, plan_batches
from mmbench.train.method import (
    MODALITY_LOGITS,
    RNG_PURPOSES,
    Method,
    RunContext,
    derive_seed,
    reset_optimizer_state,
)
from mmbench.train.models import FUSIONS, AVModel, Encoder, Outputs, build_av_model, init_linear

__all__ = ["MODALITY_LOGITS", "RNG_PURPOSES", "FUSIONS", "AVModel", "Batch", "Encoder", "Method", "Outputs",
           "PlannedBatch", "RunContext", "Split", "build_av_model", "derive_seed", "init_linear", "plan_batches",
           "reset_optimizer_state"]
