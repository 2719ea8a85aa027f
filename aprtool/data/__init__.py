"""Corpus discovery, tokenizers, token shards and the training batch loader."""
