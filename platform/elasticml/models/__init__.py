"""Models: the reference decoder-only transformer and its named sizes."""

from elasticml.models.transformer import SIZES, KVCache, ModelConfig, Transformer, build_model

__all__ = ["ModelConfig", "Transformer", "KVCache", "SIZES", "build_model"]
