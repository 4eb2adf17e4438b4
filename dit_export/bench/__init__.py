"""Stage 6b: latency and throughput of every backend against the PyTorch references."""
