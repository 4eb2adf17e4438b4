"""The DiT network itself: shapes, parameter counts, and properties the export relies on."""

import pytest
import torch

from dit_export.errors import UserError
from dit_export.models.configs import PATCHES, SIZES, canonical_name, model_config
from dit_export.models.dit import DiT, sincos_pos_embed

# Published sizes (paper, Table 1: S 33M, B 130M, L 458M, XL 675M) and the exact XL/2 count.
PUBLISHED_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


def count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in DiT(cfg).parameters())


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("patch", PATCHES)
def test_every_config_builds_with_the_published_size(size, patch):
    cfg = model_config(f"{size}/{patch}", 256)
    n = count(cfg)
    assert abs(n / 1e6 - PUBLISHED_M[size]) < 0.02 * PUBLISHED_M[size] + 1
    if (size, patch) == ("XL", 2):
        assert n == 675_129_632


def test_macs_match_the_reference_doc():
    assert model_config("XL/2").macs_per_forward() / 1e9 == pytest.approx(118.6, abs=0.1)
    assert model_config("XL/2", 512).macs_per_forward() / 1e9 == pytest.approx(524.5, abs=0.5)
    assert model_config("S/8").macs_per_forward() / 1e9 == pytest.approx(0.36, abs=0.01)
    assert model_config("B/2").macs_per_forward() / 1e9 == pytest.approx(23.0, abs=0.2)


def test_names_and_sizes():
    assert canonical_name("xl/2") == canonical_name("DiT-XL/2") == canonical_name("DiT-XL-2") == "DiT-XL/2"
    assert model_config("XL/2", 512).input_size == 64
    for bad in ["XL/3", "M/2", ""]:
        with pytest.raises(UserError):
            canonical_name(bad)
    with pytest.raises(UserError, match="multiple of 64"):
        model_config("S/8", 200)


def test_fresh_model_outputs_exactly_zero_and_perturbed_does_not():
    cfg = model_config("S/8", 256)
    torch.manual_seed(0)
    m = DiT(cfg).eval()
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([999, 0]), torch.tensor([1, 1000])
    with torch.no_grad():
        assert m(x, t, y).abs().max() == 0
        for lin in m.zero_initialised():
            torch.nn.init.normal_(lin.weight, std=0.02)
            torch.nn.init.normal_(lin.bias, std=0.02)
        out = m(x, t, y)
    assert out.shape == (2, 8, 32, 32) and out.abs().max() > 1e-2


def test_unpatchify_is_the_papers_einsum():
    cfg = model_config("S/4", 256)
    m = DiT(cfg)
    g, p, c = cfg.grid_size, cfg.patch_size, cfg.out_channels
    tokens = torch.randn(2, g * g, p * p * c)
    ref = torch.einsum("nhwpqc->nchpwq", tokens.reshape(2, g, g, p, p, c)).reshape(2, c, g * p, g * p)
    assert torch.equal(m.unpatchify(tokens), ref)


def test_pos_embed_layout():
    d, g = 16, 4
    pe = sincos_pos_embed(d, g)
    assert pe.shape == (g * g, d)
    n = 1 * g + 2  # token (i=1, j=2)
    import math

    assert pe[n, 0] == pytest.approx(math.sin(2.0), abs=1e-6)  # sin(j·ω0)
    assert pe[n, d // 4] == pytest.approx(math.cos(2.0), abs=1e-6)  # cos(j·ω0)
    assert pe[n, d // 2] == pytest.approx(math.sin(1.0), abs=1e-6)  # sin(i·ω0)


def test_fused_attention_is_numerically_equivalent():
    from dit_export.models.checkpoints import random_dit

    m, cfg = random_dit("S/2", 256 // 4)  # 8×8 latent
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([3, 7])
    with torch.no_grad():
        a = m(x, t, y)
        m.set_fused_attention(True)
        b = m(x, t, y)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
