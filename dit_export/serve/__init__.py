"""Serving (a stage above the runtime, beside verify and bench): a Triton Inference Server model
repository whose Python-backend model runs `dit_export.runtime.Sampler` in-process
(`dit_export.serve.triton`, the model itself in `dit_export.serve.triton_model`)."""
