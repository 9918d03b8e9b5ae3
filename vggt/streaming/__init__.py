"""The memory-lean inference engine: chunk policy, blocks run in place over token chunks, and
kept layer outputs written straight to their buffers (on the device or in host memory)."""
