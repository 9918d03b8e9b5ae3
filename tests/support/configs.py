"""The small model configurations the tests build."""

# A small aggregator that runs in milliseconds; head_dim 16 keeps RoPE's quarter split.
SMALL_AGGREGATOR = {
    "img_size": 56,
    "patch_size": 14,
    "embed_dim": 32,
    "depth": 6,
    "num_heads": 2,
    "patch_embed": "conv",
}
# A small VGGT whose heads read layers 1, 2, 4 and 5 of a 6-layer aggregator.
SMALL_VGGT = {**SMALL_AGGREGATOR, "intermediate_layer_idx": (1, 2, 4, 5)}
# The configuration the memory targets of the optimized-aggregator issue are stated for.
MEMORY_AGGREGATOR = {
    "embed_dim": 256,
    "depth": 24,
    "num_heads": 4,
    "img_size": 224,
    "patch_size": 14,
    "patch_embed": "conv",
}
