"""Temporal memory node: Embedding in, MemoryContext out (the embedding plus what memory knows about it).

The window is an hnswlib index of the last `capacity` frames, evicted by age in message time. Beside it,
unless `long_capacity` is 0, a long-horizon keyframe tier (memory.tiers.TieredMemory) keeps a frame every
`keyframe_interval_s` and every novel frame for `long_ttl_s`, so "what did the scene look like 2 min ago?"
and "have I seen this place before?" work beyond the window. Ad-hoc queries go through the `memory/query`
service and search both tiers; the per-frame context looks back through both tiers too (the window first
answers any lookback it covers) but takes its nearest neighbours from the window only, so a scene from
minutes ago never passes for the present. The per-frame path never calls the service (the policy reads the
context message). The service has its own callback group so a multi-threaded executor may serve it beside
inserts (the core's lock keeps hnswlib safe); the default one-executor-per-node spin runs them in turn.
"""
from __future__ import annotations

import math
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from .. import qos
from ..transport import intra_process
from ..conversions import to_seconds, to_time, vector_from_msg
from ..diagnostics import DiagnosticsPublisher, RateMeter, health
from ..memory import STORAGE_CHOICES, MemoryInputError, TemporalMemory
from ..memory import TieredMemory
from ..msg import Embedding, MemoryContext, MemoryHit
from ..params import Param, ParameterError
from ..srv import QueryMemory
from .lifecycle import INTRA_DISPATCH, INTRA_PROCESS, ManagedNode
from .runtime import main_for

PARAMS = [
    INTRA_PROCESS,
    INTRA_DISPATCH,
    Param('capacity', 300, 'frames kept in the window', 2, 10_000_000),
    Param('ttl_s', 30.0, 'frames older than this (message time) are evicted', 0.1, 1e7),
    Param('lookback_s', 2.0, 'the context compares each frame with the scene this long ago', 0.05, 3600.0),
    Param('neighbours', 3, 'nearest older frames reported with each context', 0, 100),
    Param('stamps_are_wall_clock', True, 'stamps are live wall-clock times: refuse stamps far in the future '
          '(false for media-time replay)'),
    Param('max_future_s', 5.0, 'with wall-clock stamps, refuse a stamp more than this ahead of now', 0.0, 3600.0),
    Param('storage', 'float32', 'element type of the kept vector copies (hnswlib itself always stores float32): '
          'float16 halves them, int8 quarters them, at a small similarity error', choices=STORAGE_CHOICES),
    Param('long_capacity', 1000, 'keyframes kept in the long-horizon tier; 0 turns the tier off', 0, 10_000_000),
    Param('long_ttl_s', 600.0, 'keyframes older than this (message time) leave the long-horizon tier', 0.1, 1e7),
    Param('keyframe_interval_s', 2.0, 'a frame this long after the last keyframe becomes a keyframe', 0.01, 1e6),
    Param('keyframe_novelty_cos', 0.8, 'a frame whose cosine to the last keyframe is at most this becomes a '
          'keyframe (a new scene)', -1.0, 1.0),
    Param('keyframe_min_interval_s', 1.0, 'novel frames become keyframes at most this often (bounds the tier '
          'rate: long_capacity >= long_ttl_s / this keeps the full horizon)', 0.0, 1e6),
]


def hit(entry) -> MemoryHit:
    return MemoryHit(stamp=to_time(entry.stamp_s), sequence=int(entry.sequence),
                     similarity=float(entry.similarity))


class MemoryNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'memory', **kwargs):
        super().__init__(name, **kwargs)
        p = self.p
        if p['long_capacity'] and p['keyframe_min_interval_s'] > p['keyframe_interval_s']:
            raise ParameterError(f"parameter 'keyframe_min_interval_s' ({p['keyframe_min_interval_s']}) must not "
                                 f"exceed 'keyframe_interval_s' ({p['keyframe_interval_s']})")
        if p['long_capacity'] and p['long_ttl_s'] < p['keyframe_interval_s']:
            raise ParameterError(f"parameter 'long_ttl_s' ({p['long_ttl_s']}) must be at least "
                                 f"'keyframe_interval_s' ({p['keyframe_interval_s']})")
        self.memory: TemporalMemory | TieredMemory | None = None
        self.counts = {'received': 0, 'inserted': 0, 'rejected': 0, 'resets': 0}
        self._rates = RateMeter()
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if p['autostart']:
            self.bring_up()

    def configure(self) -> None:
        p = self.p
        inproc = self.p['intra_process']
        self.publisher = self.own(intra_process.publisher(self, MemoryContext, 'memory/context', qos.EMBEDDING,
                                                          inproc))
        # Composed: embeddings handled on the embedder's thread when this node is free (intra_process_dispatch);
        # the query service takes the same lock.
        self.own(intra_process.subscription(self, Embedding, 'embedding', self._on_embedding, qos.EMBEDDING, inproc,
                                            self.inline_lock()))
        self.own(self.create_service(QueryMemory, 'memory/query', self._on_query,
                                     callback_group=MutuallyExclusiveCallbackGroup()))
        tier = (f"long tier {p['long_capacity']} keyframes / {p['long_ttl_s']} s" if p['long_capacity']
                else 'no long tier')
        self.get_logger().info(f"memory configured: capacity {p['capacity']}, ttl {p['ttl_s']} s, "
                               f"lookback {p['lookback_s']} s, {tier}, storage {p['storage']}")

    def cleanup(self) -> None:
        self.memory = None      # the window is rebuilt (and re-sized) from the next embedding

    def _diagnostics(self):
        memory = self.memory
        info = {'lifecycle': 'active' if self.active else 'inactive' if self.configured else 'unconfigured',
                'size': memory.size if memory is not None else 0, 'capacity': self.p['capacity'],
                'ttl_s': self.p['ttl_s'], 'long_capacity': self.p['long_capacity'],
                'dim': memory.dim if memory is not None else 0}
        return health(self.counts, self._rates.rates(self.counts, time.monotonic()), None, info)

    def _window(self, dim: int) -> TemporalMemory | TieredMemory:
        # Sized on the first embedding: the dimension belongs to the embedder's model, not to us.
        if self.memory is None:
            p = self.p
            common = dict(dim=dim, capacity=p['capacity'], ttl_s=p['ttl_s'], max_future_s=p['max_future_s'],
                          storage=p['storage'], logger=self.get_logger())
            if p['long_capacity']:
                self.memory = TieredMemory(long_capacity=p['long_capacity'], long_ttl_s=p['long_ttl_s'],
                                           keyframe_interval_s=p['keyframe_interval_s'],
                                           keyframe_novelty_cos=p['keyframe_novelty_cos'],
                                           keyframe_min_interval_s=p['keyframe_min_interval_s'], **common)
            else:
                self.memory = TemporalMemory(**common)
        return self.memory

    def _on_embedding(self, msg: Embedding) -> None:
        if not self.active:
            return
        self.counts['received'] += 1
        stamp_s = to_seconds(msg.header.stamp)
        try:
            vector = vector_from_msg(msg.vector, msg.dim or None, f'embedding {msg.sequence}')
            memory = self._window(vector.size)
            # The node clock: wall time live, the bag's /clock under use_sim_time (never the host's time then).
            now = self.get_clock().now().nanoseconds * 1e-9 if self.p['stamps_are_wall_clock'] else None
            # The graph insert (most of an insert's time) waits until the context is out: the frame's own
            # queries (lookback, exact search in a window this size) never need it.
            result = memory.insert(msg.sequence, stamp_s, vector, now_s=now, defer_index=True)
        except (ValueError, MemoryInputError) as err:
            self.counts['rejected'] += 1
            self.get_logger().warning(f'embedding rejected: {err}', throttle_duration_sec=5.0)
            return
        self.counts['inserted'] += 1
        if result.reset:
            self.counts['resets'] += 1
        context = MemoryContext()
        context.header = msg.header
        context.embedding = msg
        context.window_size = result.window_size
        context.window_reset = result.reset
        context.lookback_s = self.p['lookback_s']
        past = memory.lookback(vector, self.p['lookback_s'])
        context.has_past = past is not None
        context.similarity_to_past = float(past.similarity) if past is not None else math.nan
        if past is not None:
            context.past = hit(past)
        if self.p['neighbours']:
            window = memory.recent if isinstance(memory, TieredMemory) else memory
            context.neighbours = [hit(e) for e in window.knn(vector, k=self.p['neighbours'],
                                                              exclude_sequence=msg.sequence)]
        context.embedding.times.memory_end = to_time(time.time())
        self.publisher.publish(context)
        memory.flush_index()

    def _on_query(self, request: QueryMemory.Request, response: QueryMemory.Response):
        with self.callback_lock:
            return self._answer(request, response)

    def _answer(self, request: QueryMemory.Request, response: QueryMemory.Response):
        memory = self.memory
        if memory is None or memory.size == 0:
            response.success, response.message = False, 'memory window is empty'
            return response
        response.window_size = memory.size
        response.newest_stamp = to_time(memory.newest_stamp_s)
        try:
            if len(request.vector):
                vector = vector_from_msg(request.vector, memory.dim, 'query vector')
                entries = memory.knn(vector, k=request.k or 5, min_age_s=request.min_age_s,
                                     max_age_s=request.max_age_s or None)
            else:
                entry = memory.nearest_in_time(memory.newest_stamp_s - request.at_age_s)
                entries = [entry] if entry is not None else []
        except (ValueError, MemoryInputError) as err:
            response.success, response.message = False, str(err)
            return response
        response.hits = [hit(e) for e in entries]
        response.success, response.message = True, f'{len(entries)} hits'
        return response


def main(args=None) -> int:
    return main_for(MemoryNode)


if __name__ == '__main__':
    raise SystemExit(main())
