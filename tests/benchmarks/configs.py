"""The configurations the benchmarks compare the full and optimized variants on."""

from tests.support.configs import SMALL_AGGREGATOR

# Wider and deeper than SMALL_AGGREGATOR so that, as in VGGT-1B, the per-layer outputs rather
# than the images dominate memory; the heads read 4 of the 12 layers (VGGT-1B: 4 of 24).
AGGREGATOR = {**SMALL_AGGREGATOR, "embed_dim": 64, "depth": 12, "num_heads": 4}
HEAD_LAYERS = (2, 5, 8, 11)
# The whole model on that aggregator; the track head is off since no query points are given.
MODEL = {**AGGREGATOR, "intermediate_layer_idx": HEAD_LAYERS, "enable_track": False}

VARIANTS = ("full", "optimized")
# (frames, image side): at 56 px every block runs on whole groups; at 224 px and 8 frames
# (2088 tokens) the optimized blocks run in two chunks of 1044 tokens (the CPU floor of 2^16
# elements at 64 channels) and stream global K/V.
SHAPES = ((2, 56), (8, 56), (8, 224))
BATCH = 1
PATCH_SIZE = AGGREGATOR["patch_size"]
WARMUP_ROUNDS = 1
AGGREGATOR_ROUNDS = 20
MODEL_ROUNDS = 5
