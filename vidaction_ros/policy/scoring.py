"""Calibrated scores of a frame embedding against a rule's prompts and contrast prompts (pure numpy).

Scores are calibrated, never bare cosines. Image-text cosines of joint-embedding models sit near 0.1-0.4
for matching *and* non-matching text, so "cosine >= 0.85" never fires and "cosine >= 0.25" fires on
anything. A rule therefore scores a frame *relative to contrast prompts* that describe the safe scene:

* ``margin``: cosine to the best positive prompt minus cosine to the best contrast prompt, in [-2, 2].
  Positive means the frame looks more like the risk than like the safe scene.
* ``softmax``: the probability mass of the positive prompts in a softmax over
  [positive prompts + contrast prompts] of cosine / temperature, in [0, 1] (CLIP zero-shot style).
  Without contrast prompts in the rule, the prompts of every *other* rule in the policy compete instead
  (zero-shot classification over the policy's vocabulary); a softmax over a rule's own prompts alone would
  always sum to 1 and say nothing.
"""
from __future__ import annotations

import math

import numpy as np

from .spec import PromptRule


# -- scoring (pure) ----------------------------------------------------------------------------------------
def score_margin(vec: np.ndarray, P: np.ndarray, C: np.ndarray) -> tuple[float, int]:
    """Margin of the best positive prompt over the best contrast prompt.

    vec: (d,) unit vector; P: (k, d) positive prompt rows, k >= 1; C: (m, d) contrast rows, m >= 1.
    Returns (max_i P_i.vec - max_j C_j.vec, argmax_i P_i.vec). Comparing with the contrast cancels the
    model's baseline cosine between any image and any text, which is what makes a threshold meaningful.
    """
    pos = np.asarray(P, dtype=np.float64) @ np.asarray(vec, dtype=np.float64)
    neg = np.asarray(C, dtype=np.float64) @ np.asarray(vec, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f'score_margin needs >= 1 prompt and >= 1 contrast prompt, got {pos.size} and {neg.size}')
    best = int(np.argmax(pos))
    return float(pos[best] - np.max(neg)), best


def score_softmax(vec: np.ndarray, P: np.ndarray, C: np.ndarray, T: float) -> tuple[float, int]:
    """Probability mass of the positive prompts in softmax([P.vec, C.vec] / T).

    Returns (sum_i softmax_i over the positive rows, argmax_i P_i.vec). With C empty the mass is 1.
    Computed with the max subtracted (log-sum-exp) so small temperatures cannot overflow.
    """
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f'temperature must be a finite number > 0, got {T!r}')
    v = np.asarray(vec, dtype=np.float64)
    pos = np.asarray(P, dtype=np.float64) @ v
    if pos.size == 0:
        raise ValueError('score_softmax needs >= 1 prompt')
    neg = np.asarray(C, dtype=np.float64).reshape(-1, v.shape[0]) @ v
    logits = np.concatenate([pos, neg]) / T
    e = np.exp(logits - logits.max())
    best = int(np.argmax(pos))
    return float(e[:pos.size].sum() / e.sum()), best


def _competitors(rule: PromptRule, actions) -> tuple[str, ...]:
    """Texts of every other prompt rule (prompts, then contrast), minus this rule's own prompts, in file order."""
    out: list[str] = []
    for other in actions:
        if other is rule:
            continue
        for text in other.prompts + other.contrast:
            if text not in rule.prompts and text not in out:
                out.append(text)
    return tuple(out)
