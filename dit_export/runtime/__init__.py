"""Stage 5: the lightweight sampler loop (numpy + one backend; never imports torch itself).

`Sampler.load(folder, backend="ort"|"trt"|"torch")` then `sample(labels, ...)`; the backends
share one small interface (`dit_export.runtime.backend.Backend`).
"""

from dit_export.runtime.backend import BACKENDS, Backend, Buffer, make_backend
from dit_export.runtime.sampler import Sampler, SampleResult

__all__ = ["BACKENDS", "Backend", "Buffer", "SampleResult", "Sampler", "make_backend"]
