"""Stage 1: the PyTorch models (DiT, VAE decoder), their configs and checkpoint loaders."""
