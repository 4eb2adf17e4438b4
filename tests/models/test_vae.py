"""The SD VAE decoder stage: configs, random stand-ins, loading real diffusers folders, VAEDecode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from dit_export.errors import UserError  # noqa: E402
from dit_export.images import to_uint8  # noqa: E402
from dit_export.models.vae import (  # noqa: E402
    VAEDecode,
    decode_to_uint8,
    load_vae,
    random_vae,
    resolve_vae_spec,
    vae_config,
    vae_factor,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny() -> AutoencoderKL:
    return random_vae("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny) -> Path:
    d = tmp_path_factory.mktemp("vae") / "tiny"
    tiny.save_pretrained(d)  # a real diffusers folder: config.json + safetensors
    return d


def latents(n: int = 2, size: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, size, size, generator=g) * 0.18215 * 5  # the scale DiT latents have


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def user_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as ei:
        fn(*args, **kwargs)
    msg = str(ei.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---- configs and random VAEs


def test_sd_config_decoder_parameter_count():
    with torch.device("meta"):  # the real SD size without allocating it
        vae = AutoencoderKL(**vae_config("sd"))
    dec = sum(p.numel() for p in vae.decoder.parameters())
    pqc = sum(p.numel() for p in vae.post_quant_conv.parameters())
    assert dec + pqc == 49_490_199  # ≈49.5M: what VAEDecode exports
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # the whole kl-f8 autoencoder
    assert vae.config.scaling_factor == 0.18215 and vae.config.sample_size == 256
    assert list(vae.config.block_out_channels) == [128, 256, 512, 512]


@pytest.mark.parametrize("kind", ["sd", "small", "tiny"])
def test_every_kind_keeps_factor_8(kind):
    cfg = vae_config(kind)
    with torch.device("meta"):
        vae = AutoencoderKL(**cfg)
    assert vae_factor(vae) == 8 and len(vae.decoder.up_blocks) == 4
    assert cfg["latent_channels"] == 4 and cfg["scaling_factor"] == 0.18215


def test_unknown_kind():
    user_error(vae_config, "huge")


def test_random_vae_is_deterministic_and_leaves_global_rng(tiny):
    state = torch.random.get_rng_state()
    again = random_vae("tiny", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    assert same_weights(tiny, again)
    assert not same_weights(tiny, random_vae("tiny", seed=1))
    gn = tiny.decoder.conv_norm_out
    assert not torch.equal(gn.weight, torch.ones_like(gn.weight))  # affine perturbed
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())


# ---- VAEDecode


def test_vae_decode_shape_range_and_equality(tiny):
    dec = VAEDecode(tiny)
    z = latents(2, 4)
    with torch.no_grad():
        img = dec(z)
        ref = tiny.decode(z / 0.18215).sample  # the official call
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    assert dec.image_size(4) == 32 and dec.factor == 8 and dec.scaling_factor == 0.18215
    assert torch.isfinite(img).all() and img.abs().max() < 20 and img.std() > 0.05
    assert torch.equal(img, ref)


def test_vae_decode_reads_scaling_factor_from_config():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        vae = AutoencoderKL(**(vae_config("tiny") | {"scaling_factor": 0.5})).eval()
    z = latents(1, 4, seed=1)
    with torch.no_grad():
        assert torch.equal(VAEDecode(vae)(z), vae.decode(z / 0.5).sample)


def test_plain_attention_matches_fused(tiny):
    dec = VAEDecode(tiny)
    z = latents(1, 4, seed=2)
    try:
        with torch.no_grad():
            fused = dec(z)
            dec.set_fused_attention(False)
            plain = dec(z)
            assert torch.equal(plain, tiny.decode(z / 0.18215).sample)  # modules are shared
    finally:
        dec.set_fused_attention(True)
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-5)


def test_decode_to_uint8(tiny):
    dec = VAEDecode(tiny)
    z = latents(2, 4, seed=3)
    with torch.no_grad():
        expect = to_uint8(dec(z).numpy())
    out = decode_to_uint8(dec, z)
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(out, expect)


def test_vae_decode_traces_to_static_onnx(tiny, tmp_path):
    """No data-dependent Python path: the TorchScript exporter gives a static graph that ORT runs."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    dec = VAEDecode(tiny)
    z = latents(2, 4, seed=4)
    path = tmp_path / "vae_decoder.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks only: static here
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        ref = dec(z).numpy()
        torch.onnx.export(
            dec, (z,), str(path), input_names=["z"], output_names=["image"], opset_version=17, dynamo=False
        )
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"If", "Loop", "Scan"}, ops
    assert {"Resize", "Conv", "Softmax"} <= ops
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 32, 32]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"z": z.numpy()})
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


# ---- loading


def test_load_local_folder(tiny, tiny_dir):
    vae = load_vae(str(tiny_dir))
    assert same_weights(vae, tiny) and not vae.training
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(vae.config) == public(tiny.config)
    z = latents(1, 4, seed=5)
    with torch.no_grad():
        assert torch.equal(VAEDecode(vae)(z), VAEDecode(tiny)(z))


def test_load_pipeline_folder_and_bin_weights(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "pipe" / "vae", safe_serialization=False)  # .bin, under vae/
    assert (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.bin").is_file()
    assert same_weights(load_vae(str(tmp_path / "pipe")), tiny)


def test_load_old_attention_key_names(tiny, tiny_dir, tmp_path):
    """The released sd-vae-ft-* files predate diffusers' Attention rename (query/key/value/proj_attn)."""
    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    sd = load_file(old / WEIGHTS)
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for k, v in sd.items():
        for new_name, old_name in renames.items():
            k = k.replace(new_name, old_name)
        out[k] = v
    assert any(".query." in k for k in out)
    save_file(out, old / WEIGHTS)
    assert same_weights(load_vae(str(old)), tiny)


def test_load_decoder_only_folder(tiny, tiny_dir, tmp_path):
    d = tmp_path / "decoder_only"
    shutil.copytree(tiny_dir, d)
    sd = load_file(d / WEIGHTS)
    save_file({k: v for k, v in sd.items() if k.startswith(("decoder.", "post_quant_conv."))}, d / WEIGHTS)
    vae = load_vae(str(d))
    z = latents(1, 4, seed=6)
    with torch.no_grad():
        assert torch.equal(VAEDecode(vae)(z), VAEDecode(tiny)(z))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_load_errors_are_one_line(tiny_dir, tmp_path):
    assert "does not exist" in user_error(load_vae, str(tmp_path / "missing"))
    assert "does not exist" in user_error(load_vae, "./not/here/")
    assert "not a folder" in user_error(load_vae, str(tiny_dir / "config.json"))
    user_error(load_vae, "")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in user_error(load_vae, str(empty))

    bad_json = _copy(tiny_dir, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    assert "cannot read VAE config" in user_error(load_vae, str(bad_json))

    unet = _copy(tiny_dir, tmp_path / "unet")
    _edit_config(unet, _class_name="UNet2DConditionModel")
    assert "not an AutoencoderKL" in user_error(load_vae, str(unet))

    no_weights = _copy(tiny_dir, tmp_path / "no_weights")
    (no_weights / WEIGHTS).unlink()
    assert "no weights" in user_error(load_vae, str(no_weights))

    truncated = _copy(tiny_dir, tmp_path / "truncated")
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    assert "cannot load VAE" in user_error(load_vae, str(truncated))

    wider = _copy(tiny_dir, tmp_path / "wider")
    _edit_config(wider, block_out_channels=[16, 16, 32, 64])
    assert "cannot load VAE" in user_error(load_vae, str(wider))

    bad_groups = _copy(tiny_dir, tmp_path / "bad_groups")
    _edit_config(bad_groups, norm_num_groups=7)
    assert "cannot load VAE" in user_error(load_vae, str(bad_groups))

    deeper = _copy(tiny_dir, tmp_path / "deeper")  # more layers than the weights hold
    _edit_config(deeper, layers_per_block=2)
    assert "missing" in user_error(load_vae, str(deeper))


def test_shorthands():
    assert resolve_vae_spec("ema") == "stabilityai/sd-vae-ft-ema"
    assert resolve_vae_spec("MSE") == "stabilityai/sd-vae-ft-mse"
    assert resolve_vae_spec("some/repo") == "some/repo"


def test_hub_offline_is_one_line_error(tmp_path):
    """HF_HUB_OFFLINE=1 and nothing cached: one line naming the repo and the folder to fill."""
    code = (
        "from dit_export.errors import UserError\n"
        "from dit_export.models.vae import load_vae\n"
        "try:\n"
        f"    load_vae('ema', cache_dir={str(tmp_path / 'cache')!r})\n"
        "except UserError as e:\n"
        "    print('USERERROR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("USERERROR")]
    assert len(lines) == 1, r.stdout + r.stderr
    msg = lines[0]
    assert "stabilityai/sd-vae-ft-ema" in msg and "HF_HUB_OFFLINE" in msg
    assert str(tmp_path / "cache" / "sd-vae-ft-ema") in msg


def test_hub_id_served_from_manual_folder_offline(tiny, tiny_dir, tmp_path, monkeypatch):
    """A user without network places the files in cache_dir/<name>: no Hub call is made."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    shutil.copytree(tiny_dir, cache / "sd-vae-ft-mse")
    assert same_weights(load_vae("mse", cache_dir=cache), tiny)
    msg = user_error(load_vae, "someone/other-vae", cache_dir=cache)
    assert "someone/other-vae" in msg and str(cache / "other-vae") in msg


def test_hub_id_from_hf_cache_offline(tiny, tiny_dir, tmp_path, monkeypatch):
    """A Hub snapshot already in the huggingface_hub cache layout loads with HF_HUB_OFFLINE."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    repo = cache / "huggingface" / "models--stabilityai--sd-vae-ft-ema"  # shared with the DiT downloads
    commit = "0" * 39 + "1"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert same_weights(load_vae("ema", cache_dir=cache), tiny)
    msg = user_error(load_vae, "facebook/DiT-XL-2-256/vae", cache_dir=cache)
    assert "facebook/DiT-XL-2-256/vae" in msg and str(cache / "DiT-XL-2-256_vae") in msg
