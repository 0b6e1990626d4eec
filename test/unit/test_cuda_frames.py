"""The cuda transport: frames in GPU memory shared by CUDA IPC, named by iceoryx2 samples.

Without CUDA (this CI): every entry point says so clearly (camera configure, a consumer handed a cuda
FrameRef), and the part that is not CUDA (one device buffer per iceoryx2 pool chunk, the control samples, a
subscription's FrameRefs, borrow and resolve) runs through real iceoryx2 with CUDA's part played by host
tensors (`HostDevice`: buffers, handles, no-op synchronisation). With CUDA (the GPU machine; no ROS needed): a
writer process sends frames whose pixels encode their sequence, a reader process holds some of them while the
writer goes on and checks every pixel on the device: a held frame is never overwritten.
Expected values from first principles: frame g is filled with (g * 7 + row) % 256.
"""
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager

import numpy as np
import pytest

from ros_helpers import wait_until
from vidaction_ros.transport import cuda_ipc
from vidaction_ros.transport.frame_store import FrameLost

HAS_CUDA = cuda_ipc.available()
H, W = 48, 64


def pattern(g: int) -> np.ndarray:
    rows = np.arange(H, dtype=np.int64).reshape(H, 1, 1)
    return np.broadcast_to((g * 7 + rows) % 256, (H, W, 3)).astype(np.uint8)


class HostDevice:
    """CUDA's part played by host tensors (no GPU here): what is under test is everything around it."""

    def __init__(self):
        import torch
        self.torch = torch
        self.shared = {}
        self.allocated = 0

    def empty(self, nbytes):
        self.allocated += 1
        return self.torch.empty(nbytes, dtype=self.torch.uint8)

    def share(self, buffer) -> bytes:
        handle = f'host-buffer-{len(self.shared)}'.encode()
        self.shared[handle] = buffer
        return handle

    def open(self, handle: bytes):
        return self.shared[handle]

    def synchronize(self, tensor) -> None:
        pass


@pytest.fixture
def iox_frames():
    module = pytest.importorskip('vidaction_ros.transport.iox_frames')
    if not module.available():
        pytest.skip('iceoryx2 is not installed')
    return module


def test_a_frame_held_by_a_consumer_is_never_overwritten_and_buffers_follow_the_pool(iox_frames):
    from vidaction_ros.transport.cuda_frames import CONTROL_BYTES, CudaFrameWriter, DeviceFrames
    device = HostDevice()
    name = iox_frames.service_name(f'test/cuda_{uuid.uuid4().hex[:10]}', 'unit')
    publisher = iox_frames.IoxFramePublisher(name, CONTROL_BYTES)
    reader = iox_frames.IoxFrameReader(name)
    writer = CudaFrameWriter(H * W * 3, device=device)
    frames = DeviceFrames(device)
    held = []                                        # (sequence, Received): a slow consumer holds up to 3
    try:
        for g in range(1, 201):
            loan = publisher.loan_control(H, W, CONTROL_BYTES)
            assert writer.fill(loan, pattern(g)) == (H, W, 3)
            publisher.send(loan, sequence=g)
            if g % 7 == 0:
                frame = reader.take_newest()
                assert frame is not None and frame.sequence == g and frame.array is None
                held.append(frame)
                if len(held) > 3:
                    held.pop(0).release()
            for frame in held:                       # every held frame still holds its own pixels
                tensor = frames.view(frame.control, name)
                assert tuple(tensor.shape) == (H, W, 3)
                assert np.array_equal(tensor.numpy(), pattern(frame.sequence)), f'frame {frame.sequence} overwritten'
        # A buffer per pool chunk, not per frame: iceoryx2 hands freed chunks out again.
        assert device.allocated == len(writer.buffers) < 20, device.allocated
    finally:
        for frame in held:
            frame.release()
        reader.close()
        publisher.close()
        writer.close()


def test_a_control_sample_without_a_handle_is_frame_lost_not_a_crash():
    from vidaction_ros.transport.cuda_frames import DeviceFrames
    frames = DeviceFrames(HostDevice())
    for control in (b'', b'\0' * 64, b'VCF2' + b'\xff' * 60):
        with pytest.raises(FrameLost, match='no frame handle'):
            frames.view(control, 'cam')


def test_a_subscription_gets_cuda_frame_refs_and_borrow_and_resolve_reach_the_device_buffer(context, iox_frames,
                                                                                            monkeypatch):
    from vidaction_ros.msg import FrameRef
    from vidaction_ros.transport import cuda_frames, iox_refs
    from vidaction_ros.transport.frame_transport import FrameSubscription, borrow, resolve
    from vidaction_ros import qos
    import rclpy
    device = HostDevice()
    monkeypatch.setattr(cuda_frames, '_FRAMES', cuda_frames.DeviceFrames(device))
    node = rclpy.create_node(f'cuda_consumer_{uuid.uuid4().hex[:6]}', context=context)
    seen, done = [], threading.Event()

    def on_frame(ref):
        with borrow(ref) as tensor:                  # in place: the device buffer of the held sample
            in_place = np.array_equal(tensor.numpy(), pattern(ref.sequence))
        copy = resolve(ref)
        seen.append((ref.sequence, ref.transport, ref.height, ref.width, in_place,
                     np.array_equal(copy.numpy(), pattern(ref.sequence))))
        if len(seen) >= 5:
            done.set()

    subscription = FrameSubscription(node, 'cuda_test/frame', on_frame, qos.frame_qos(True))
    name = iox_frames.service_name(subscription.topic, context.get_domain_id())
    publisher = iox_frames.IoxFramePublisher(name, cuda_frames.CONTROL_BYTES)
    writer = cuda_frames.CudaFrameWriter(H * W * 3, device=device)
    try:
        wait_until(lambda: publisher.subscribers() > 0, 60, lambda: f'reader still {subscription.iox_state}')
        for g in range(1, 6):
            loan = publisher.loan_control(H, W, cuda_frames.CONTROL_BYTES)
            writer.fill(loan, pattern(g))
            publisher.send(loan, sequence=g, frame_id='cam')
            wait_until(lambda: len(seen) >= g, 60, lambda: f'frame {g} never arrived: {subscription.stats()}')
        assert done.is_set()
        assert seen == [(g, FrameRef.TRANSPORT_CUDA, H, W, True, True) for g in range(1, 6)]
        assert not iox_refs.HELD._frames                 # every sample released after its callback
    finally:
        subscription.destroy()
        publisher.close()
        node.destroy_node()


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error paths')
def test_without_cuda_the_cuda_transport_says_so():
    from vidaction_ros.transport.cuda_frames import CudaFrameWriter, DeviceFrames
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        CudaFrameWriter(100)
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        DeviceFrames()


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error paths')
def test_without_cuda_a_consumer_of_a_cuda_frame_gets_frame_lost_with_the_reason():
    from vidaction_ros.msg import FrameRef
    from vidaction_ros.transport.frame_transport import borrow, resolve
    ref = FrameRef(transport=FrameRef.TRANSPORT_CUDA, store='vidaction/dunit/no_camera', slot=0, generation=1,
                   height=4, width=4, encoding='bgr8')
    with pytest.raises(FrameLost, match='CUDA'):
        resolve(ref)
    with pytest.raises(FrameLost, match='CUDA'):
        with borrow(ref):
            pass


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error paths')
def test_without_cuda_a_camera_on_the_cuda_transport_fails_configure_naming_it(context):
    from rclpy.parameter import Parameter
    from vidaction_ros.nodes.camera_node import CameraNode
    camera = CameraNode('camera', context=context,
                        parameter_overrides=[Parameter('transport', value='cuda'),
                                             Parameter('source', value='topic')])
    try:
        from rclpy.lifecycle import TransitionCallbackReturn
        assert camera.trigger_configure() != TransitionCallbackReturn.SUCCESS and not camera.configured
        assert camera.count_publishers('camera/frame') == 0       # nothing half-built left behind
    finally:
        camera.destroy_node()


def test_a_frame_ref_of_the_removed_shm_ring_is_frame_lost_naming_the_replacement():
    from vidaction_ros.msg import FrameRef
    from vidaction_ros.transport.frame_transport import resolve
    ref = FrameRef(transport=FrameRef.TRANSPORT_SHM, store='vidaction_old', slot=0, generation=1, height=4,
                   width=4, encoding='bgr8')
    with pytest.raises(FrameLost, match='iceoryx2'):
        resolve(ref)


# -- CUDA IPC: the wire format everywhere, the real thing only with a GPU ----------------------------------
def test_cuda_ipc_handle_wire_format_round_trips_and_rejects_garbage():
    fields = {'device': 0, 'storage_handle': b'\x01\x02', 'storage_size_bytes': 6, 'storage_offset_bytes': 0,
              'ref_counter_handle': b'\x03', 'ref_counter_offset': 0, 'event_handle': b'\x04',
              'event_sync_required': True, 'size': [1, 2, 3], 'stride': [6, 3, 1], 'tensor_offset': 0,
              'dtype': 'uint8'}
    assert cuda_ipc.decode_handle(cuda_ipc.encode_handle(fields)) == fields
    with pytest.raises(ValueError, match='bad magic'):
        cuda_ipc.decode_handle(b'\x80\x04pickle')
    with pytest.raises(ValueError, match='dtype'):
        cuda_ipc.decode_handle(cuda_ipc.encode_handle({**fields, 'dtype': 'object'}))


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error path')
def test_cuda_ipc_says_clearly_when_there_is_no_cuda():
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        cuda_ipc.share(None)


CUDA_CONSUMER = r'''
import sys, torch
from ros_helpers import wait_until
from vidaction_ros.transport import cuda_ipc
t = cuda_ipc.open_shared(bytes.fromhex(sys.stdin.readline().strip()))
print(int(t.sum().item()), tuple(t.shape), t.device.type, flush=True)
t[0, 0, 0] = 255                                  # the producer must see this: same device memory
torch.cuda.synchronize()
print('written', flush=True)
sys.stdin.readline()                               # keep the mapping until the producer has looked
'''


@pytest.mark.skipif(not HAS_CUDA, reason='needs torch with a CUDA device')
def test_cuda_ipc_shares_device_memory_with_another_process():
    import torch
    tensor = torch.arange(2 * 3 * 4, dtype=torch.uint8, device='cuda').reshape(2, 3, 4)
    expected = int(tensor.sum().item())
    with child(CUDA_CONSUMER) as proc:
        proc.stdin.write(cuda_ipc.share(tensor).hex() + '\n')
        proc.stdin.flush()
        assert proc.stdout.readline().split() == [str(expected), '(2,', '3,', '4)', 'cuda']
        assert proc.stdout.readline().strip() == 'written'
        torch.cuda.synchronize()
        assert int(tensor[0, 0, 0].item()) == 255
        finish(proc)


@contextmanager
def child(script: str, *args: str):
    """A Python child process on pipes, killed if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, '-c', script, *args], cwd=tempfile.gettempdir(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def finish(proc) -> None:
    """Tell a child waiting on its stdin to end, and expect a clean exit."""
    proc.stdin.write('\n')
    proc.stdin.flush()
    assert proc.wait(60) == 0


WRITER = r'''
import sys, time, torch
from vidaction_ros.transport import iox_frames
from vidaction_ros.transport.cuda_frames import CONTROL_BYTES, CudaFrameWriter
h, w, count, name = 48, 64, int(sys.argv[1]), sys.argv[2]
publisher = iox_frames.IoxFramePublisher(name, CONTROL_BYTES)
writer = CudaFrameWriter(h * w * 3)
rows = torch.arange(h, device='cuda', dtype=torch.int64).view(h, 1, 1).expand(h, w, 3)
print('ready', flush=True)
sys.stdin.readline()                                   # the reader is attached
for g in range(1, count + 1):
    frame = ((g * 7 + rows) % 256).to(torch.uint8)     # already on the GPU: device to device
    loan = publisher.loan_control(h, w, CONTROL_BYTES)
    writer.fill(loan, frame)
    publisher.send(loan, sequence=g)
    time.sleep(0.002)   # pacing: the reader holds frames across the next ones
print(len(writer.buffers), flush=True)
sys.stdin.readline()
publisher.close()
writer.close()
'''


@pytest.mark.skipif(not HAS_CUDA, reason='needs torch with a CUDA device')
def test_frames_on_the_gpu_cross_processes_and_a_held_frame_is_never_overwritten(iox_frames):
    import torch
    from vidaction_ros.transport.cuda_frames import DeviceFrames
    count = 400
    name = iox_frames.service_name(f'test/cuda_{uuid.uuid4().hex[:10]}', 'unit')
    with child(WRITER, str(count), name) as proc:
        assert proc.stdout.readline().strip() == 'ready'
        reader = iox_frames.IoxFrameReader(name)
        frames = DeviceFrames()
        rows = torch.arange(H, device='cuda', dtype=torch.int64).view(H, 1, 1).expand(H, W, 3)
        proc.stdin.write('\n')
        proc.stdin.flush()
        checked, held = 0, None
        while checked < 40:
            if not reader.wait(30.0):
                break
            frame = reader.take_newest()
            if frame is None:
                continue
            if held is not None:                     # held across the writer's next frames: still intact
                tensor = frames.view(held.control, name)
                assert torch.equal(tensor.to(torch.int64), (held.sequence * 7 + rows) % 256), held.sequence
                frames.synchronize(tensor)
                held.release()
                checked += 1
            held = frame
            if frame.sequence >= count:
                break
        assert checked >= 10, checked
        buffers = int(proc.stdout.readline())
        assert 1 <= buffers < 40, buffers
        if held is not None:
            held.release()
        reader.close()
        finish(proc)
