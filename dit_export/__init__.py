"""dit_export: DiT + SD-VAE → static ONNX → fp16 TensorRT engines, with a light sampler runtime."""

__version__ = "0.1.0"
