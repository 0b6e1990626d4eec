"""Prompt-rule scores computed on the embedding device, in the same computation as the embeddings.

`DeviceScorer(table, torch, device)(vectors)` takes the image encoder's raw output for F frames laid out frame
by frame ([full frame, *regions] each: policy/score_table.py's views) and returns one flat float32 tensor:
the F x V unit vectors, then F x R x (score, best prompt). Everything is batched tensor algebra with fixed
shapes (gathers with padded index tables and masks, no Python per rule, no host synchronisation), so a
torch_cuda backend captures it into the image encoder's CUDA graph and one device-to-host copy per call
brings back vectors and scores together. The numbers are those of policy/scoring.py (margin: best prompt
minus best contrast cosine; softmax: the prompts' mass in softmax([prompts, contrast] / T)), in float32
instead of float64: equal within 1e-5 (tested on the CPU, test_device_scoring.py).

Pure core: torch only (passed in, so importing this costs nothing); no ROS.
"""
from __future__ import annotations


class DeviceScorer:
    def __init__(self, table, torch, device):
        self.table = table
        self.torch = torch
        self.views = len(table.views)
        self.rules = len(table.rules)
        put = dict(device=device)
        self.texts_t = torch.as_tensor(table.texts, dtype=torch.float32, **put).t().contiguous()   # (d, n)
        self.view = torch.as_tensor(table.view, **put)
        self.pos = torch.as_tensor(table.pos, **put)
        self.neg = torch.as_tensor(table.neg, **put)
        self.pos_invalid = ~torch.as_tensor(table.pos_valid, **put)
        self.neg_invalid = ~torch.as_tensor(table.neg_valid, **put)
        self.softmax = torch.as_tensor(table.softmax, **put)
        self.temperature = torch.as_tensor(table.temperature, dtype=torch.float32, **put).view(-1, 1)

    def frames_of(self, rows: int) -> int:
        """How many frames a batch of this many rows is (0 when it is not whole frames of this layout)."""
        return rows // self.views if rows % self.views == 0 else 0

    def __call__(self, vectors):
        """(F * V, d) raw image features -> flat float32 [F*V*d unit vectors, F*R*2 (score, best)]."""
        torch = self.torch
        v = vectors.float()
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        frames = v.shape[0] // self.views
        cosines = (v @ self.texts_t).view(frames, self.views, -1)              # (F, V, n)
        per_rule = cosines[:, self.view, :]                                     # (F, R, n)
        pos = per_rule.gather(2, self.pos.expand(frames, -1, -1)).masked_fill(self.pos_invalid, float('-inf'))
        neg = per_rule.gather(2, self.neg.expand(frames, -1, -1)).masked_fill(self.neg_invalid, float('-inf'))
        best_pos, best = pos.max(dim=2)
        margin = best_pos - neg.max(dim=2).values
        logits = torch.cat([pos, neg], dim=2) / self.temperature                # masked entries: exp(-inf) = 0
        mass = torch.softmax(logits, dim=2)[:, :, :pos.shape[2]].sum(dim=2)
        score = torch.where(self.softmax, mass, margin)
        scores = torch.stack([score, best.float()], dim=2)                      # (F, R, 2)
        return torch.cat([v.reshape(-1), scores.reshape(-1)])

    def split(self, packed, frames: int, dim: int):
        """The host copy of __call__'s output -> ((F*V, d) vectors, (F, R, 2) scores) numpy arrays."""
        cut = frames * self.views * dim
        return packed[:cut].reshape(frames * self.views, dim), packed[cut:].reshape(frames, self.rules, 2)

    def as_dicts(self, scores) -> list[dict[str, tuple[float, int]]]:
        """(F, R, 2) scores -> per frame {rule: (score, best prompt)}."""
        return [{name: (float(row[0]), int(row[1])) for name, row in zip(self.table.rules, frame)}
                for frame in scores]
