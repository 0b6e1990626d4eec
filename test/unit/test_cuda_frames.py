"""The cuda transport: frames in GPU memory shared by CUDA IPC behind a shared-memory control ring.

Without CUDA (this CI): every entry point says so clearly (camera configure, a consumer handed a cuda
FrameRef). With CUDA (the GPU machine; no ROS needed, cuda_frames imports none): a writer process fills
device slots with frames whose pixels encode their generation, a reader process maps them and checks every
pixel on the device (no host round trip), and a frame overwritten while a reader holds it is reported lost,
never read torn. Expected values from first principles: frame g is filled with (g * 7 + row) % 256.
"""
import subprocess
import sys
import tempfile
import time

import pytest

from vidaction_ros.transport import cuda_ipc
from vidaction_ros.transport.frame_store import FrameLost

HAS_CUDA = cuda_ipc.available()


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error paths')
def test_without_cuda_the_cuda_transport_says_so():
    from vidaction_ros.transport.cuda_frames import CudaFrameReader, CudaFrameWriter
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        CudaFrameWriter('vidaction_test_cuda_none')
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        CudaFrameReader('vidaction_test_cuda_none')


@pytest.mark.skipif(HAS_CUDA, reason='checks the no-CUDA error paths')
def test_without_cuda_a_consumer_of_a_cuda_frame_gets_frame_lost_with_the_reason():
    from vidaction_ros.msg import FrameRef
    from vidaction_ros.transport.frame_transport import borrow, resolve
    ref = FrameRef(transport=FrameRef.TRANSPORT_CUDA, store='vidaction_test_cuda_none', slot=0, generation=1,
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


WRITER = r'''
import sys, time, torch
from vidaction_ros.transport.cuda_frames import CudaFrameWriter
h, w, count = 48, 64, int(sys.argv[1])
writer = CudaFrameWriter(sys.argv[2], slots=4, max_bytes=h * w * 3)
rows = torch.arange(h, device='cuda', dtype=torch.int64).view(h, 1, 1).expand(h, w, 3)
print(writer.name, flush=True)
sys.stdin.readline()                                   # the reader is attached
for g in range(1, count + 1):
    frame = ((g * 7 + rows) % 256).to(torch.uint8)     # already on the GPU: device to device
    assert writer.write(frame) == ((g - 1) % 4, g)
    print(g, flush=True)
    time.sleep(0.002)
sys.stdin.readline()
writer.close()
'''


@pytest.mark.skipif(not HAS_CUDA, reason='needs torch with a CUDA device')
def test_frames_on_the_gpu_cross_processes_intact_or_reported_lost():
    import torch
    from vidaction_ros.transport.cuda_frames import CudaFrameReader
    count = 400
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(count), 'vidaction_test_cuda_frames'],
                            cwd=tempfile.gettempdir(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        name = proc.stdout.readline().strip()
        reader = CudaFrameReader(name)
        proc.stdin.write('\n')
        proc.stdin.flush()
        rows = torch.arange(48, device='cuda', dtype=torch.int64).view(48, 1, 1).expand(48, 64, 3)
        intact = lost = 0
        for line in proc.stdout:
            g = int(line)
            try:
                with reader.view((g - 1) % 4, g) as frame:
                    assert frame.device.type == 'cuda' and tuple(frame.shape) == (48, 64, 3)
                    ok = bool(torch.equal(frame.to(torch.int64), (g * 7 + rows) % 256))
                    if g % 50 == 0:
                        time.sleep(0.03)                  # hold it while the writer laps the 4 slots
                assert ok, f'frame {g} read torn'
                intact += 1
            except FrameLost:
                lost += 1
            if g == count:
                break
        assert intact + lost == count and intact > count // 2 and lost >= 1, (intact, lost)
        proc.stdin.write('\n')
        proc.stdin.flush()
        assert proc.wait(60) == 0
        reader.close()
    finally:
        if proc.poll() is None:
            proc.kill()

