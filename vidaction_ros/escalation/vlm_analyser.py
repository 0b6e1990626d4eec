"""A local vision-language model as an escalation analyser: the frame and a yes/no question in, a verdict out.

The model directory is a transformers image-text-to-text model saved with save_pretrained (config.json,
weights, tokenizer and processor files), e.g. SmolVLM, Qwen2-VL, PaliGemma or a LLaVA variant, on the
robot's disk. Everything loads with local_files_only=True: a robot has no network, and a missing file must
fail at startup with the path named, not hang on a download.

    processor  = AutoProcessor.from_pretrained(path)                       (tokenizer + image processor + chat template)
    model      = AutoModelForImageTextToText.from_pretrained(path)         (transformers >= 4.50, and 5.x;
                 AutoModelForVision2Seq on older 4.x, which lacks the former)
    prompt     = the processor's chat template over [image, question]      (or "<image>\\nquestion" without one)
    answer     = greedy generate(), at most max_new_tokens new tokens

The answer text is mapped to a verdict by its yes/no word (parse_yes_no): yes -> agree, no -> disagree,
anything else -> unsure. The confidence of a yes/no comes from the first generated token's distribution:
p(yes) / (p(yes) + p(no)) over the single-token spellings of "yes" and "no" (or of "no" for a no); when the
yes/no word is not the first word of the answer, or the vocabulary has no single-token yes/no, the verdict
stands with confidence 0.5 (no token-level estimate).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .types import VERDICT_AGREE, VERDICT_DISAGREE, VERDICT_UNSURE, AnalyserUnavailable, Answer

YES_WORDS = frozenset({'yes', 'yeah', 'yep', 'true', 'correct', 'affirmative'})
NO_WORDS = frozenset({'no', 'nope', 'false', 'incorrect', 'negative'})
_SPELLINGS = {'yes': ('yes', 'Yes', 'YES', ' yes', ' Yes', ' YES'),
              'no': ('no', 'No', 'NO', ' no', ' No', ' NO')}
DEVICES = ('cpu', 'cuda')
DTYPES = ('', 'fp32', 'fp16', 'bf16')


def parse_yes_no(text: str) -> tuple[str | None, bool]:
    """('yes' | 'no' | None, whether it was the first word). The first word decides when it is a yes/no
    word ("No, nobody is there"); otherwise the answer must contain yes-words or no-words, not both
    ("There is no person" -> no; "yes and no" -> None)."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None, False
    if words[0] in YES_WORDS:
        return 'yes', True
    if words[0] in NO_WORDS:
        return 'no', True
    found = {('yes' if w in YES_WORDS else 'no') for w in words if w in YES_WORDS or w in NO_WORDS}
    return (found.pop(), False) if len(found) == 1 else (None, False)


def check_model_dir(model_path: str) -> Path:
    """The directory, or AnalyserUnavailable naming what is wrong with it."""
    if not model_path:
        raise AnalyserUnavailable("analyser 'vlm' needs model_path: a local transformers image-text-to-text "
                                  "model directory (save_pretrained output)")
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise AnalyserUnavailable(f'vlm model_path {str(path)!r} is not a directory')
    config = path / 'config.json'
    if not config.is_file():
        raise AnalyserUnavailable(f'vlm model_path {str(path)!r} has no config.json: not a transformers model '
                                  f'directory (expected the output of save_pretrained)')
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise AnalyserUnavailable(f'{config}: unreadable ({err})') from None
    if not isinstance(data, dict) or 'model_type' not in data:
        raise AnalyserUnavailable(f'{config}: no model_type; not a transformers model config')
    return path


def _model_class(transformers):
    for name in ('AutoModelForImageTextToText', 'AutoModelForVision2Seq'):
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise AnalyserUnavailable(f'transformers {transformers.__version__} has neither AutoModelForImageTextToText '
                              f'nor AutoModelForVision2Seq; install transformers >= 4.50')


class LocalVlmAnalyser:
    name = 'vlm'

    def __init__(self, model_path: str, max_new_tokens: int = 16, device: str = 'cpu', dtype: str = '',
                 system_prompt: str = '', logger=None):
        if not 1 <= max_new_tokens <= 1024:
            raise ValueError(f'max_new_tokens must be in 1..1024, got {max_new_tokens}')
        if device not in DEVICES and not device.startswith('cuda:'):
            raise ValueError(f'device must be cpu, cuda or cuda:N, got {device!r}')
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
        self.path = check_model_dir(model_path)
        try:
            import torch
            import transformers
        except ImportError as err:
            raise AnalyserUnavailable(f"analyser 'vlm' needs torch and transformers: {err}") from None
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise AnalyserUnavailable(f'vlm device {device} but torch {torch.__version__} sees no CUDA GPU')
        self._torch = torch
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        started = time.perf_counter()
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(str(self.path), local_files_only=True)
        except ImportError as err:   # an image processor needs pillow or torchvision
            raise AnalyserUnavailable(f'cannot build the processor of {self.path}: {err}') from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AnalyserUnavailable(f'cannot load the processor from {self.path}: {err}') from None
        if not hasattr(self.processor, 'image_processor'):
            raise AnalyserUnavailable(f'{self.path}: the processor ({type(self.processor).__name__}) has no image '
                                      f'processor; is this a vision-language model?')
        dtype_name = dtype or ('fp16' if device.startswith('cuda') else 'fp32')
        torch_dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[dtype_name]
        model_class = _model_class(transformers)
        try:
            model = model_class.from_pretrained(str(self.path), local_files_only=True, dtype=torch_dtype)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AnalyserUnavailable(f'cannot load an image-text-to-text model from {self.path}: {err}') from None
        self.model = model.eval().to(device)
        self.dtype = dtype_name
        self.tokenizer = getattr(self.processor, 'tokenizer', None)
        if self.tokenizer is None:
            raise AnalyserUnavailable(f'{self.path}: the processor has no tokenizer')
        self.load_ms = (time.perf_counter() - started) * 1e3
        self.model_type = getattr(self.model.config, 'model_type', '?')
        self._answer_ids = {word: self._single_token_ids(spellings) for word, spellings in _SPELLINGS.items()}
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        if logger is not None:
            logger.info(f'vlm analyser: {self.model_type} from {self.path} ({self.dtype}, {device}) loaded in '
                        f'{self.load_ms:.0f} ms')

    @property
    def description(self) -> str:
        return f'{self.name} ({self.model_type} {self.path.name})'

    def _single_token_ids(self, spellings) -> list[int]:
        ids = set()
        for text in spellings:
            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
        return sorted(ids)

    def prompt(self, question: str) -> str:
        messages = []
        if self.system_prompt:
            messages.append({'role': 'system', 'content': [{'type': 'text', 'text': self.system_prompt}]})
        messages.append({'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': question}]})
        if getattr(self.processor, 'chat_template', None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, 'image_token', None) or '<image>'
        system = f'{self.system_prompt}\n' if self.system_prompt else ''
        return f'{system}{image_token}\n{question}'

    def analyse(self, frame_bgr: np.ndarray, question: str, context: Mapping[str, Any]) -> Answer:
        from ..perception.backends.base import check_bgr_frame
        torch = self._torch
        started = time.perf_counter()
        check_bgr_frame(frame_bgr)
        rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])   # processors expect RGB
        inputs = self.processor(images=rgb, text=self.prompt(question), return_tensors='pt').to(self.device)
        if 'pixel_values' in inputs and inputs['pixel_values'].is_floating_point():
            inputs['pixel_values'] = inputs['pixel_values'].to(self.model.dtype)
        prepared = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      return_dict_in_generate=True, output_scores=True,
                                      pad_token_id=self._pad_id)
        generated = time.perf_counter()
        new_tokens = out.sequences[0, inputs['input_ids'].shape[1]:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        word, first = parse_yes_no(text)
        p_yes = p_no = math.nan
        if out.scores:
            probs = torch.softmax(out.scores[0][0].float(), dim=-1)
            p_yes = float(probs[self._answer_ids['yes']].sum()) if self._answer_ids['yes'] else math.nan
            p_no = float(probs[self._answer_ids['no']].sum()) if self._answer_ids['no'] else math.nan
        token_level = first and math.isfinite(p_yes) and math.isfinite(p_no) and p_yes + p_no > 0
        support = p_yes / (p_yes + p_no) if token_level else math.nan
        if word is None:
            verdict, confidence = VERDICT_UNSURE, 0.0
        elif word == 'yes':
            verdict, confidence = VERDICT_AGREE, support if token_level else 0.5
        else:
            verdict, confidence = VERDICT_DISAGREE, 1.0 - support if token_level else 0.5
        return Answer(verdict=verdict, confidence=float(confidence), text=text or '(empty answer)',
                      support=float(support), elapsed_ms=(generated - started) * 1e3,
                      details={'new_tokens': int(new_tokens.numel()), 'preprocess_ms': (prepared - started) * 1e3,
                               'generate_ms': (generated - prepared) * 1e3, 'p_yes': p_yes, 'p_no': p_no})
