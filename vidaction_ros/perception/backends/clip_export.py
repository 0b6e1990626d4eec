"""Export a transformers CLIP / SigLIP directory to the vidaction ONNX directory:

    python -m vidaction_ros.perception.backends.clip_export HF_DIR OUT_DIR [--opset 17]

writes image_encoder.onnx (pixel_values Nx3xSxS -> image_embeds NxD), text_encoder.onnx (input_ids,
attention_mask NxL -> text_embeds NxD), tokenizer.json and vidaction_model.json. The batch dimension stays
dynamic; the TensorRT backend fixes it per engine profile. Runs where torch and transformers are installed
(a workstation); the robot then needs only onnxruntime or TensorRT.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .joint import IMAGE_ONNX, MANIFEST, TEXT_ONNX, TOKENIZER_JSON, hf_spec

OPSET = 17


def export(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, opset: int = OPSET) -> Path:
    import torch
    import transformers

    from .clip_torch import features

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    if not getattr(tokenizer, 'is_fast', False):
        raise ValueError(f'{hf_dir}: the tokenizer has no fast (tokenizers) form to save as tokenizer.json')
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    spec = hf_spec(hf_dir, int(pad_id))
    model = transformers.AutoModel.from_pretrained(hf_dir, local_files_only=True).eval().float()
    siglip = spec.model_type.startswith('siglip')

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return features(self.model.get_image_features(pixel_values=pixel_values))

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            if siglip:   # trained without a mask (see clip_torch); the export then has no mask input
                return features(self.model.get_text_features(input_ids=input_ids))
            return features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    out_dir.mkdir(parents=True, exist_ok=True)
    size, length = spec.image_size, spec.context_length
    with torch.no_grad():
        torch.onnx.export(ImageTower(), (torch.zeros(2, 3, size, size),), str(out_dir / IMAGE_ONNX),
                          input_names=['pixel_values'], output_names=['image_embeds'],
                          dynamic_axes={'pixel_values': {0: 'batch'}, 'image_embeds': {0: 'batch'}},
                          opset_version=opset, dynamo=False)
        ids = torch.full((2, length), spec.pad_id, dtype=torch.int64)
        torch.onnx.export(TextTower(), (ids, torch.ones_like(ids)), str(out_dir / TEXT_ONNX),
                          input_names=['input_ids', 'attention_mask'], output_names=['text_embeds'],
                          dynamic_axes={'input_ids': {0: 'batch'}, 'attention_mask': {0: 'batch'},
                                        'text_embeds': {0: 'batch'}},
                          opset_version=opset, dynamo=False)
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_JSON))
    # The manifest last: a directory without it is not a model, so an interrupted export is never loaded.
    (out_dir / MANIFEST).write_text(json.dumps(spec.to_manifest(), indent=2) + '\n')
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('hf_dir', help='transformers model directory (config.json, weights, tokenizer)')
    parser.add_argument('out_dir', help='directory to write the ONNX export into')
    parser.add_argument('--opset', type=int, default=OPSET)
    args = parser.parse_args(argv)
    try:
        out = export(args.hf_dir, args.out_dir, args.opset)
    except (OSError, ValueError) as err:
        print(f'clip_export: {err}', file=sys.stderr)
        return 2
    print(f'wrote {out}/{{{IMAGE_ONNX},{TEXT_ONNX},{TOKENIZER_JSON},{MANIFEST}}}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
