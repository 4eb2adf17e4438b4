"""Checkpoint loading: every format as a real file, config inference, one-line refusals, downloads.

Models are DiT-S/8 at a 32×32 latent (the smallest published shape) or 2-block customs; the
adaLN-Zero layers are perturbed so outputs are not trivially zero.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pickle
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from dit_diffusers import to_diffusers_config, to_diffusers_state_dict
from safetensors.torch import save_file

from dit_export.errors import UserError
from dit_export.models import hub
from dit_export.models.checkpoints import describe, load_dit, perturb_zero_initialised, random_dit
from dit_export.models.configs import DiTConfig
from dit_export.models.diffusers_keys import from_diffusers_state_dict
from dit_export.models.dit import DiT

REPO = Path(__file__).resolve().parents[2]
RELEASED = "DiT-XL-2-256x256.pt"


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    """Run fn expecting a UserError whose message is one line containing `match`."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def _same_weights(a: DiT, b: DiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _small(seed: int, **kw) -> DiT:
    """A seeded, perturbed custom DiT (2 blocks by default) for shape-inference tests."""
    base = dict(depth=2, hidden_size=384, num_heads=6, patch_size=4, input_size=16)
    cfg = DiTConfig(**{**base, **kw})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DiT(cfg)
    perturb_zero_initialised(net, seed=seed)
    return net.eval()


@pytest.fixture(scope="module")
def s8():
    """DiT-S/8 at image 256 (latent 32) with perturbed random weights, and a probe input/output."""
    net, cfg = random_dit("S/8", 256, seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    t, y = torch.tensor([999, 17]), torch.tensor([207, 1000])
    with torch.inference_mode():
        out = net(x, t, y)
    return net, cfg, (x, t, y), out


@pytest.fixture(scope="module")
def s8_pt(s8, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "s8.pt"
    torch.save(s8[0].state_dict(), path)
    return path


def _check_loaded(net: DiT, cfg: DiTConfig, s8, flavor: str = "official") -> None:
    ref, _, (x, t, y), out = s8
    assert cfg.name == "DiT-S/8" and (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (
        12,
        384,
        6,
        8,
    )
    assert (cfg.input_size, cfg.num_classes, cfg.learn_sigma, cfg.flavor) == (32, 1000, True, flavor)
    assert not net.training
    assert all(p.dtype == torch.float32 and not p.is_meta for p in net.parameters())
    _same_weights(net, ref)
    if flavor == "official":
        with torch.inference_mode():
            assert torch.equal(net(x, t, y), out)


# ------------------------------------------------------------------------------ formats


def test_official_state_dict(s8, s8_pt):
    net, cfg = load_dit(str(s8_pt))
    _check_loaded(net, cfg, s8)
    assert not net.pos_embed.requires_grad
    assert load_dit(s8_pt, model="DiT-S/8", image_size=256, num_classes=1000)[1] == cfg


def test_training_checkpoint_prefers_ema(s8, tmp_path):
    other = _small(1, patch_size=8, input_size=32, depth=12)  # same shapes as S/8, different values
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    args = argparse.Namespace(
        model="DiT-S/8", image_size=256, num_classes=1000, global_seed=0, results_dir="r"
    )
    ckpt = {"model": other.state_dict(), "ema": s8[0].state_dict(), "opt": opt.state_dict(), "args": args}
    path = tmp_path / "0050000.pt"
    torch.save(ckpt, path)
    net, cfg = load_dit(path)
    _check_loaded(net, cfg, s8)
    assert "training checkpoint (ema weights)" in describe(path)

    # no EMA: the raw weights, here with the 'module.' prefix DDP adds
    del ckpt["ema"]
    ckpt["model"] = {f"module.{k}": v for k, v in s8[0].state_dict().items()}
    torch.save(ckpt, path)
    net, cfg = load_dit(path)
    _check_loaded(net, cfg, s8)

    # the args are a cross-check: they say S/8 at 256, so an image size of 512 is refused
    _one_line_error("not image size 512", load_dit, path, image_size=512)


def test_safetensors_official_keys(s8, tmp_path):
    path = tmp_path / "s8.safetensors"
    save_file(s8[0].state_dict(), str(path))
    net, cfg = load_dit(path)
    _check_loaded(net, cfg, s8)
    assert describe(path).startswith("format:     official safetensors, stored float32")


def test_safetensors_recognised_by_content(s8, tmp_path):
    path = tmp_path / "weights.bin"
    save_file(s8[0].state_dict(), str(path))
    _check_loaded(*load_dit(path), s8)


def test_fp16_weights_load_as_fp32(s8, tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in s8[0].state_dict().items()}, str(path))
    net, _ = load_dit(path)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.blocks[0].attn.qkv.weight, s8[0].blocks[0].attn.qkv.weight.half().float())
    assert "stored float16" in describe(path)


@pytest.fixture(scope="module")
def s8_diffusers(s8, tmp_path_factory) -> Path:
    """S/8 written by diffusers itself: DiTTransformer2DModel(...).save_pretrained."""
    from diffusers import DiTTransformer2DModel

    cfg = s8[1].with_(flavor="diffusers")
    model = DiTTransformer2DModel(**to_diffusers_config(cfg))
    model.load_state_dict(to_diffusers_state_dict(s8[0]), strict=True)
    folder = tmp_path_factory.mktemp("diffusers") / "transformer"
    model.save_pretrained(folder)
    return folder


def test_diffusers_folder(s8, s8_diffusers):
    assert sorted(p.name for p in s8_diffusers.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    net, cfg = load_dit(s8_diffusers)
    _check_loaded(net, cfg, s8, flavor="diffusers")
    text = describe(s8_diffusers)
    assert "diffusers folder" in text and "pos_embed recomputed" in text and "sinusoid /127" in text
    # the flavor is a default, not a fact: the same weights with official numerics on request
    net, cfg = load_dit(s8_diffusers, flavor="official")
    _check_loaded(net, cfg, s8)


def test_diffusers_pipeline_root_and_bare_file(s8, s8_diffusers, tmp_path):
    root = tmp_path / "pipeline"
    (root / "transformer").mkdir(parents=True)
    for f in s8_diffusers.iterdir():
        (root / "transformer" / f.name).write_bytes(f.read_bytes())
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    _check_loaded(*load_dit(root), s8, flavor="diffusers")
    # the weights file next to its config.json
    _check_loaded(
        *load_dit(root / "transformer" / "diffusion_pytorch_model.safetensors"), s8, flavor="diffusers"
    )
    # alone: the latent size is not in the weights, so it must be given
    alone = tmp_path / "alone" / "dit.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((s8_diffusers / "diffusion_pytorch_model.safetensors").read_bytes())
    _one_line_error("pass the image size", load_dit, alone)
    _check_loaded(*load_dit(alone, image_size=256), s8, flavor="diffusers")


def test_diffusers_bin_folder(s8, tmp_path):
    from diffusers import DiTTransformer2DModel

    small = _small(5)
    model = DiTTransformer2DModel(**to_diffusers_config(small.config))
    model.load_state_dict(to_diffusers_state_dict(small))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    net, cfg = load_dit(tmp_path)
    assert cfg == small.config.with_(flavor="diffusers")
    _same_weights(net, small)


def test_diffusers_sharded_folder(tmp_path):
    from diffusers import DiTTransformer2DModel

    small = _small(6)
    model = DiTTransformer2DModel(**to_diffusers_config(small.config))
    model.load_state_dict(to_diffusers_state_dict(small))
    model.save_pretrained(tmp_path, max_shard_size="5MB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    net, _ = load_dit(tmp_path)
    _same_weights(net, small)


def test_diffusers_conversion_is_inverse(s8):
    theirs = to_diffusers_state_dict(s8[0])
    assert "transformer_blocks.11.norm1.emb.class_embedder.embedding_table.weight" in theirs
    assert theirs["transformer_blocks.0.attn1.to_k.weight"].shape == (384, 384)
    ours = from_diffusers_state_dict(theirs)
    ref = s8[0].state_dict()
    assert ours.keys() == set(ref) - {"pos_embed"}
    assert all(torch.equal(ours[k], ref[k]) for k in ours)


def test_diffusers_differing_embedders_refused(s8, s8_diffusers, tmp_path):
    theirs = to_diffusers_state_dict(s8[0])
    key = "transformer_blocks.3.norm1.emb.timestep_embedder.linear_2.bias"
    theirs[key] = theirs[key] + 1e-3
    (tmp_path / "config.json").write_text((s8_diffusers / "config.json").read_text())
    save_file(theirs, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    msg = _one_line_error(key, load_dit, tmp_path)
    assert "differs from the first block" in msg


# ------------------------------------------------------------------------------ inference and checks


def test_config_inferred_from_weights(tmp_path):
    net = _small(2, patch_size=4, input_size=16, num_classes=10, learn_sigma=False)
    torch.save(net.state_dict(), tmp_path / "custom.pt")
    loaded, cfg = load_dit(tmp_path / "custom.pt")
    assert cfg == net.config  # depth 2, width 384 → 6 heads, patch 4, latent 16, 10 classes, 4 out channels
    _same_weights(loaded, net)

    wide = _small(2, hidden_size=256, num_heads=4)  # not a published width: heads unknowable
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    _one_line_error("pass num_heads", load_dit, tmp_path / "wide.pt")
    assert load_dit(tmp_path / "wide.pt", num_heads=4)[1] == wide.config


def test_mismatch_messages(s8_pt, tmp_path):
    msg = _one_line_error("weights are not DiT-XL/2: ", load_dit, s8_pt, model="XL/2")
    assert (
        msg == "weights are not DiT-XL/2: x_embedder.proj.weight is (384, 4, 8, 8), expected (1152, 4, 2, 2)"
    )
    _one_line_error(
        "x_embedder.proj.weight is (384, 4, 8, 8), expected (384, 4, 2, 2)", load_dit, s8_pt, model="S/2"
    )
    _one_line_error(
        "weights are for image 256 (latent 32), not image size 512", load_dit, s8_pt, image_size=512
    )
    _one_line_error("weights have 1000 classes, not 10", load_dit, s8_pt, num_classes=10)
    shallow = _small(0, patch_size=8, input_size=32)
    torch.save(shallow.state_dict(), tmp_path / "shallow.pt")
    _one_line_error(
        "weights are not DiT-S/8: they have 2 blocks, expected 12",
        load_dit,
        tmp_path / "shallow.pt",
        model="S/8",
    )


def test_missing_and_unexpected_keys(s8, tmp_path):
    state = dict(s8[0].state_dict())
    for k in (
        "blocks.3.mlp.fc1.bias",
        "blocks.4.mlp.fc1.bias",
        "blocks.5.attn.proj.bias",
        "blocks.6.attn.proj.bias",
    ):
        del state[k]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "holes.pt")
    msg = _one_line_error("weights do not fit DiT-S/8: missing ", load_dit, tmp_path / "holes.pt")
    assert "blocks.3.mlp.fc1.bias, blocks.4.mlp.fc1.bias, blocks.5.attn.proj.bias (+1 more)" in msg
    assert msg.endswith("; unexpected extra.weight")


# ------------------------------------------------------------------------------ refusals


class _Evil:
    """A pickle payload that runs a shell command when unpickled by a permissive loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickles_are_refused(s8, tmp_path):
    marker = tmp_path / "PWNED"
    cases = {
        "evil.pt": lambda p: torch.save({"x": _Evil(marker)}, p),
        "evil_args.pt": lambda p: torch.save({"ema": s8[0].state_dict(), "args": _Evil(marker)}, p),
        "evil_legacy.pt": lambda p: p.write_bytes(pickle.dumps({"x": _Evil(marker)})),
        "evil_legacy2.pt": lambda p: p.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2)),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        msg = _one_line_error("", load_dit, tmp_path / name)
        assert "refused" in msg or "not a PyTorch checkpoint" in msg, msg
    for name in ("evil.pt", "evil_args.pt", "evil_legacy2.pt"):
        assert "posix.system" in _one_line_error("refused", load_dit, tmp_path / name)
    assert not marker.exists()


def test_bad_files(s8_pt, tmp_path):
    data = s8_pt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    _one_line_error("truncated or corrupt", load_dit, tmp_path / "truncated.pt")
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    _one_line_error("not a PyTorch checkpoint", load_dit, tmp_path / "random.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    _one_line_error("empty or truncated", load_dit, tmp_path / "empty.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _one_line_error("holds a list, not a dict of tensors", load_dit, tmp_path / "list.pt")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    _one_line_error("", load_dit, tmp_path / "list.pkl")
    torch.save({"epoch": 3, "note": "hi"}, tmp_path / "dict.pt")
    _one_line_error("a dict with keys epoch, note but no weights", load_dit, tmp_path / "dict.pt")
    save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    _one_line_error("holds no DiT weights", load_dit, tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _one_line_error("not a readable safetensors file", load_dit, tmp_path / "broken.safetensors")
    (tmp_path / "folder").mkdir()
    _one_line_error("not a diffusers DiT folder", load_dit, tmp_path / "folder")
    _one_line_error("no such checkpoint: nothing/here.pt", load_dit, "nothing/here.pt")
    _one_line_error("give a checkpoint", load_dit, None)
    _one_line_error("no released weights for DiT-S/8 at image 256", load_dit, None, model="S/8")


# ------------------------------------------------------------------------------ random weights


def test_random_weights_are_seeded_and_perturbed():
    before = torch.random.get_rng_state()
    a, cfg = load_dit(None, model="S/8", random_weights=True, weights_seed=1, num_classes=10)
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched
    b, _ = load_dit(None, model="S/8", random_weights=True, weights_seed=1, num_classes=10)
    c, _ = load_dit(None, model="S/8", random_weights=True, weights_seed=2, num_classes=10)
    _same_weights(a, b)
    assert not torch.equal(a.final_layer.linear.weight, c.final_layer.linear.weight)
    assert cfg.name == "DiT-S/8" and cfg.input_size == 32 and cfg.num_classes == 10 and not a.training
    for lin in a.zero_initialised():
        assert lin.weight.abs().max() > 0 and lin.bias.abs().max() > 0
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = a(x, torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert 0.1 < out.std().item() < 2.0 and torch.isfinite(out).all()
    _one_line_error("not both", load_dit, "x.pt", model="S/8", random_weights=True)
    _one_line_error("need a model name", load_dit, None, random_weights=True)


def test_describe(s8_pt):
    text = describe(s8_pt)
    lines = text.splitlines()
    assert lines[0] == "format:     official state dict (.pt), stored float32"
    assert "DiT-S/8 (depth 12, hidden 384, heads 6, patch 8" in lines[1]
    assert "latent 4×32×32 (image 256×256)" in lines[2]
    assert "1000 (+ null class 1000), learn_sigma True" in lines[3]
    assert lines[4].startswith("flavor:     official")
    n = sum(p.numel() for p in DiT(DiTConfig(12, 384, 6, 8)).parameters())
    assert f"parameters: {n:,} " in lines[5]
    xl = describe(None, model="XL/2", random_weights=True)
    assert "parameters: 675,129,632 (incl. pos_embed), 118.6" in xl  # the reference's count and GMACs


# ------------------------------------------------------------------------------ downloads


@pytest.fixture
def mirror(s8_pt, tmp_path) -> Path:
    """A folder standing in for the official download site (the file is our S/8, renamed)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / RELEASED).write_bytes(s8_pt.read_bytes())
    return folder


@pytest.fixture
def http_mirror(mirror):
    """The mirror served over real HTTP on 127.0.0.1."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_over_http(mirror, http_mirror, tmp_path):
    cache = tmp_path / "cache"
    path = hub.fetch_official(RELEASED, cache, base_url=http_mirror, progress=False)
    assert path == cache / RELEASED and path.read_bytes() == (mirror / RELEASED).read_bytes()
    # no temp file left; verified/ records the download's sha256 (checked on every reuse, issue 24)
    assert sorted(p.name for p in cache.iterdir()) == [RELEASED, "verified"]
    (mirror / RELEASED).unlink()
    assert hub.fetch_official(RELEASED, cache, base_url=http_mirror) == path  # cache hit, no request
    msg = _one_line_error(
        "(HTTP 404 File not found)", hub.fetch_official, "DiT-XL-2-512x512.pt", cache, base_url=http_mirror
    )
    assert f"place it at {cache / 'DiT-XL-2-512x512.pt'}" in msg
    assert sorted(p.name for p in cache.iterdir()) == [RELEASED, "verified"]


def test_released_name_downloads_into_cache(s8, mirror, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIT_EXPORT_BASE_URL", mirror.as_uri())  # urllib's own file:// handler
    monkeypatch.setenv("DIT_EXPORT_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    # the released name means XL/2 at 256, which our stand-in file is not: a download, then a refusal
    _one_line_error("weights are not DiT-XL/2: ", load_dit, RELEASED)
    assert (cache / RELEASED).read_bytes() == (mirror / RELEASED).read_bytes()
    (mirror / RELEASED).unlink()
    _one_line_error("weights are not DiT-XL/2: ", load_dit, None, model="XL/2")  # same file, from the cache
    _check_loaded(*load_dit(RELEASED, model="S/8"), s8)  # an explicit model overrides the name's


def test_offline_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _one_line_error(
        "offline and DiT-XL-2-512x512.pt is not cached", load_dit, "DiT-XL-2-512x512.pt", cache_dir=tmp_path
    )
    assert f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt and place it at {tmp_path}" in msg
    msg = _one_line_error(
        "cannot get someone/uncached-dit from the Hugging Face Hub (offline",
        load_dit,
        "someone/uncached-dit",
        cache_dir=tmp_path,
    )
    assert "transformer/diffusion_pytorch_model.safetensors" in msg


def test_hub_id_from_cache(s8, s8_diffusers, tmp_path, monkeypatch):
    """A Hub id resolved through the real huggingface_hub cache layout, offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "huggingface" / "models--someone--tiny-dit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit / "transformer"
    snap.mkdir(parents=True)
    for f in s8_diffusers.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _check_loaded(*load_dit("someone/tiny-dit", cache_dir=tmp_path), s8, flavor="diffusers")


def test_cli_info_offline_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIT_EXPORT_CACHE": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "dit_export", "info", "facebook/DiT-XL-2-256"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        "error: cannot get facebook/DiT-XL-2-256 from the Hugging Face Hub (offline"
    )
    assert proc.stderr.count("\n") == 1, proc.stderr
