"""Accuracy, macro-F1, mAP and the imbalance ratio, for the fused and per-modality logits.

Conventions (stated once, used everywhere): macro-F1 averages over the classes present in
the labels or the predictions (sklearn's `average="macro"`); mAP averages, over classes
with at least one positive, the step-wise average precision of the softmax scores
(sklearn's `average_precision_score`); rho is the OGM-GE discrepancy ratio
sum_i p_a(x_i)[y_i] / sum_i p_v(x_i)[y_i].
"""

from __future__ import annotations

import math

import numpy as np
import torch


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y)) if len(y) else math.nan


def macro_f1(pred: np.ndarray, y: np.ndarray) -> float:
    labels = np.union1d(pred, y)
    if len(labels) == 0:
        return math.nan
    scores = []
    for c in labels:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the step-wise precision-recall curve; tied scores form one threshold."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(positive)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(probs: np.ndarray, y: np.ndarray) -> float:
    aps = [average_precision(probs[:, c], y == c) for c in range(probs.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else math.nan


def true_class_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(logits_i)[y_i], the score OGM-GE compares between modalities."""
    return torch.softmax(logits.float(), dim=-1).gather(1, y[:, None]).sum()


def modality_scores(logits_a: torch.Tensor, logits_v: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(s_a, s_v): each modality's summed true-class probability, from detached logits."""
    return float(true_class_score(logits_a.detach(), y)), float(true_class_score(logits_v.detach(), y))


def imbalance_ratio(score_a: float, score_v: float) -> float:
    """rho = s_a / s_v (> 1: audio dominates)."""
    if score_v == 0:
        return math.inf if score_a > 0 else math.nan
    return score_a / score_v


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """acc, macro_f1, map and n_correct of one set of logits (N, C)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    pred = logits.argmax(axis=1)
    return {
        "acc": accuracy(pred, y),
        "macro_f1": macro_f1(pred, y),
        "map": mean_average_precision(probs, y),
        "n_correct": int(np.sum(pred == y)),
    }


def decision_layer_diagnostics(logits: torch.Tensor, logits_a: torch.Tensor, logits_v: torch.Tensor,
                               y: torch.Tensor, feat_norm_a: torch.Tensor | None = None,
                               feat_norm_v: torch.Tensor | None = None,
                               weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Bias of the decision layer toward one modality (docs/methods.md), for any model with
    per-modality logits. Contributions are the per-modality logits as the model splits them
    (concat: W_m f_m + b/2).

    d1_weight_norm_ratio  ||W_a||_F / ||W_v||_F of the decision layer (when it has one)
    d1_class_<c>          ||W_a[c]||_2 / ||W_v[c]||_2, the same ratio for class index c
    d2_feature_norm_ratio E||f_a|| / E||f_v||
    d3_logit_share_a      mean_i ||z_a|| / (||z_a|| + ||z_v||); d3_true_logit_a/_v: mean z_m[y]
    d4_audio_decides      among samples whose audio and visual argmax differ, the share where the
                          fused prediction is audio's (d4_visual_decides: visual's; 0.5/0.5 = neutral)
    d4_audio_right_share  among those, audio's share of the samples one of the two gets right: the
                          share a capability-proportional decision layer would give audio
    d4_excess_audio       d4_audio_decides - d4_audio_right_share: bias toward audio beyond capability
    """
    norm_a, norm_v = logits_a.norm(dim=1), logits_v.norm(dim=1)
    share = norm_a / (norm_a + norm_v).clamp_min(1e-12)
    pred, pred_a, pred_v = logits.argmax(1), logits_a.argmax(1), logits_v.argmax(1)
    disagree = pred_a != pred_v
    n_disagree = int(disagree.sum())
    out = {
        "d1_weight_norm_ratio": math.nan,
        "d2_feature_norm_ratio": math.nan,
        "d3_logit_share_a": float(share.mean()),
        "d3_true_logit_a": float(logits_a.gather(1, y[:, None]).mean()),
        "d3_true_logit_v": float(logits_v.gather(1, y[:, None]).mean()),
        "d4_audio_decides": float((pred == pred_a)[disagree].float().mean()) if n_disagree else math.nan,
        "d4_visual_decides": float((pred == pred_v)[disagree].float().mean()) if n_disagree else math.nan,
        "d4_disagreements": n_disagree,
        "d4_audio_right_share": math.nan,
        "d4_excess_audio": math.nan,
    }
    audio_right = int((pred_a == y)[disagree].sum())
    visual_right = int((pred_v == y)[disagree].sum())
    if audio_right + visual_right:
        out["d4_audio_right_share"] = audio_right / (audio_right + visual_right)
        out["d4_excess_audio"] = out["d4_audio_decides"] - out["d4_audio_right_share"]
    if weights is not None:
        out["d1_weight_norm_ratio"] = float(weights[0].norm() / weights[1].norm())
        # per class: ||W_a[c]|| / ||W_v[c]|| (docs/methods.md), one column per class index
        per_class = weights[0].norm(dim=1) / weights[1].norm(dim=1)
        out.update({f"d1_class_{c}": float(r) for c, r in enumerate(per_class.tolist())})
    if feat_norm_a is not None and feat_norm_v is not None:
        out["d2_feature_norm_ratio"] = float(feat_norm_a.mean() / feat_norm_v.mean())
    return out

