"""Sample quality without internet: class accuracy and a Fréchet distance on the digits model.

A small scikit-learn MLP is trained on the fly (seconds) on the real digits, seen exactly as
generated images are seen: 32×32 RGB uint8 → gray → box-average to 8×8. Generated images of
known classes are then scored by

- accuracy: the fraction the classifier assigns to the class they were asked for;
- FD: the Fréchet distance between Gaussians fitted to the classifier's hidden features of the
  generated images and of all real digits. A random real subset of the same size scored the same
  way gives ``fd_real``, the floor that the sample size alone produces.

Any sampler plugs in as a function ``labels -> (N, H, W, 3) uint8``: the PyTorch reference here,
the runtime's ``Sampler.generate`` on the backend a folder was built for (ORT / TensorRT at any
precision), so every backend's quality is measured, not assumed. `score_engines` scores a built
folder on a given backend; numpy + scikit-learn only (torch only for the reference sampler).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dit_export.errors import UserError
from dit_export.images import to_uint8
from dit_export.models.embedded import EmbeddedModel, downscale_images, load_digits_arrays, upscale_digits
from dit_export.models.spec import ModelSpec
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.request import SampleRequest

SampleFn = Callable[[Sequence[int]], np.ndarray]  # labels -> (N, H, W, 3) uint8

HIDDEN = 64  # classifier width = feature dimension of the Fréchet distance
HELDOUT = 0.2  # fraction of the real digits kept out of classifier training


@dataclass
class DigitClassifier:
    """Standardise → ReLU(W1 x + b1) (the features) → softmax layer; fitted on real digits."""

    mean: np.ndarray
    scale: np.ndarray
    mlp: Any  # sklearn MLPClassifier
    heldout_accuracy: float
    real_features: np.ndarray  # features of every real digit (the FD reference set)

    def features(self, x: np.ndarray) -> np.ndarray:
        """(N, 64) downscaled images in [0, 1] → (N, HIDDEN) hidden activations, float64."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.maximum(z @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0.0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return self.mlp.predict(z).astype(np.int64)


def real_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The real digits as a sampler would return them: (1797, 32, 32, 3) uint8, and labels."""
    small, labels = load_digits_arrays()
    return to_uint8(upscale_digits(small)), labels


def train_classifier(seed: int = 0) -> DigitClassifier:
    """Fit the MLP on 80 % of the real digits (stratified, seeded); report the other 20 %."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ModuleNotFoundError:
        raise UserError("score needs scikit-learn: pip install 'dit_export[score]'") from None
    images, labels = real_digit_images()
    x = downscale_images(images).astype(np.float64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, labels, test_size=HELDOUT, random_state=seed, stratify=labels
    )
    mean = x_tr.mean(axis=0)
    scale = x_tr.std(axis=0) + 1e-3  # border pixels are almost always 0
    mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=60, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit((x_tr - mean) / scale, y_tr)
    clf = DigitClassifier(mean, scale, mlp, 0.0, np.empty((0, HIDDEN)))
    clf.heldout_accuracy = float(np.mean(clf.predict(x_te) == y_te))
    clf.real_features = clf.features(x)
    return clf


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(Σa Σb)^½) of two feature sets (rows = samples), float64.

    The trace of the matrix square root is taken as Σ √λ of the PSD matrix Σa^½ Σb Σa^½, which
    has the same eigenvalues as Σa Σb and stays real and stable for rank-deficient covariances.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N≥2, D) feature sets of the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    lam = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    tr_sqrt = float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)


@dataclass
class ScoreResult:
    """One scored configuration (JSON-ready through ``to_dict``)."""

    backend: str
    precision: str
    cfg_scale: float
    steps: int
    sampler: str
    seed: int
    per_class: int
    num_images: int
    accuracy: float  # fraction of images classified as their requested class
    per_class_accuracy: list[float]
    fd: float  # Fréchet distance, generated vs all real digits
    fd_real: float  # same for a random real subset of num_images (the sample-size floor)
    classifier_heldout_accuracy: float
    sample_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    cache_interval: int = 1  # the forecast step cache (1: none)
    cache_order: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_labels(num_classes: int, per_class: int) -> list[int]:
    """0, 1, …, C−1 repeated per_class times (every batch split keeps the classes balanced)."""
    if per_class < 1:
        raise UserError(f"--per-class must be ≥ 1, got {per_class}")
    return [c for _ in range(per_class) for c in range(num_classes)]


def score_images(
    images: np.ndarray, labels: Sequence[int], classifier: DigitClassifier, *, seed: int = 0
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, FD and the real-subset FD floor of (N, H, W, 3) uint8 images."""
    img = np.asarray(images)
    y = np.asarray(labels, dtype=np.int64)
    if img.dtype != np.uint8 or img.ndim != 4 or img.shape[3] != 3 or len(img) != len(y):
        raise UserError(f"sampler returned {img.dtype} {img.shape}; expected ({len(y)}, H, W, 3) uint8")
    x = downscale_images(img)
    pred = classifier.predict(x)
    classes = int(y.max()) + 1
    per_class = [
        float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan") for c in range(classes)
    ]
    feats = classifier.features(x)
    real = classifier.real_features
    rng = np.random.default_rng(seed)
    subset = real[rng.choice(len(real), size=min(len(x), len(real)), replace=False)]
    return {
        "accuracy": float(np.mean(pred == y)),
        "per_class_accuracy": per_class,
        "fd": frechet_distance(feats, real),
        "fd_real": frechet_distance(subset, real),
    }


def score_sampler(
    sample_fn: SampleFn,
    *,
    per_class: int,
    num_classes: int = 10,
    classifier: DigitClassifier | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    cfg_scale: float = 4.0,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    cache_interval: int = 1,
    cache_order: int = 2,
) -> ScoreResult:
    """Generate per_class images of every class with ``sample_fn`` and score them.

    The other arguments are recorded in the result (the sampler function already has them bound).
    """
    labels = score_labels(num_classes, per_class)
    clf = classifier or train_classifier(seed)
    t0 = time.perf_counter()
    images = sample_fn(labels)
    seconds = time.perf_counter() - t0
    return ScoreResult(
        backend=backend,
        precision=precision,
        cfg_scale=float(cfg_scale),
        steps=int(steps),
        sampler=sampler,
        seed=seed,
        per_class=per_class,
        num_images=len(labels),
        **score_images(images, labels, clf, seed=seed),  # accuracy, per_class_accuracy, fd, fd_real
        classifier_heldout_accuracy=clf.heldout_accuracy,
        sample_seconds=seconds,
        cache_interval=int(cache_interval),
        cache_order=int(cache_order),
    )


def torch_sample_fn(
    model: Any,
    vae_decode: Any,
    *,
    cfg_scale: float,
    steps: int,
    sampler: str = "ddpm",
    seed: int = 0,
    batch: int = 500,
    cache_interval: int = 1,
    cache_order: int = 2,
) -> SampleFn:
    """The PyTorch fp32 reference as a sampler function: philox noise, image i of the request gets
    noise index i (batches only bound memory; they do not change the images). `cache_interval` > 1
    runs the forecast step cache (`sampling.cache`)."""
    import torch  # the reference sampler only: score_engines runs on numpy + scikit-learn

    from dit_export.sampling.reference import request_latents

    request = SampleRequest(
        (), seed, cfg_scale, steps, sampler, cache_interval=cache_interval, cache_order=cache_order
    )

    def sample(labels: Sequence[int]) -> np.ndarray:
        out = []
        for start in range(0, len(labels), batch):
            part = replace(request, labels=tuple(labels[start : start + batch]), first_index=start)
            z = request_latents(model, part)
            with torch.inference_mode():
                out.append(to_uint8(vae_decode(z).float().numpy()))
        return np.concatenate(out)

    return sample


def load_embedded_reference(name: str) -> tuple[Any, Any]:
    """(DiT, VAEDecode) of a shipped model, through the same loaders as any checkpoint."""
    from dit_export.models.vae import VAEDecode

    spec = ModelSpec(model=name).validate()
    model, _ = spec.load_dit()
    return model, VAEDecode(spec.load_vae()).eval()


def runtime_sample_fn(
    runner: Sampler,
    *,
    cfg_scale: float,
    steps: int,
    sampler: str = "ddpm",
    seed: int = 0,
    cache_interval: int = 1,
    cache_order: int = 2,
) -> SampleFn:
    """A loaded runtime sampler as a sampler function, through `Sampler.generate` (the path users
    sample with; image i of the request gets noise index i, whatever the engine batch)."""
    request = SampleRequest(
        (), seed, cfg_scale, steps, sampler, cache_interval=cache_interval, cache_order=cache_order
    )

    def sample(labels: Sequence[int]) -> np.ndarray:
        res = runner.generate(
            replace(request, labels=tuple(int(v) for v in labels)), decode=True, progress=False
        )
        if res.images is None:
            raise UserError("this export has no VAE decoder (exported with --vae none): nothing to score")
        return to_uint8(res.images)

    return sample


@dataclass(frozen=True)
class ScoreSettings:
    """What a score samples: `per_class` images of every class at each guidance scale."""

    per_class: int = 20
    cfg_scales: tuple[float, ...] = (4.0, 1.0)
    steps: int = 50
    sampler: str = "ddpm"
    seed: int = 0
    cache_interval: int = 1  # the forecast step cache (SampleRequest's fields)
    cache_order: int = 2

    @property
    def cache(self) -> dict[str, int]:
        return {"cache_interval": self.cache_interval, "cache_order": self.cache_order}

    def at(self, cfg_scale: float) -> dict[str, Any]:
        """The request keywords at guidance `cfg_scale`: what the sample functions bind and
        `score_sampler` records."""
        return dict(cfg_scale=cfg_scale, steps=self.steps, sampler=self.sampler, seed=self.seed, **self.cache)


def score_scales(
    sample_fn_at: Callable[[float], SampleFn],
    settings: ScoreSettings,
    *,
    num_classes: int,
    backend: str,
    precision: str,
    classifier: DigitClassifier | None = None,
) -> list[ScoreResult]:
    """One result per guidance scale g of `settings`, sampling with `sample_fn_at(g)`."""
    clf = classifier or train_classifier(seed=0)
    s = settings
    return [
        score_sampler(
            sample_fn_at(g),
            per_class=s.per_class,
            num_classes=num_classes,
            classifier=clf,
            backend=backend,
            precision=precision,
            **s.at(g),
        )
        for g in s.cfg_scales
    ]


def score_engines(
    engines: str | Path,
    backend: str,
    info: EmbeddedModel,
    settings: ScoreSettings,
    *,
    classifier: DigitClassifier | None = None,
    providers: Sequence[str] | None = None,
    **options: Any,
) -> list[ScoreResult]:
    """Score a built folder on `backend` (ort | trt | torch | cpp; the caller resolves `auto` to the
    backend the folder was built for), one result per guidance scale."""
    runner = Sampler.load(engines, backend, providers, cache=settings.cache_interval > 1, **options)
    try:
        if (runner.num_classes, runner.image_size) != (info.num_classes, info.image_size):
            raise UserError(
                f"{engines} holds a {runner.num_classes}-class {runner.image_size}px model, "
                f"not {info.name} ({info.num_classes} classes, {info.image_size}px)"
            )
        return score_scales(
            lambda g: runtime_sample_fn(runner, **settings.at(g)),
            settings,
            num_classes=info.num_classes,
            backend=f"{runner.backend.name}-rt" if runner.backend.name == "torch" else runner.backend.name,
            precision=runner.precision,
            classifier=classifier,
        )
    finally:
        runner.close()


def score_reference(
    info: EmbeddedModel, settings: ScoreSettings, *, classifier: DigitClassifier | None = None
) -> list[ScoreResult]:
    """Score the fp32 PyTorch reference of a shipped model, one result per guidance scale."""
    model, decode = load_embedded_reference(info.name)
    return score_scales(
        lambda g: torch_sample_fn(model, decode, **settings.at(g)),
        settings,
        num_classes=info.num_classes,
        backend="torch",
        precision="fp32",
        classifier=classifier,
    )


def format_table(results: Sequence[ScoreResult]) -> str:
    """The score table the command prints."""
    head = f"{'backend':8s} {'precision':9s} {'cfg':>5s} {'steps':>5s} {'images':>6s} {'accuracy':>8s} {'FD':>8s} {'FD real':>8s} {'time':>7s}"
    cached = any(r.cache_interval > 1 for r in results)
    if cached:
        head += f" {'cache':>7s}"
    lines = [head]
    for r in results:
        line = (
            f"{r.backend:8s} {r.precision:9s} {r.cfg_scale:5g} {r.steps:5d} {r.num_images:6d} "
            f"{100 * r.accuracy:7.1f}% {r.fd:8.2f} {r.fd_real:8.2f} {r.sample_seconds:6.1f}s"
        )
        if cached:
            line += f" {f'N{r.cache_interval} O{r.cache_order}' if r.cache_interval > 1 else 'none':>7s}"
        lines.append(line)
    if results:
        lines.append(
            f"classifier: MLP on 8×8 real digits, held-out accuracy {100 * results[0].classifier_heldout_accuracy:.1f}%; "
            "FD on its hidden features vs all 1797 real digits; FD real = a real subset of the same size"
        )
    return "\n".join(lines)
