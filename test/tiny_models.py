"""Tiny randomly initialised CLIP and SigLIP models, built by the tests themselves (nothing downloaded):
a real transformers architecture and a real BPE tokenizer trained on a few sentences, saved the way a
robot's model directory is (config.json, model.safetensors, tokenizer files, preprocessor_config.json).

The weights are random, so what the tests can check is plumbing, not meaning: the same text gives the same
ids and vectors under every runtime, the vectors match what transformers itself computes, regions are the
embeddings of their crops, and broken directories fail with the file and field named.
"""
from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    'a person walking on the grass near the camera', 'a car driving on the road', 'an empty street at night',
    'people crossing the road', 'a drone flying over trees', 'a wall right in front of the robot',
    'a photo of a dog', 'the path ahead is clear', 'a bicycle parked beside a fence',
]
IMAGE_SIZE = 32
CONTEXT = 24
DIM = 16          # CLIP's projection; SigLIP embeds in the vision width (32)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token='<|endoftext|>'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=['<|startoftext|>', '<|endoftext|>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos, eos = tok.token_to_id('<|startoftext|>'), tok.token_to_id('<|endoftext|>')
    tok.post_processor = processors.TemplateProcessing(
        single='<|startoftext|> $A <|endoftext|>', special_tokens=[('<|startoftext|>', bos), ('<|endoftext|>', eos)])
    return tok, bos, eos


# The published CLIP ViT-B/32 image tower's shape (87.5 M parameters; weights random): GPU timing runs
# (bench/device/run.sh), where the cost of the real architecture matters and the meaning does not.
B32_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32)
B32_PROJECTION = 512


def build(kind: str, out: Path, seed: int = 0, vision_tower: str = 'tiny') -> Path:
    """Write a random `kind` ('clip' or 'siglip') model directory to out and return it. vision_tower 'b32'
    (clip only): the ViT-B/32 image tower at 224 px beside the tiny text tower."""
    import torch
    import transformers
    tok, bos, eos = _tokenizer()
    text = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CONTEXT, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8)
    projection, size = DIM, IMAGE_SIZE
    if vision_tower == 'b32' and kind == 'clip':
        vision, projection, size = B32_VISION, B32_PROJECTION, B32_VISION['image_size']
    elif vision_tower != 'tiny':
        raise ValueError(f'vision_tower {vision_tower!r}: tiny, or b32 for clip')
    torch.manual_seed(seed)
    if kind == 'clip':
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=projection))
        pre = {'do_center_crop': True, 'size': {'shortest_edge': size},
               'crop_size': {'height': size, 'width': size},
               'image_mean': [0.48145466, 0.4578275, 0.40821073], 'image_std': [0.26862954, 0.26130258, 0.27577711]}
    elif kind == 'siglip':
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        pre = {'do_center_crop': False, 'size': {'height': IMAGE_SIZE, 'width': IMAGE_SIZE},
               'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.5, 0.5, 0.5]}
    else:
        raise ValueError(kind)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<|startoftext|>', eos_token='<|endoftext|>', pad_token='<|endoftext|>',
        unk_token='<|endoftext|>', model_max_length=CONTEXT).save_pretrained(out)
    (out / 'preprocessor_config.json').write_text(json.dumps(pre))
    return out
