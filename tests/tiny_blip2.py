"""Build a tiny random-weight BLIP-2 model folder (vision + Q-Former + OPT) for offline tests.

Same form as Salesforce/blip2-opt-2.7b (Blip2ForConditionalGeneration + Blip2Processor with a
BlipImageProcessor and a fast tokenizer), so tools/auto_caption.py runs its real loading and
generation code on it; the weights are random, so the captions are word salad from a tiny vocab.
The tokenizer is built offline from a word list (no hub download). About 0.1 MB of weights.
"""
from __future__ import annotations

from pathlib import Path

WORDS = (
    "a photo of man woman person face smiling portrait looking at the camera with short hair "
    "wearing shirt suit tie in front background standing outdoor indoor light dark young old "
    "close up beard glasses and"
).split()
SPECIAL = ["<pad>", "</s>", "<unk>", "<image>"]
NUM_QUERY_TOKENS = 4
IMAGE_SIZE = 32


def build_tokenizer():
    """A WordLevel tokenizer over WORDS wrapped as a transformers fast tokenizer (OPT-style ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + list(dict.fromkeys(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<image>"],
    )


def build_tiny_blip2(folder: Path, seed: int = 0) -> Path:
    """Write a loadable tiny BLIP-2 (model + processor) to `folder` and return it."""
    import torch
    from transformers import (
        Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
        Blip2VisionConfig, BlipImageProcessor, OPTConfig,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=16, max_position_embeddings=32, cross_attention_frequency=1,
    )
    text = OPTConfig(
        vocab_size=vocab_size, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_index,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
