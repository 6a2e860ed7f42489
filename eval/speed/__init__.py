"""What a pruned model buys at inference: matrix kernels for its zeros (``kernels``), its size on
disk in the sparse-bitmask layout (``bitmask``), and tokens per second and memory (``timing``)."""
