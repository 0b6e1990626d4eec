"""A transformers CLIP / SigLIP directory run by torch: on the CPU (backend clip_hf, fp32) or on CUDA
(backend torch_cuda, fp16 by default).

Loads strictly from the local directory (local_files_only): a robot has no network, and a missing file
must fail at startup with its name, not hang on a download.

Two image paths, one model:
  * cv2 (the default on the CPU): joint.preprocess on the host, then the pixels go to the model. On a CPU a
    cv2 resize of a 640x480 frame (~1 ms) is cheaper than the same work in torch, so clip_hf keeps it.
  * torch (the default on CUDA, `torch_preprocess=True` anywhere): the uint8 frame goes to the device once
    (numpy frames through a reused pinned staging buffer with an asynchronous copy; a torch tensor already on
    the device, e.g. from vidaction_ros.transport.cuda_ipc, is used in place), the frame and its region crops are
    resized / cropped / normalised there (gpu_preprocess, the same numbers as joint.preprocess), and all
    crops of all frames of one call run as one batch.
On CUDA, with `cuda_graph=True`, the image encoder of a batch size seen before is replayed from a captured
CUDA graph (static input / output buffers): batch 1 is captured at activation, another size (a frame plus its
regions, a micro-batch of frames) the second time it occurs, at most MAX_GRAPHS sizes; other sizes, and any
size whose capture fails, run eagerly.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from .base import BackendUnavailable, FrameEmbedding, check_bgr_frame
from .joint import JointEmbeddingBackend, directory_format, hf_spec, per_frame_embeddings, preprocess, require

PRECISIONS = ('fp32', 'fp16', 'bf16')
# Distinct batch sizes that get a CUDA graph: each holds its activations in a private memory pool, so the
# count is bounded; 4 covers batch 1, frame + regions and a micro-batch size or two.
MAX_GRAPHS = 4
GRAPH_WARMUP_RUNS = 3   # eager runs on the capture stream before capture (lazy init, cuBLAS workspaces)


def features(output):
    """get_*_features returns a tensor in transformers 4 and a ModelOutput (pooler_output) in 5."""
    return output if hasattr(output, 'dtype') else output.pooler_output


class ClipTorchBackend(JointEmbeddingBackend):
    name = 'clip_hf'
    default_device = 'cpu'
    accepts_tensors = True          # CUDA frames (cuda transport) are preprocessed in place on the device

    def __init__(self, model_path: str = '', device: str = '', precision: str = '', threads: int = 1,
                 load_images: bool = True, logger=None, cuda_graph: bool = True,
                 torch_preprocess: bool | None = None):
        """cuda_graph: on a CUDA device, replay the image encoder from CUDA graphs (see the module doc);
        ignored on the CPU. torch_preprocess: the torch image path (None = on for CUDA, off for the CPU)."""
        super().__init__(model_path, load_images, logger)
        self.device = device or self.default_device
        if self.device not in ('cpu', 'cuda') and not self.device.startswith('cuda:'):
            raise ValueError(f'device must be cpu, cuda or cuda:N, got {self.device!r}')
        self.precision = precision or ('fp16' if self.device.startswith('cuda') else 'fp32')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS} for {self.name}, got {self.precision!r}')
        if self.device == 'cpu' and self.precision == 'fp16':
            raise ValueError('precision fp16 needs device cuda (CPU fp16 matmuls are slower than fp32)')
        if threads < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        self.threads = threads
        self.cuda_graph = bool(cuda_graph)
        self.torch_preprocess = self.device != 'cpu' if torch_preprocess is None else bool(torch_preprocess)
        self._torch = None
        self._model = None
        # The image path reuses buffers (staging, graph inputs): one call at a time, whatever the executor.
        self._image_lock = threading.Lock()
        self.score_table = None      # policy/score_table.ScoreTable: prompt rules scored on the device
        self._reset_image_state()

    def _reset_image_state(self) -> None:
        # Set lazily by the first image call rather than in activate(): subclasses that load a model their
        # own way (bench/embed.py's random towers) override activate() and still get this path.
        self._device = None          # torch.device with an index ('cuda' -> 'cuda:<current>')
        self._gpu_preprocess = None  # the module, imported with torch
        self._pre_cache = {}         # gpu_preprocess weight matrices / constants on the device
        self._staging = []           # per frame slot of a call: (pinned host buffer, device buffer)
        self._graphs = {}            # batch size (+ 's' when scored) -> (static input, static output, CUDAGraph)
        self._eager_runs = {}        # the same keys -> eager runs so far (capture on the second)
        self._graph_failed = set()   # keys whose capture failed: eager from then on
        self._graph_stream = None
        self._scorer = None          # device_scoring.DeviceScorer of the attached score table

    def activate(self) -> None:
        torch = require('torch', self.name, 'install torch (CPU build here, CUDA build on the robot)')
        transformers = require('transformers', self.name, 'pip install transformers')
        try:
            fmt = directory_format(self.model_path)
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        if fmt != 'hf':
            raise BackendUnavailable(f'backend {self.name} needs a transformers directory (config.json); '
                                     f'{self.model_path} is an ONNX export: use backend clip_onnx or tensorrt')
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailable(f'backend {self.name}: device {self.device} but torch sees no CUDA GPU '
                                     f'(torch {torch.__version__})')
        if self.device == 'cpu':
            torch.set_num_threads(self.threads)
        self._torch = torch
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise BackendUnavailable(f'cannot load {self.model_path}: {err}') from None
        pad_id = self.hf_tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.hf_tokenizer.eos_token_id
        try:
            spec = hf_spec(self.model_path, int(pad_id))
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        self._set_spec(spec)
        dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[self.precision]
        self._dtype = dtype
        self._model = model.eval().to(device=self.device, dtype=dtype)
        self.tokenizer = self._tokenize
        self._reset_image_state()
        if self.load_images:
            self.embed_images([np.zeros((spec.image_size, spec.image_size, 3), np.uint8)])  # warm-up
            if self._graphs_enabled():
                # Capture batch 1 now, at startup, so the first real frame already replays it.
                with self._image_lock, torch.inference_mode(), self._on_device():
                    self._capture(1)

    def warm_up(self, regions=(), frame_shape=(480, 640)) -> list[int]:
        """Every batch a live frame can need (1: no regions, 1 + regions) is run, and on CUDA with graphs
        captured, now: a capture while frames flow stalls that frame (tens of ms)."""
        batches = sorted({1, 1 + len(regions)})
        if self._graphs_enabled():
            with self._image_lock, self._torch.inference_mode(), self._on_device():
                self._prepare_image_path()
                scored = self._scorer_for(regions)
                for batch in batches:
                    # The frame with its regions is the batch the policy's scores come from: scored there.
                    scorer = scored if batch == 1 + len(regions) else None
                    key = self._graph_key(batch, scorer)
                    if key not in self._graphs and key not in self._graph_failed and len(self._graphs) < MAX_GRAPHS:
                        self._capture(batch, scorer)
        frame = np.full((int(frame_shape[0]), int(frame_shape[1]), 3), 127, np.uint8)
        self.embed_images([frame])                       # the preprocessing path at the working size too
        if regions:
            self.embed_images([frame], list(regions))
        return batches

    def deactivate(self) -> None:
        self._model = None
        self.tokenizer = None
        with self._image_lock:
            self._reset_image_state()      # graphs, pinned buffers and device buffers go with the model
        if self._torch is not None and self.device.startswith('cuda'):
            self._torch.cuda.empty_cache()

    def attach_score_table(self, table) -> None:
        """Score the policy's prompt rules on the device with every frame embedded with table.views' regions
        (policy/score_table.py; None detaches): FrameEmbedding.scores. Call before warm_up, so the scored
        batch's graph is captured at configure."""
        with self._image_lock:
            self.score_table = table
            self._scorer = None
            self._graphs, self._eager_runs, self._graph_failed = {}, {}, set()

    def _scorer_for(self, regions):
        """The DeviceScorer when these regions are the score table's views (in order), else None."""
        table = self.score_table
        if table is None or tuple(r.name for r in regions) != table.views[1:]:
            return None
        if self._scorer is None:
            from .device_scoring import DeviceScorer
            self._scorer = DeviceScorer(table, self._torch, self._device)
        return self._scorer

    def _tokenize(self, texts):
        enc = self.hf_tokenizer(list(texts), padding='max_length', truncation=True,
                                max_length=self.spec.context_length, return_tensors='np')
        ids = enc['input_ids'].astype(np.int64)
        mask = enc.get('attention_mask')
        mask = np.ones_like(ids) if mask is None else mask.astype(np.int64)
        return ids, mask

    # -- images ------------------------------------------------------------------------------------------
    def embed_images(self, frames, regions=()) -> list[FrameEmbedding]:
        """bgr8 frames as HxWx3 uint8 numpy arrays or torch tensors (on any device)."""
        if self.spec is None or not self.load_images or self._model is None:
            raise RuntimeError('backend not activated for images')
        frames, regions = list(frames), list(regions)
        torch = self._torch
        with self._image_lock, torch.inference_mode():
            self._prepare_image_path()
            with self._on_device():
                return self._embed_images_locked(frames, regions)

    def _embed_images_locked(self, frames: list, regions: list) -> list[FrameEmbedding]:
        if self.torch_preprocess:
            crops = self._crops(self._to_device([self._check_frame(f) for f in frames]), regions)
            if not crops:
                return []
            pixels = self._gpu_preprocess.preprocess(crops, self.spec, cache=self._pre_cache)
        else:
            # cv2 path (joint.preprocess): a tensor frame comes to the host once, as numpy.
            crops = self._crops([check_bgr_frame(self._host_frame(f)) for f in frames], regions)
            if not crops:
                return []
            pixels = self._torch.from_numpy(preprocess(crops, self.spec)).to(self._device)
        # All crops of all frames in one batch: one forward (or one graph replay) per call.
        scorer = self._scorer_for(regions)
        if scorer is None:
            vectors = self._checked(self._forward(pixels), len(crops), 'image')
            return per_frame_embeddings(vectors, len(frames), regions)
        # Embeddings and every prompt rule's score in one device computation, one copy to the host.
        vectors, scores = scorer.split(self._forward(pixels, scorer), len(frames), self.dim)
        results = per_frame_embeddings(self._checked(vectors, len(crops), 'image'), len(frames), regions)
        for result, frame_scores in zip(results, scorer.as_dicts(scores)):
            result.scores = frame_scores
        return results

    @staticmethod
    def _crops(frames: list, regions: list) -> list:
        """Each frame, then its region crops (views: no copy), frame by frame."""
        crops = []
        for frame in frames:
            h, w = int(frame.shape[0]), int(frame.shape[1])
            crops.append(frame)
            for region in regions:
                x0, y0, x1, y1 = region.pixel_bbox(w, h)
                crops.append(frame[y0:y1, x0:x1])
        return crops

    def _prepare_image_path(self) -> None:
        if self._device is not None:
            return
        torch = self._torch
        device = torch.device(self.device)
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())   # so tensor.device compares equal
        if self.torch_preprocess:
            from . import gpu_preprocess   # imports torch: only once the backend runs
            self._gpu_preprocess = gpu_preprocess
        self._device = device

    def _on_device(self):
        # A CUDA graph replays on the current device's stream: make the backend's device current.
        if self._device.type == 'cuda':
            return self._torch.cuda.device(self._device)
        return contextlib.nullcontext()

    def _graphs_enabled(self) -> bool:
        return self.cuda_graph and self.device.startswith('cuda')

    def _check_frame(self, frame):
        if isinstance(frame, np.ndarray):
            return check_bgr_frame(frame)
        if isinstance(frame, self._torch.Tensor):
            return self._gpu_preprocess.check_frame_tensor(frame)
        raise ValueError(f'frame must be a numpy array or a torch tensor, got {type(frame).__name__}')

    def _host_frame(self, frame):
        if isinstance(frame, self._torch.Tensor):
            from .gpu_preprocess import check_frame_tensor
            return check_frame_tensor(frame).detach().cpu().numpy()
        return frame                                    # numpy or garbage: check_bgr_frame says which

    def _to_device(self, frames: list) -> list:
        """The checked frames as HxWx3 uint8 tensors on the backend's device, each uploaded once."""
        torch = self._torch
        out = []
        for slot, frame in enumerate(frames):
            if isinstance(frame, torch.Tensor):
                if frame.device == self._device:
                    out.append(frame)                   # already there (cuda_ipc): no copy at all
                    continue
                if frame.device.type != 'cpu' or self._device.type == 'cpu':
                    out.append(frame.to(self._device))  # GPU -> CPU, or peer GPU -> GPU
                    continue
                frame = frame.detach().numpy()          # host tensor -> the pinned staging path below
            if self._device.type == 'cpu':
                # from_numpy shares memory; it needs positive strides and warns on read-only arrays (frames
                # made with np.frombuffer), so those are copied: cheap next to a CPU forward.
                if not frame.flags.writeable or any(s < 0 for s in frame.strides):
                    frame = np.array(frame)
                out.append(torch.from_numpy(frame))
            else:
                out.append(self._upload(slot, frame))
        return out

    def _upload(self, slot: int, frame: np.ndarray):
        """numpy frame -> device through a reused page-locked buffer: a host memcpy into pinned memory,
        then an asynchronous DMA ordered before preprocessing on the same stream. One slot per frame of a
        call, so frames of a micro-batch never overwrite each other's staging while a copy is in flight;
        every call ends with a device->host copy of the vectors, which orders the next call's reuse."""
        torch = self._torch
        nbytes = frame.nbytes
        while len(self._staging) <= slot:
            self._staging.append(None)
        buffers = self._staging[slot]
        if buffers is None or buffers[0].numel() < nbytes:
            host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            dev = torch.empty(nbytes, dtype=torch.uint8, device=self._device)
            buffers = self._staging[slot] = (host, dev)
        host, dev = buffers[0][:nbytes], buffers[1][:nbytes]
        np.copyto(host.numpy().reshape(frame.shape), frame)   # handles strided views, e.g. a sliced frame
        dev.copy_(host, non_blocking=True)
        return dev.view(frame.shape)

    # -- the encoder, eager or from a CUDA graph -----------------------------------------------------------
    def _run_model(self, pixels, scorer=None):
        out = features(self._model.get_image_features(pixel_values=pixels)).float()
        return out if scorer is None else scorer(out)

    @staticmethod
    def _graph_key(batch: int, scorer):
        return batch if scorer is None else f'{batch}s'

    def _forward(self, pixels, scorer=None) -> np.ndarray:
        """(N, 3, S, S) float tensor on the device -> (N, dim) float32 numpy (not yet normalised); with a
        scorer, its packed output (unit vectors, then the scores) instead."""
        batch = int(pixels.shape[0])
        key = self._graph_key(batch, scorer)
        entry = self._graph_for(batch, scorer) if self._graphs_enabled() else None
        if entry is None:
            self._eager_runs[key] = self._eager_runs.get(key, 0) + 1
            return self._run_model(pixels.to(self._dtype), scorer).cpu().numpy()
        static_in, static_out, graph = entry
        static_in.copy_(pixels)          # refresh the captured input buffer (casts to the model dtype)
        graph.replay()
        # .cpu() waits for the replay and copies the result out before a later replay overwrites it.
        return static_out.cpu().numpy()

    def _graph_for(self, batch: int, scorer=None):
        key = self._graph_key(batch, scorer)
        entry = self._graphs.get(key)
        if entry is not None or key in self._graph_failed or len(self._graphs) >= MAX_GRAPHS:
            return entry
        # A size seen once may be a one-off: capture on its second occurrence, after one eager run.
        if self._eager_runs.get(key, 0) < 1:
            return None
        return self._capture(batch, scorer)

    def _capture(self, batch: int, scorer=None):
        """Capture the image encoder at this batch size (torch.cuda.graph, as the PyTorch CUDA-graph docs
        prescribe: warm-up on a side stream, then capture on that same stream). On failure (an op that
        cannot be captured in some model) log once and run this size eagerly."""
        torch = self._torch
        self._prepare_image_path()
        key = self._graph_key(batch, scorer)
        size = self.spec.image_size
        try:
            with torch.cuda.device(self._device):
                static_in = torch.zeros((batch, 3, size, size), dtype=self._dtype, device=self._device)
                if self._graph_stream is None:
                    self._graph_stream = torch.cuda.Stream(device=self._device)
                stream = self._graph_stream
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(GRAPH_WARMUP_RUNS):
                        self._run_model(static_in, scorer)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    static_out = self._run_model(static_in, scorer)
                torch.cuda.current_stream().wait_stream(stream)
        except RuntimeError as err:
            self._graph_failed.add(key)
            self.log.warning(f'{self.name}: CUDA graph capture at batch {batch} failed, running it eagerly: '
                             f'{err}')
            return None
        self._graphs[key] = (static_in, static_out, graph)
        what = ' with the policy\'s prompt scores' if scorer is not None else ''
        self.log.info(f'{self.name}: captured a CUDA graph of the image encoder{what} at batch {batch}')
        return self._graphs[key]

    # -- text ----------------------------------------------------------------------------------------------
    def _encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            if self.spec.model_type.startswith('siglip'):
                # SigLIP was trained on max_length padding without a mask: pass none, as its processor does.
                out = self._model.get_text_features(input_ids=ids)
            else:
                out = self._model.get_text_features(input_ids=ids, attention_mask=mask)
            return features(out).float().cpu().numpy()


class TorchCudaBackend(ClipTorchBackend):
    """The same model on a CUDA GPU in fp16 (bf16 / fp32 on request): uint8 frames uploaded once (pinned
    staging or a tensor already on the GPU), preprocessing on the GPU, the image encoder from CUDA graphs.
    Everything after the upload also runs on device='cpu' (tests); graphs are CUDA-only."""
    name = 'torch_cuda'
    default_device = 'cuda'
