"""What the chapter 12 tests share: a tiny random-weight transformer and a small chat tokenizer."""

import torch

from llm_course.sft import add_chat_tokens
from llm_course.tokenizer import Tokenizer
from llm_course.transformer import Transformer, TransformerConfig

CHAT_TEXT = "Write about: list. A list of string objects. The good answer is bad. "


def tiny_model(vocab: int, context_length: int = 64, seed: int = 0) -> Transformer:
    """A 2-layer, 32-wide transformer with seeded random weights, in eval mode."""
    cfg = TransformerConfig(vocab_size=vocab, context_length=context_length, d_model=32, n_layers=2, n_heads=2)
    return Transformer(cfg, generator=torch.Generator().manual_seed(seed)).eval()


def chat_tokenizer(text: str = CHAT_TEXT) -> Tokenizer:
    """A 300-token BPE tokenizer trained on `text`, with <|endoftext|> and the chat tokens."""
    tokenizer = Tokenizer.train(text * 10, 300, special_tokens=["<|endoftext|>"])
    add_chat_tokens(tokenizer)
    return tokenizer
