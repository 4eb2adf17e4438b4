"""Stage 4: TensorRT engines built from the ONNX graphs, and their staleness checks."""
