"""Our DiT against diffusers' `DiTTransformer2DModel` on the same weights, converted both ways.

With flavor "diffusers" the two must agree to fp32 rounding; with flavor "official" the same
weights must give a clearly different output (timestep sinusoid /128 instead of /127, LayerNorm
eps), which is why a diffusers checkpoint loads as "diffusers" by default.
"""

from __future__ import annotations

import pytest
import torch
from dit_diffusers import to_diffusers_config, to_diffusers_state_dict

from dit_export.models.checkpoints import load_dit, perturb_zero_initialised
from dit_export.models.configs import DiTConfig
from dit_export.models.dit import DiT

diffusers = pytest.importorskip("diffusers")

TIMESTEPS = (0, 1, 250, 999)
REL_TOL = 1e-5


def _config(patch: int, latent: int) -> DiTConfig:
    return DiTConfig(
        depth=2, hidden_size=384, num_heads=6, patch_size=patch, input_size=latent, flavor="diffusers"
    )


def _inputs(cfg: DiTConfig, t: int):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(3, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return x, torch.full((3,), t, dtype=torch.long), torch.tensor([0, 207, cfg.null_class])


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.inference_mode()
def _compare(ours: DiT, theirs, cfg: DiTConfig) -> list[float]:
    errors = []
    for t in TIMESTEPS:
        x, tt, y = _inputs(cfg, t)
        a, b = ours(x, tt, y), theirs(hidden_states=x, timestep=tt, class_labels=y).sample
        assert a.shape == b.shape == (3, cfg.out_channels, cfg.input_size, cfg.input_size)
        assert b.std() > 0.05  # the perturbed weights give a real signal
        errors.append(_max_rel(a, b))
    return errors


@pytest.mark.parametrize("patch,latent", [(2, 8), (8, 32)])
def test_ours_to_diffusers(patch, latent):
    cfg = _config(patch, latent)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        ours = DiT(cfg).eval()
    perturb_zero_initialised(ours, seed=11)
    theirs = diffusers.DiTTransformer2DModel(**to_diffusers_config(cfg)).eval()
    theirs.load_state_dict(to_diffusers_state_dict(ours), strict=True)
    errors = _compare(ours, theirs, cfg)
    assert max(errors) < REL_TOL, errors


def _diffusers_model(cfg: DiTConfig, seed: int):
    """A diffusers DiT with every weight random (seeded), one shared embedder as in real checkpoints."""
    theirs = diffusers.DiTTransformer2DModel(**to_diffusers_config(cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    state = theirs.state_dict()
    with torch.no_grad():
        for value in state.values():
            value.copy_(
                torch.randn(value.shape, generator=gen)
                * (0.02 if value.ndim < 2 else value.shape[-1] ** -0.5)
            )
        for key, value in state.items():
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return theirs


@pytest.mark.parametrize("patch,latent", [(2, 8), (8, 32)])
def test_diffusers_to_ours_via_save_pretrained(patch, latent, tmp_path):
    cfg = _config(patch, latent)
    theirs = _diffusers_model(cfg, seed=5)
    theirs.save_pretrained(tmp_path)
    ours, loaded = load_dit(tmp_path)
    assert loaded == cfg
    errors = _compare(ours, theirs, cfg)
    assert max(errors) < REL_TOL, errors


@torch.inference_mode()
def test_official_flavor_differs(tmp_path):
    cfg = _config(2, 8)
    theirs = _diffusers_model(cfg, seed=6)
    theirs.save_pretrained(tmp_path)
    official, ocfg = load_dit(tmp_path, flavor="official")
    assert ocfg == cfg.with_(flavor="official")
    diffs = {}
    for t in TIMESTEPS:
        x, tt, y = _inputs(cfg, t)
        diffs[t] = _max_rel(official(x, tt, y), theirs(x, tt, y).sample)
    # t=0: the sinusoid is the same (cos 0, sin 0), only the pre-MLP LayerNorm eps differs
    assert diffs[0] < 1e-3, diffs
    # t=999: the /128 vs /127 frequencies move the embedding by O(1): a different model
    assert diffs[999] > 100 * REL_TOL and diffs[999] > 10 * diffs[0], diffs
