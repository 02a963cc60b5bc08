"""Shared builders for the tiny models the tests train or initialise themselves (no hub): the one builder
lives in :mod:`stackalign.models.tiny` (the benchmark uses it too)."""

from stackalign.models.tiny import bpe_tokenizer, tiny_pair

__all__ = ["bpe_tokenizer", "tiny_pair"]
