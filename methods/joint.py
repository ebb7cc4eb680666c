"""`joint`: plain joint training of both encoders and the fusion head (the baseline)."""

from __future__ import annotations

from mmbench.method import Method
from mmbench.registry import register_method

_OGM_GE = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 70,
           "lr_gamma": 0.1, "epochs": 100, "batch_size": 64, "fusion": "concat", "image_size": 224}
#: The OGM-GE code's recipe per dataset, which the benchmark protocol follows.
OGM_GE_RECIPE = {"cremad": {**_OGM_GE, "frames": 1}, "kinetics-sounds": {**_OGM_GE, "frames": 3}}


@register_method
class Joint(Method):
    name = "joint"
    description = "Joint training: two encoders, concat (or any) fusion, one cross-entropy on the fused logits."
    citation = "Baseline of Peng et al., CVPR 2022 (OGM-GE), arXiv 2203.15332"
    # The baseline as the OGM-GE code trains it, which the benchmark protocol follows.
    profiles = {"official": OGM_GE_RECIPE}
