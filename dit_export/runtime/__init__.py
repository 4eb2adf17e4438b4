"""Stage 5: the lightweight sampler loop (numpy + one backend; never imports torch itself).

`Sampler.load(folder, backend="ort"|"trt"|"torch"|"cpp")` then `generate(SampleRequest(...))`;
the backends share one runner interface (`dit_export.runtime.backend.Backend`).
"""

from dit_export.runtime.backend import Backend, Buffer, make_backend
from dit_export.runtime.sampler import Sampler, SampleResult
from dit_export.sampling.request import SampleRequest

__all__ = ["Backend", "Buffer", "SampleRequest", "SampleResult", "Sampler", "make_backend"]
