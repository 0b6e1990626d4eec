"""The policy's prompt rules as index tables, for scoring on the embedding device (pure numpy, no ROS).

The engine scores a frame rule by rule in numpy (scoring.py). A torch backend can score every prompt rule of
every view of a frame in the same device computation that made the embeddings
(perception/backends/device_scoring.py), so only a few numbers per frame leave the GPU: for that it needs the
engine's prompt matrix and, per rule, which view (full frame or region) it looks at, which rows are its
prompts and which its contrast (padded to rectangles, with masks), its score kind and temperature.

`digest` names the prompt set: policy rules, their texts, score kinds, temperatures and regions, and the
model. The embedder sends it with the scores; the policy uses scores whose digest is its own and scores the
vectors itself otherwise (another policy file or model on one side).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ..perception.regions import FULL_FRAME


@dataclass(frozen=True, eq=False)
class ScoreTable:
    rules: tuple[str, ...]        # prompt rules, policy order
    views: tuple[str, ...]        # FULL_FRAME, then regions in the order the embedder batches them
    view: np.ndarray              # (R,) index into views of each rule
    texts: np.ndarray             # (n, d) float32 unit rows: every prompt and contrast text
    pos: np.ndarray               # (R, K) int64 rows of each rule's prompts (padded with 0)
    pos_valid: np.ndarray         # (R, K) bool
    neg: np.ndarray               # (R, M) int64 rows of each rule's contrast (padded with 0; M >= 1)
    neg_valid: np.ndarray         # (R, M) bool
    softmax: np.ndarray           # (R,) bool: softmax score, else margin
    temperature: np.ndarray       # (R,) float32 (1 for margin rules)
    digest: str


def prompt_set_digest(engine, model_id: str) -> str:
    """What the scores depend on besides the frame: the rules' texts, kinds, temperatures, regions, the model."""
    rules = [[r.name, r.region, r.score, r.temperature, list(r.prompts),
              [engine.texts[i] for i in engine.rows[r.name][1]]] for r in engine.spec.actions]
    blob = json.dumps({'model': model_id, 'rules': rules}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_score_table(engine, region_order, model_id: str) -> ScoreTable | None:
    """The table for a PolicyEngine whose frames are embedded as [full frame, *region_order]; None when the
    policy has no prompt rules, or a rule's region is not among region_order (then the policy scores)."""
    actions = list(engine.spec.actions)
    if not actions or engine.matrix is None:
        return None
    views = (FULL_FRAME, *region_order)
    if any(rule.region not in views for rule in actions):
        return None
    widest_pos = max(len(engine.rows[r.name][0]) for r in actions)
    widest_neg = max(1, max(len(engine.rows[r.name][1]) for r in actions))
    count = len(actions)
    pos = np.zeros((count, widest_pos), np.int64)
    pos_valid = np.zeros((count, widest_pos), bool)
    neg = np.zeros((count, widest_neg), np.int64)
    neg_valid = np.zeros((count, widest_neg), bool)
    for i, rule in enumerate(actions):
        prompts, contrast = engine.rows[rule.name]
        pos[i, :len(prompts)], pos_valid[i, :len(prompts)] = prompts, True
        neg[i, :len(contrast)], neg_valid[i, :len(contrast)] = contrast, True
    return ScoreTable(
        rules=tuple(r.name for r in actions), views=views,
        view=np.array([views.index(r.region) for r in actions], np.int64),
        texts=np.asarray(engine.matrix, np.float32), pos=pos, pos_valid=pos_valid, neg=neg, neg_valid=neg_valid,
        softmax=np.array([r.score == 'softmax' for r in actions]),
        temperature=np.array([r.temperature if r.score == 'softmax' else 1.0 for r in actions], np.float32),
        digest=prompt_set_digest(engine, model_id))
