"""Embedding node: FrameRef in, Embedding out (full frame + each region of interest the policy names).

The model loads before the subscription exists, so a frame is never accepted by a node that cannot
embed it yet; text prompts are embedded by the policy node once at startup, never per frame.
"""
from __future__ import annotations

import time


from .. import qos
from ..transport import intra_process
from ..perception.backends import CHOICES, DETECTOR_CHOICES, create_backend
from ..conversions import float32_field, ms_between, to_time
from ..diagnostics import DiagnosticsPublisher, RateMeter, health
from ..transport.frame_store import FrameLost
from ..ingest.image_codec import ImageFormatError
from ..msg import Detection, Embedding, FrameRef, PromptScore, RegionEmbedding
from ..params import Param
from ..paths import resolve_policy_file
from ..stats import LatencyWindow
from ..transport.frame_transport import DISPATCH, FrameSubscription, borrow, host_array, resolve
from .lifecycle import INTRA_PROCESS, ManagedNode
from .runtime import main_for

# Shared with the policy node, whose text side must be the same model.
BACKEND_PARAMS = [
    Param('backend', 'cpu', 'embedding backend: cpu (offline default), clip_onnx, clip_hf, torch_cuda, tensorrt, '
          'or auto (the fastest this machine and model_path allow)', choices=CHOICES),
    Param('model_path', '', 'model directory for the CLIP-style backends: a transformers directory (clip_hf, '
          'torch_cuda) or an ONNX export from vidaction_ros.perception.backends.clip_export (clip_onnx, tensorrt)'),
    Param('device', '', 'clip_onnx / clip_hf / torch_cuda: cpu or cuda ("" = the backend\'s default)',
          choices=('', 'cpu', 'cuda')),
    Param('precision', '', 'torch_cuda: fp16 / bf16 / fp32; tensorrt: fp16 / int8 / fp8 / fp32 '
          '("" = the backend\'s default, fp16 on a GPU)', choices=('', 'fp32', 'fp16', 'bf16', 'int8', 'fp8')),
    Param('detector', 'coco', 'cpu backend: object detector whose classes join the scene context: coco '
          '(YOLOv3-tiny, 80 COCO classes: people, bicycles, vehicles, ...), hog (OpenCV\'s upright-people '
          'detector, cheaper) or none',
          choices=DETECTOR_CHOICES),
    Param('threads', 1, 'CPU threads of the model runtime (the cpu backend\'s detector uses OpenCV threads '
          'beside it)', 1, 64),
]

PARAMS = BACKEND_PARAMS + [
    INTRA_PROCESS,
    Param('policy_file', '', 'policy YAML whose regions of interest are embedded besides the full frame ("" = package default)'),
    Param('max_batch', 4, 'tensorrt: engine batch profile; needs 1 + the number of policy regions', 1, 64),
    Param('engine_cache_dir', '', 'tensorrt: where built engines are cached ("" = ~/.cache/vidaction_ros/tensorrt)'),
    Param('calibration_source', '', 'tensorrt int8 on a float ONNX: video of the robot\'s scenes to calibrate on'),
    Param('calibration_frames', 256, 'tensorrt int8: frames taken evenly from calibration_source', 1, 100000),
    Param('cuda_graph', True, 'torch_cuda: replay the image encoder from CUDA graphs (the batch sizes live '
          'frames need, 1 and 1 + policy regions, captured at configure; any other the second time it occurs); '
          'false = eager'),
    Param('prompt_scoring', 'auto', 'where the policy\'s prompt rules are scored: embedder (with the embedding, on the '
          'backend\'s device, in the same computation: inside the CUDA graph on torch_cuda; the scores travel in the '
          'Embedding; torch backends: clip_hf, torch_cuda), policy (the policy node scores the vectors), auto '
          '(embedder for torch backends on CUDA, else policy)', choices=('auto', 'embedder', 'policy')),
    Param('borrow_frames', True, 'iox / cuda transports: embed the frame in place (the iceoryx2 sample, the device '
          'buffer: held, so never rewritten, until the callback returns); false: a private copy first (~0.1 ms at '
          '640x480). Composed mode is by reference either way'),
    Param('frame_dispatch', 'thread', 'where the frame callback runs: thread (its own, at once), inline (composed '
          'mode: on the camera\'s publishing thread when that may wait, the lowest latency: a topic or lock-step '
          'camera waits for the embedding; a live capture thread never does, its frames go as thread) or '
          'executor (this node\'s executor, ~0.4 ms later)',
          choices=DISPATCH),
    Param('lockstep', False, 'reliable deep frame queue (deterministic replay) instead of newest-wins'),
]


def backend_params(p: dict, logger=None) -> dict:
    """The backend constructor arguments from a node's parameters (create_backend keeps those it takes)."""
    names = ('model_path', 'device', 'precision', 'detector', 'threads', 'max_batch', 'engine_cache_dir',
             'calibration_source', 'calibration_frames', 'cuda_graph')
    return {**{n: p[n] for n in names if n in p}, 'logger': logger}


class EmbedderNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'embedder', **kwargs):
        super().__init__(name, **kwargs)
        self.counts = {'received': 0, 'embedded': 0, 'lost': 0, 'bad_input': 0, 'dropped': 0, 'errors': 0}
        self.latency = LatencyWindow()
        self.backend = None
        self.frames: FrameSubscription | None = None
        self.policy = None                     # the policy file: its regions (and prompts, when scoring)
        self.regions = []
        self.score_table = None                # policy/score_table.ScoreTable when the backend scores
        self.warmed_batches: list[int] = []    # batch sizes run at configure (backend.warm_up)
        self._rates = RateMeter()
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if self.p['autostart']:
            self.bring_up()

    def configure(self) -> None:
        from ..policy import load_policy
        self.policy = load_policy(resolve_policy_file(self.p['policy_file']))
        self.regions = list(self.policy.regions.values())
        started = time.monotonic()
        self.backend = create_backend(self.p['backend'], **backend_params(self.p, self.get_logger()))
        self.backend.activate()
        loaded = time.monotonic()
        self.score_table = self._attach_score_table()
        # Every batch size live frames need is run (on CUDA: captured) before activation, not on a live frame.
        self.warmed_batches = self.backend.warm_up(self.regions)
        self.get_logger().info(f'backend {self.backend.name} ({self.backend.model_id}, dim {self.backend.dim}) '
                               f'ready in {loaded - started:.1f} s, warmed up (batch {self.warmed_batches}) in '
                               f'{time.monotonic() - loaded:.2f} s; regions: {[r.name for r in self.regions]}')
        self._last_sequence = None
        self.publisher = self.own(intra_process.publisher(self, Embedding, 'embedding', qos.EMBEDDING,
                                                          self.p['intra_process']))
        # Frames from a camera in this process are handed over directly, from an iox / cuda camera by iceoryx2,
        # else by the FrameRef on DDS (once each).
        # Default 'thread' dispatch: the callback runs on the subscription's own thread as soon as the frame is
        # there (through the executor's guard condition costs ~0.4 ms more per frame on 2 cores:
        # bench/transport.py --dispatch executor); this node's executor keeps only timers and lifecycle
        # services, and cleanup() destroys the subscription, waiting for a running callback, before it
        # releases the backend.
        self.frames = FrameSubscription(self, 'camera/frame', self._on_frame, qos.frame_qos(self.p['lockstep']),
                                        dispatch=self.p['frame_dispatch'])

    def _attach_score_table(self):
        """The policy's prompt rules scored with the embedding on the backend's device (parameter prompt_scoring):
        the prompts are embedded here once, as the policy node does; None when this backend does not score."""
        mode = self.p['prompt_scoring']
        can = hasattr(self.backend, 'attach_score_table')
        if mode == 'policy' or (mode == 'auto' and not (can and str(self.backend.device).startswith('cuda'))):
            return None
        if not can:
            raise ValueError(f"parameter 'prompt_scoring': embedder needs a torch backend (clip_hf, torch_cuda), "
                             f"got backend {self.backend.name}; set it to auto or policy")
        from ..policy import PolicyEngine
        from ..policy.score_table import build_score_table
        engine = PolicyEngine(self.policy, self.backend.embed_texts, logger=self.get_logger())
        table = build_score_table(engine, [r.name for r in self.regions], self.backend.model_id)
        self.backend.attach_score_table(table)
        if table is not None:
            self.get_logger().info(f'prompt rules {list(table.rules)} scored on {self.backend.device} with the '
                                   f'embedding (prompt set {table.digest})')
        return table

    def cleanup(self) -> None:
        if self.frames is not None:
            self.frames.destroy()
            self.frames = None
        if self.backend is not None:
            self.backend.deactivate()
        self.backend = None

    def _on_frame(self, ref: FrameRef) -> None:
        if not self.active:
            return
        self.counts['received'] += 1
        if self._last_sequence is not None and ref.sequence > self._last_sequence + 1:
            # Frames the newest-wins queue replaced while we were busy: counted, not silent.
            self.counts['dropped'] += ref.sequence - self._last_sequence - 1
        self._last_sequence = ref.sequence
        times = ref.times
        times.embed_start = to_time(time.time())
        try:
            if self.p['borrow_frames']:
                # The sample itself, held by this process until the callback returns: the camera cannot rewrite it.
                with borrow(ref) as image:
                    result = self.backend.embed_images([self._for_backend(image)], self.regions)[0]
            else:
                # Composed: the camera's very array (no copy). iox / cuda: a private copy of the sample's frame.
                result = self.backend.embed_images([self._for_backend(resolve(ref))], self.regions)[0]
        except FrameLost as err:
            self.counts['lost'] += 1
            self.get_logger().warning(f'frame {ref.sequence} lost: {err}', throttle_duration_sec=5.0)
            return
        except (ImageFormatError, ValueError) as err:
            self.counts['bad_input'] += 1
            self.get_logger().warning(f'frame {ref.sequence} rejected: {err}', throttle_duration_sec=5.0)
            return
        except RuntimeError as err:   # the model itself failed (e.g. non-finite output): skip, never publish it
            self.counts['errors'] += 1
            self.get_logger().error(f'frame {ref.sequence}: embedding failed: {err}', throttle_duration_sec=5.0)
            return
        times.embed_end = to_time(time.time())
        msg = Embedding()
        msg.header = ref.header
        msg.sequence = ref.sequence
        msg.model = self.backend.model_id
        msg.dim = int(result.vector.size)
        msg.vector = float32_field(result.vector)
        for name, region in result.regions.items():
            msg.regions.append(RegionEmbedding(name=name, vector=float32_field(region.vector),
                                               detections=region.detections,
                                               detection_confidence=float(region.confidence)))
        msg.top_concepts = list(result.top_concepts)
        msg.detections = [Detection(label=d.label, confidence=float(d.confidence), x_min=float(d.x0),
                                    y_min=float(d.y0), x_max=float(d.x1), y_max=float(d.y1),
                                    regions=list(d.regions)) for d in result.detections]
        if result.scores is not None and self.score_table is not None:
            msg.scores = [PromptScore(rule=name, score=score, best_prompt=best)
                          for name, (score, best) in result.scores.items()]
            msg.scores_digest = self.score_table.digest
        msg.times = times
        self.publisher.publish(msg)
        self.counts['embedded'] += 1
        self.latency.add(ms_between(times.embed_start, times.embed_end))

    def _for_backend(self, image):
        # cuda transport: torch backends take the GPU frame in place; the others get it on the host.
        return image if self.backend.accepts_tensors else host_array(image)

    def _diagnostics(self):
        backend = self.backend
        info = {'lifecycle': 'active' if self.active else 'inactive' if self.configured else 'unconfigured',
                'backend': backend.name if backend else self.p['backend'],
                'model': backend.model_id if backend else '', 'dim': backend.dim if backend else 0,
                'device': backend.device if backend else '', 'regions': len(self.regions)}
        if self.frames is not None:    # how frames arrive: 'local' (composed), 'iox', 'dds'
            info['frames_via'] = ' '.join(f'{k}={v}' for k, v in self.frames.counts.items() if v)
        latency = {f'embed_{k}': v for k, v in self.latency.summary().items()}
        return health(self.counts, self._rates.rates(self.counts, time.monotonic()), latency, info)


def main(args=None) -> int:
    return main_for(EmbedderNode)


if __name__ == '__main__':
    raise SystemExit(main())
