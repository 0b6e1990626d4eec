"""The real camera and embedder nodes, composed in one process, move pixels without copying them.

The camera subscribes to a sensor_msgs/Image topic this test publishes (real frames of the demo video at
1280x720, twice the working size), downscales each frame straight into the transport's loan, and the embedder
embeds that very buffer:
- composed (inproc): the array the embedder's model gets is the array the camera loaned and filled (same
  object, same address), handed over in-process (FrameSubscription path 'local'), not through DDS;
- iox (both nodes in one process here, through iceoryx2 all the same): the camera downscales into the
  iceoryx2 sample itself (its loan is a view of a /dev/shm mapping); the embedder takes a private copy, or
  with borrow_frames reads the sample in place; either way the pixels are the camera's downscale of the input.
Expected results from first principles: identity of the buffers, and cv2's INTER_AREA downscale by 2 of the
published frame (computed here independently).
"""
import threading

import cv2
import numpy as np
import pytest
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from conftest import read_frame
from ros_helpers import wait_until
from vidaction_ros import qos
from vidaction_ros.msg import Embedding
from vidaction_ros.nodes.camera_node import CameraNode
from vidaction_ros.nodes.embedder_node import EmbedderNode

pytestmark = pytest.mark.integration

FRAMES = 4


def shared_file_of(array) -> str:
    """The file mapped at the array's first byte in this process (/proc/self/maps), '' for anonymous memory."""
    address = array.__array_interface__['data'][0]
    with open('/proc/self/maps') as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(part, 16) for part in fields[0].split('-'))
            if start <= address < end:
                return fields[5] if len(fields) > 5 else ''
    return ''


class Spy:
    """Records the arrays the camera loans and the arrays the embedder's model is given (no behaviour change)."""

    def __init__(self, camera: CameraNode, embedder: EmbedderNode):
        self.loaned, self.embedded, self.lock = [], [], threading.Lock()
        # Where each array's memory was while it was in use: an iceoryx2 sample is unmapped once the camera
        # closes, so the test must not look at those arrays afterwards (flags and identity only).
        self.loaned_files, self.embedded_files = [], []
        self.threads = []               # (embedding thread, the thread that loaned the frame last)
        self._loaning_thread = None
        sender, backend = camera.sender, embedder.backend
        loan, embed_images = sender.loan, backend.embed_images

        def spy_loan(height, width):
            view = loan(height, width)
            with self.lock:
                self.loaned.append(view)
                self.loaned_files.append(shared_file_of(view))
                self._loaning_thread = threading.get_ident()
            return view

        def spy_embed(images, regions):
            with self.lock:
                self.embedded.append((images[0], images[0].copy()))   # the array, and its pixels right now
                self.embedded_files.append(shared_file_of(images[0]))
                self.threads.append((threading.get_ident(), self._loaning_thread))
            return embed_images(images, regions)
        sender.loan, backend.embed_images = spy_loan, spy_embed


def run_composed(context, transport: str, embedder_params: dict | None = None):
    overrides = {'source': 'topic', 'image_topic': 'test_image', 'transport': transport, 'rate_hz': 240.0,
                 'gate_enabled': False, 'autostart': True}
    camera = CameraNode('camera', context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    embedder_params = {'autostart': True, **(embedder_params or {})}
    embedder = EmbedderNode('embedder', context=context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in embedder_params.items()])
    assert camera.active and embedder.active
    spy = Spy(camera, embedder)
    observer = Node('test_observer', context=context)
    source = observer.create_publisher(Image, 'test_image', qos.IMAGE)
    embeddings, changed = [], threading.Condition()

    def on_embedding(msg):
        with changed:
            embeddings.append(msg.sequence)
            changed.notify_all()
    observer.create_subscription(Embedding, 'embedding', on_embedding, qos.EMBEDDING)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    for node in (camera, embedder, observer):
        executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    inputs = []
    try:
        wait_until(lambda: source.get_subscription_count() > 0 and embedder.publisher.get_subscription_count() > 0
                   and (camera.sender.iox is None or camera.sender.iox.subscribers() > 0), 30,
                   lambda: f'not connected in 30 s (embedder iceoryx2 reader: {embedder.frames.iox_state})')
        for index in range(FRAMES):
            frame = read_frame(10 + 20 * index, size=(1280, 720))
            inputs.append(frame)
            msg = Image(height=720, width=1280, encoding='bgr8', step=1280 * 3, data=frame.tobytes())
            msg.header.stamp = observer.get_clock().now().to_msg()
            msg.header.frame_id = 'test'
            count = len(embeddings)
            source.publish(msg)
            with changed:       # one at a time: newest-wins QoS would rightly drop frames sent faster
                assert changed.wait_for(lambda: len(embeddings) > count, 60), f'frame {index} never embedded'
        return spy, inputs, dict(embedder.frames.counts)
    finally:
        executor.shutdown()
        for node in (camera, embedder):
            node.close()
            node.destroy_node()
        observer.destroy_node()


def expected_working_frame(frame):
    return cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize('dispatch', ['thread', 'inline'])
def test_composed_camera_and_embedder_share_one_buffer(context, dispatch):
    spy, inputs, paths = run_composed(context, 'inproc', {'frame_dispatch': dispatch})
    assert len(spy.embedded) == FRAMES
    for (array, pixels), source in zip(spy.embedded, inputs):
        assert any(array is view for view in spy.loaned)          # the very array the camera filled
        address = array.__array_interface__['data'][0]
        assert address in {view.__array_interface__['data'][0] for view in spy.loaned}
        assert not array.flags.writeable                          # frozen once published: nobody rewrites it
        assert array.shape == (360, 640, 3)
        assert np.array_equal(pixels, expected_working_frame(source))
    assert paths['local'] == FRAMES and paths['dds'] == 0         # handed over in-process, DDS copy dropped
    threads = {thread for thread, _ in spy.threads}
    if dispatch == 'inline':                                      # embedded on the camera's own thread
        assert all(thread == camera_thread for thread, camera_thread in spy.threads)
    else:
        assert not any(thread == camera_thread for thread, camera_thread in spy.threads) and len(threads) == 1


@pytest.mark.parametrize('borrow', [False, True])
def test_iox_camera_fills_the_sample_and_the_embedder_reads_it(context, borrow):
    spy, inputs, paths = run_composed(context, 'iox', {'borrow_frames': borrow})
    assert len(spy.embedded) == FRAMES
    assert all(name.startswith('/dev/shm/iox2_') for name in spy.loaned_files), spy.loaned_files  # the sample
    for (array, pixels), name, source in zip(spy.embedded, spy.embedded_files, inputs):
        if borrow:                                     # the embedder's model read the sample in place
            assert not array.flags.owndata and not array.flags.writeable and name.startswith('/dev/shm/iox2_')
        else:                                          # a private copy: anonymous memory, mmap or malloc heap
            assert array.flags.owndata and name in ('', '[heap]'), name
        assert np.array_equal(pixels, expected_working_frame(source))
    assert paths['iox'] == FRAMES and paths['dds'] == 0     # woken by iceoryx2, not DDS


def test_the_embedder_runs_its_policy_regions_batch_before_it_activates(context):
    # The default policy has regions; a live frame is embedded with them in one batch (1 + regions), so that
    # batch runs at configure, not on the first frame.
    from vidaction_ros.paths import resolve_policy_file
    from vidaction_ros.policy import load_policy
    regions = list(load_policy(resolve_policy_file('')).regions.values())
    assert regions
    embedder = EmbedderNode('embedder', context=context, parameter_overrides=[Parameter('autostart', value=True)])
    try:
        assert embedder.active and embedder.warmed_batches == [1 + len(regions)]
    finally:
        embedder.close()
        embedder.destroy_node()
