"""Stage 3: trace the models and the step module into static ONNX graphs (fp32 or mixed fp16)."""
