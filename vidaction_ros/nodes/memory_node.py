"""Temporal memory node: Embedding in, MemoryContext out (the embedding plus what memory knows about it).

The window is an hnswlib index of the last `capacity` frames, evicted by age in message time. Ad-hoc
queries go through the `memory/query` service; the per-frame path never calls it (the policy reads the
context message). The service has its own callback group so a multi-threaded executor may serve it beside
inserts (the core's lock keeps hnswlib safe); the default one-executor-per-node spin runs them in turn.
"""
from __future__ import annotations

import math
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from .. import qos
from ..conversions import to_seconds, to_time, vector_from_msg
from ..memory import MemoryInputError, TemporalMemory
from ..msg import Embedding, MemoryContext, MemoryHit
from ..params import Param, declare
from ..srv import QueryMemory
from .runtime import main_for

PARAMS = [
    Param('capacity', 300, 'frames kept in the window', 2, 10_000_000),
    Param('ttl_s', 30.0, 'frames older than this (message time) are evicted', 0.1, 1e7),
    Param('lookback_s', 2.0, 'the context compares each frame with the scene this long ago', 0.05, 3600.0),
    Param('neighbours', 3, 'nearest older frames reported with each context', 0, 100),
    Param('stamps_are_wall_clock', True, 'stamps are live wall-clock times: refuse stamps far in the future '
          '(false for media-time replay)'),
    Param('max_future_s', 5.0, 'with wall-clock stamps, refuse a stamp more than this ahead of now', 0.0, 3600.0),
]


def hit(entry) -> MemoryHit:
    return MemoryHit(stamp=to_time(entry.stamp_s), sequence=int(entry.sequence),
                     similarity=float(entry.similarity))


class MemoryNode(Node):
    def __init__(self, name: str = 'memory', **kwargs):
        super().__init__(name, **kwargs)
        self.p = declare(self, PARAMS)
        self.memory: TemporalMemory | None = None
        self.counts = {'received': 0, 'inserted': 0, 'rejected': 0, 'resets': 0}
        self.publisher = self.create_publisher(MemoryContext, 'memory/context', qos.EMBEDDING)
        self.create_subscription(Embedding, 'embedding', self._on_embedding, qos.EMBEDDING)
        self.create_service(QueryMemory, 'memory/query', self._on_query,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"memory up: capacity {self.p['capacity']}, ttl {self.p['ttl_s']} s, "
                               f"lookback {self.p['lookback_s']} s")

    def _window(self, dim: int) -> TemporalMemory:
        # Sized on the first embedding: the dimension belongs to the embedder's model, not to us.
        if self.memory is None:
            self.memory = TemporalMemory(dim=dim, capacity=self.p['capacity'], ttl_s=self.p['ttl_s'],
                                         max_future_s=self.p['max_future_s'], logger=self.get_logger())
        return self.memory

    def _on_embedding(self, msg: Embedding) -> None:
        self.counts['received'] += 1
        stamp_s = to_seconds(msg.header.stamp)
        try:
            vector = vector_from_msg(msg.vector, msg.dim or None, f'embedding {msg.sequence}')
            memory = self._window(vector.size)
            now = time.time() if self.p['stamps_are_wall_clock'] else None
            result = memory.insert(msg.sequence, stamp_s, vector, now_s=now)
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
            context.neighbours = [hit(e) for e in memory.knn(vector, k=self.p['neighbours'],
                                                              exclude_sequence=msg.sequence)]
        context.embedding.times.memory_end = to_time(time.time())
        self.publisher.publish(context)

    def _on_query(self, request: QueryMemory.Request, response: QueryMemory.Response):
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
