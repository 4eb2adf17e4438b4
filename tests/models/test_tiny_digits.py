"""The embedded tiny-digits model: the shipped files through every loader, a quick sample, the
data helpers, and a smoke run of each training function of scripts/train_tiny_digits.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from dit_export.errors import UserError  # noqa: E402
from dit_export.images import to_uint8  # noqa: E402
from dit_export.models.checkpoints import describe, load_dit, perturb_zero_initialised  # noqa: E402
from dit_export.models.configs import DiTConfig  # noqa: E402
from dit_export.models.dit import DiT  # noqa: E402
from dit_export.models.embedded import (  # noqa: E402
    EMBEDDED,
    embedded_model,
    is_embedded,
    load_digits_arrays,
    resolve_embedded,
    upscale_digits,
)
from dit_export.models.vae import VAEDecode, load_vae, vae_factor  # noqa: E402
from dit_export.sampling.noise import make_noise  # noqa: E402
from dit_export.sampling.reference import sample_latents  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_tiny_digits.py"
MODEL = EMBEDDED["tiny-digits"]


@pytest.fixture(scope="module")
def train():
    """scripts/train_tiny_digits.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_tiny_digits", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shipped():
    ckpt, vae_path, image_size, heads = resolve_embedded("tiny-digits")
    model, cfg = load_dit(ckpt, image_size=image_size, num_heads=heads)
    return model, cfg, VAEDecode(load_vae(str(vae_path)))


# ------------------------------------------------------------------------------ shipped files


def test_names_resolve_to_the_package_data() -> None:
    assert is_embedded("tiny-digits") and is_embedded("Tiny_Digits") and not is_embedded("XL/2")
    assert not is_embedded(None)
    ckpt, vae, size, heads = resolve_embedded("TINY-DIGITS")
    assert ckpt.is_file() and ckpt.suffix == ".safetensors" and (vae / "config.json").is_file()
    assert (size, heads) == (32, 4)
    assert ckpt.parent.parent.name == "data" and ckpt.parent.parent.parent.name == "dit_export"
    with pytest.raises(UserError, match="no embedded model"):
        resolve_embedded("tiny-faces")
    total = sum(p.stat().st_size for p in MODEL.path.rglob("*") if p.is_file())
    assert total < 8 * 2**20  # "a few MB" in the wheel


def test_meta_agrees_with_the_registry_and_the_weights(shipped) -> None:
    _, cfg, decode = shipped
    meta = embedded_model("tiny-digits").meta()
    assert meta["name"] == MODEL.name and meta["image_size"] == MODEL.image_size
    assert meta["num_classes"] == MODEL.num_classes == cfg.num_classes
    # the loader names the shipped model (its meta's config is nameless: a custom shape; issue 24)
    assert DiTConfig.from_dict(meta["dit"]).with_(name=MODEL.name) == cfg and cfg.name == "tiny-digits"
    assert meta["vae"]["scaling_factor"] == pytest.approx(decode.scaling_factor)
    assert meta["dit_losses"] and meta["vae_losses"] and "train_tiny_digits.py" in meta["training_command"]


def test_shipped_dit_loads_through_every_path(shipped, tmp_path) -> None:
    model, cfg, _ = shipped
    assert (cfg.num_heads, cfg.patch_size) == (MODEL.num_heads, 1) and cfg.num_tokens == 16
    assert (cfg.input_size, cfg.in_channels, cfg.num_classes, cfg.learn_sigma) == (4, 4, 10, True)
    assert cfg.flavor == "official" and not model.training
    ckpt = MODEL.ckpt_path
    # the file alone (pos_embed gives the latent size); custom width: heads must be given
    again, cfg2 = load_dit(str(ckpt), num_heads=4)
    assert cfg2 == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # the heads of the custom width come from the meta.json beside the file (issue 16); the same
    # file alone still needs them
    assert load_dit(ckpt)[1] == cfg
    alone = tmp_path / "dit.safetensors"
    shutil.copyfile(ckpt, alone)
    with pytest.raises(UserError, match="num_heads"):
        load_dit(alone)
    with pytest.raises(UserError, match="image 32"):
        load_dit(ckpt, num_heads=4, image_size=256)
    with pytest.raises(UserError, match="10 classes"):
        load_dit(ckpt, num_heads=4, num_classes=1000)
    text = describe(ckpt, num_heads=4)
    assert "official safetensors" in text and "image 32×32" in text and "10 (+ null class 10)" in text
    # trained, not the zero-initialised adaLN-Zero start
    assert all(lin.weight.abs().max() > 0 for lin in model.zero_initialised())


def test_shipped_vae_is_a_diffusers_folder_with_factor_8(shipped) -> None:
    _, _, decode = shipped
    vae = load_vae(str(MODEL.vae_path))
    assert vae_factor(vae) == 8 and vae.config["latent_channels"] == 4
    assert vae.config["scaling_factor"] != 0.18215  # measured on the digits latents
    from diffusers import AutoencoderKL

    direct = AutoencoderKL.from_pretrained(MODEL.vae_path)  # plain diffusers reads it too
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = decode(z)
        ref = direct.decode(z / direct.config.scaling_factor).sample
    assert img.shape == (2, 3, 32, 32)
    torch.testing.assert_close(img, ref)


def test_vae_reconstructs_the_digits(shipped) -> None:
    from dit_export.verify.score import score_images, train_classifier

    vae = load_vae(str(MODEL.vae_path))
    small, labels = load_digits_arrays()
    pick = np.arange(0, len(labels), 9)  # 200 images
    x = torch.from_numpy(upscale_digits(small[pick]))
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        rec = shipped[2](z)
    assert float(((rec - x) ** 2).mean()) < 0.03
    assert 0.5 < float(z.std()) < 2.0  # scaled latents are roughly unit variance
    s = score_images(to_uint8(rec.numpy()), labels[pick], train_classifier())
    assert s["accuracy"] > 0.9


def test_quick_sample_gives_digit_images(shipped) -> None:
    model, cfg, decode = shipped
    labels = list(range(10))
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = make_noise("philox", 0, len(labels), shape, guided=True)
    z = sample_latents(model, labels, noise, steps=8, sampler="ddim", cfg_scale=4.0, progress=False)
    assert z.shape == (10, 4, 4, 4) and torch.isfinite(z).all()
    with torch.inference_mode():
        img = to_uint8(decode(z).numpy())
    assert img.shape == (10, 32, 32, 3) and img.dtype == np.uint8
    spread = np.ptp(img.astype(np.int16), axis=3)  # per-pixel max − min over R, G, B
    assert spread.mean() < 8  # gray digits (the VAE learned gray → RGB)
    assert img.std() > 20  # strokes on a background, not a flat field


# ------------------------------------------------------------------------------ data helpers


def test_upscale_matches_torch_bilinear() -> None:
    small, labels = load_digits_arrays()
    assert small.shape == (1797, 8, 8) and labels.shape == (1797,) and 0 <= small.min() and small.max() <= 1
    ours = upscale_digits(small[:20])
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(small[:20])[:, None], scale_factor=4, mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(ours, (ref * 2 - 1).repeat(1, 3, 1, 1).numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ training smoke


def test_vae_training_reduces_the_loss(train, tmp_path) -> None:
    images, _ = train.training_images()
    vae, log = train.train_vae(images[:128], steps=24, batch=16, lr=3e-3, log_every=6)
    assert len(log) == 4 and log[-1]["mse"] < 0.7 * log[0]["mse"]
    mean, std = train.encode_dataset(vae, images[:32])
    assert mean.shape == (32, 4, 4, 4) and (std > 0).all()
    assert train.latent_scaling_factor(mean, std) > 0


def test_dit_training_reduces_the_loss_and_saves_loadable_files(train, tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 10
    # a learnable latent set: one fixed pattern per class
    mean = torch.randn(10, 4, 4, 4, generator=g)[labels]
    std = torch.full_like(mean, 0.05)
    cfg = train.dit_config().with_(depth=1, hidden_size=32)
    ema, raw, log = train.train_dit(
        mean, std, labels, 1.0, cfg=cfg, steps=60, batch=32, lr=3e-3, warmup=5, log_every=20
    )
    assert log[-1]["mse"] < 0.8 * log[0]["mse"]
    assert all(np.isfinite(e["vb"]) for e in log)
    assert not any(torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters()) if a.requires_grad)
    # the training script's writer produces files the ordinary loaders read
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**train.vae_kwargs())
    out = tmp_path / "model"
    train.save_model(out, vae, ema, {"name": "smoke"})
    loaded, lcfg = load_dit(out / "dit.safetensors", num_heads=cfg.num_heads, image_size=32)
    assert lcfg == cfg
    for k, v in ema.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert vae_factor(load_vae(str(out / "vae"))) == 8
    assert json.loads((out / "meta.json").read_text()) == {"name": "smoke"}


def test_vb_term_trains_only_the_variance_channels(train) -> None:
    """IDDPM's stop-gradient: the bound's gradient reaches the v rows of the output layer, never ε's."""
    cfg = DiTConfig(depth=1, hidden_size=32, num_heads=2, patch_size=1, input_size=4, num_classes=10)
    torch.manual_seed(0)
    net = DiT(cfg)
    perturb_zero_initialised(net, seed=0, std=0.05)
    tables = train.DiffusionTables()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 4, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 200, 600, 999])
    noise = torch.randn(x0.shape, generator=g)
    mse, vb = train.diffusion_losses(net, x0, torch.arange(6), t, noise, tables)
    assert mse.shape == vb.shape == (6,) and torch.isfinite(vb).all()
    assert (vb[1:] >= -1e-6).all()  # a KL at t > 0
    vb.sum().backward()
    grad = net.final_layer.linear.weight.grad  # rows: patch 1 → [ε0..ε3, v0..v3]
    assert grad[:4].abs().max() == 0 and grad[4:].abs().max() > 0
    # the true posterior variance predicts itself: KL 0 when the model mean is exact
    lv = tables.at("min_log", t[1:])
    kl = train._normal_kl(x0[1:], lv, x0[1:], lv)
    assert kl.abs().max() < 1e-6
