"""Composed mode: the embedder side receives the very buffer the camera side filled (zero pixel copies),
through a real FrameRef over real DDS in one process."""
import threading

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport import FrameSender, resolve

pytestmark = pytest.mark.integration


@pytest.mark.parametrize('mode', ['inproc', 'image'])
def test_frame_reaches_the_consumer(mode):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        producer = Node('test_producer', context=context)
        consumer = Node('test_consumer', context=context)
        received, arrived = [], threading.Event()

        def on_frame(msg):
            received.append((msg, resolve(msg)))
            arrived.set()
        consumer.create_subscription(FrameRef, 'camera/frame', on_frame, qos.FRAME_LOCKSTEP)
        sender = FrameSender(producer, mode, lockstep=True)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(consumer)
        threading.Thread(target=executor.spin, daemon=True).start()
        matched = threading.Event()
        for _ in range(200):                      # discovery: wait for the match, bounded
            if sender.publisher.get_subscription_count() > 0:
                matched.set()
                break
            matched.wait(0.05)
        assert matched.is_set()
        image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        msg = FrameRef()
        msg.sequence = 7
        sender.send(msg, image)
        assert arrived.wait(10)
        ref, frame = received[0]
        assert ref.sequence == 7 and ref.transport == mode
        assert np.array_equal(frame, image)
        if mode == 'inproc':
            assert frame is image                                  # the same object: no pixel copy
            assert len(ref.image.data) == 0                        # and no pixels on the wire
        else:
            assert frame is not image and len(ref.image.data) == image.nbytes
        executor.shutdown()
    finally:
        rclpy.try_shutdown(context=context)
