"""Stage 6a: compare any backend with the PyTorch fp32 reference, stage by stage."""
