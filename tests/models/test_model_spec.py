"""ModelSpec (which DiT, weights and VAE), the `models` listing, offline downloads, refusals.

No network is reachable here: every download runs against local files (file:// or 127.0.0.1) or
must fail fast because DIT_EXPORT_OFFLINE is set. Models are tiny-digits and S/8 configs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dit_export.errors import UserError
from dit_export.models import hub
from dit_export.models.catalog import format_models, list_models
from dit_export.models.embedded import EMBEDDED
from dit_export.models.spec import MAX_SEED, ModelSpec

REPO = Path(__file__).resolve().parents[2]
TINY = EMBEDDED["tiny-digits"]


def _error(spec: ModelSpec, match: str) -> str:
    with pytest.raises(UserError) as info:
        spec.validate()
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ------------------------------------------------------------------------------ validate


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(image_size=0), "--image-size 0 is out of range (allowed ≥ 1)"),
        (dict(image_size=-256), "--image-size -256 is out of range"),
        (dict(image_size=260), "--image-size 260 is not a multiple of the VAE factor 8"),
        (dict(image_size=264), "must be a multiple of 64 for DiT-S/8"),
        (dict(image_size=256.0), "--image-size must be an integer"),
        (dict(num_classes=0), "--num-classes 0 is out of range (allowed ≥ 1)"),
        (dict(num_classes=True), "--num-classes must be an integer"),
        (dict(weights_seed=2**64), f"out of range (allowed 0..{MAX_SEED})"),
        (dict(weights_seed=-1), f"--weights-seed -1 is out of range (allowed 0..{MAX_SEED})"),
        (dict(flavor="fancy"), "unknown flavor 'fancy'; choose one of official, diffusers"),
        (dict(model="Q/3"), "unknown model 'Q/3'"),
        (dict(vae="no/such/folder/"), "--vae no/such/folder/: no such folder"),
        (dict(vae=" "), "--vae is empty"),
    ],
)
def test_validate_rejects_bad_fields(fields, match):
    _error(ModelSpec(**{"model": "S/8", "random_weights": True, **fields}), match)


def test_validate_rejects_inconsistent_sources(tmp_path):
    _error(ModelSpec(model="S/8", ckpt="x.pt", random_weights=True), "not both")
    _error(ModelSpec(random_weights=True), "--random-weights needs --model")
    _error(ModelSpec(), "give --model, --ckpt or both")
    _error(ModelSpec(model="S/8"), "no released weights for DiT-S/8 at image 256")
    _error(ModelSpec(model="XL/2", image_size=384), "no released weights for DiT-XL/2 at image 384")
    _error(ModelSpec(ckpt=str(tmp_path / "missing.pt")), "no such checkpoint")
    _error(ModelSpec(model="tiny-digits", image_size=64), "tiny-digits is trained at image size 32, not 64")
    _error(ModelSpec(model="tiny-digits", num_classes=1000), "tiny-digits has 10 classes, not 1000")
    _error(ModelSpec(model="XL/2", num_classes=10), "the released DiT-XL/2 weights have 1000 classes")
    _error(ModelSpec(model=2), "--model must be a string, got 2")
    _error(ModelSpec(ckpt=3), "--ckpt must be a path or name")
    _error(ModelSpec(model="S/8", random_weights="yes"), "random_weights must be True or False")
    assert ModelSpec(ckpt=TINY.ckpt_path).validate().ckpt == str(TINY.ckpt_path)  # a Path is fine


def test_validate_normalises(tmp_path, monkeypatch):
    s = ModelSpec(model="xl/2").validate()
    assert (s.model, s.image_size, s.latent_size, s.vae) == ("DiT-XL/2", 256, 32, "mse")
    assert ModelSpec(model="DiT-S-8", random_weights=True).validate().model == "DiT-S/8"
    assert ModelSpec(model="S/8", random_weights=True, vae="EMA").validate().vae == "ema"
    # a shipped model: its size, its own VAE unless one is named
    t = ModelSpec(model="TINY_DIGITS").validate()
    assert (t.model, t.image_size, t.vae, t.vae_source) == (
        "tiny-digits",
        32,
        "tiny-digits",
        "tiny-digits",  # its name, not a path into the installed package (issue 24)
    )
    assert ModelSpec(model="tiny-digits", vae="none").validate().vae == "none"
    assert ModelSpec(model="tiny-digits", vae="random-tiny").validate().vae_source == "random-tiny (seed 0)"
    # a local checkpoint becomes an absolute path (the manifest can reload it from anywhere)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    assert ModelSpec(ckpt="w.pt").validate().ckpt == str(tmp_path / "w.pt")
    # ckpt alone: the size is left to the weights; released names and hub ids pass unchecked
    assert ModelSpec(ckpt="DiT-XL-2-512x512.pt").validate().image_size is None
    assert ModelSpec(ckpt="facebook/DiT-XL-2-256").validate().latent_size is None
    assert s.validate() == s  # idempotent


def test_round_trips_as_data():
    s = ModelSpec(model="S/8", random_weights=True, weights_seed=7, vae="random-tiny", num_classes=10)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ModelSpec.from_dict(d) == s
    with pytest.raises(UserError, match="unknown model spec fields: colour"):
        ModelSpec.from_dict({**d, "colour": "red"})
    with pytest.raises(UserError, match="must be a JSON object"):
        ModelSpec.from_dict(["S/8"])


def test_folder_name_reads_no_weights(tmp_path):
    assert ModelSpec(model="XL/2").folder_name("fp16", 1) == "DiT-XL-2-256-fp16-b1"
    assert ModelSpec(model="XL/2", image_size=512).folder_name("fp32", 4) == "DiT-XL-2-512-fp32-b4"
    assert ModelSpec(model="tiny-digits").folder_name("fp32", 2) == "tiny-digits-32-fp32-b2"
    assert ModelSpec(ckpt=str(TINY.ckpt_path)).folder_name("fp16", 1) == "tiny-digits-32-fp16-b1"
    assert ModelSpec(ckpt="DiT-XL-2-512x512.pt").folder_name("fp16", 1) == "DiT-XL-2-512-fp16-b1"
    # safetensors header and diffusers config.json, without torch
    header = {
        "x_embedder.proj.weight": [384, 4, 8, 8],
        "pos_embed": [1, 16, 384],
        "blocks.11.mlp.fc1.bias": [1536],
    }
    raw = json.dumps({k: {"dtype": "F32", "shape": v, "data_offsets": [0, 0]} for k, v in header.items()})
    blob = raw.encode() + b" " * (-len(raw) % 8)
    (tmp_path / "s8.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)
    assert ModelSpec(ckpt=str(tmp_path / "s8.safetensors")).folder_name("fp16", 1) == "DiT-S-8-256-fp16-b1"
    conf = {
        "num_attention_heads": 6,
        "attention_head_dim": 64,
        "num_layers": 12,
        "patch_size": 2,
        "sample_size": 64,
    }
    (tmp_path / "diff" / "transformer").mkdir(parents=True)
    (tmp_path / "diff" / "transformer" / "config.json").write_text(json.dumps(conf))
    assert ModelSpec(ckpt=str(tmp_path / "diff")).folder_name("fp32", 1) == "DiT-S-2-512-fp32-b1"


def test_spec_imports_without_torch():
    """The runtime reads a spec from a manifest with no torch installed: importing it must not load torch."""
    code = (
        "import sys\n"
        "from dit_export.models.spec import ModelSpec\n"
        "from dit_export.models.catalog import list_models\n"
        "s = ModelSpec(model='XL/2').validate(); s.folder_name('fp16', 1); list_models()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------------ loading


def test_tiny_digits_loads_by_name_and_with_ckpt():
    pytest.importorskip("torch")
    net, cfg = ModelSpec(model="tiny-digits").load_dit()
    assert (cfg.num_heads, cfg.input_size, cfg.num_classes) == (4, 4, 10)
    # --model tiny-digits --ckpt <file> was KeyError '-digits' (issue 16)
    _, cfg2 = ModelSpec(model="tiny-digits", ckpt=str(TINY.ckpt_path)).load_dit()
    assert cfg2 == cfg
    vae = ModelSpec(model="tiny-digits").load_vae()
    assert vae.config["latent_channels"] == 4 and vae.config["scaling_factor"] != 0.18215
    assert ModelSpec(model="tiny-digits", vae="none").load_vae() is None
    net, rcfg = ModelSpec(model="tiny-digits", random_weights=True, weights_seed=3).load_dit()
    assert rcfg == cfg and all(lin.weight.abs().max() > 0 for lin in net.zero_initialised())


def test_random_spec_matches_load_dit():
    torch = pytest.importorskip("torch")
    from dit_export.models.checkpoints import random_dit

    spec = ModelSpec(model="S/8", random_weights=True, weights_seed=5, num_classes=10, vae="random-tiny")
    net, cfg = spec.load_dit()
    ref, ref_cfg = random_dit("S/8", 256, num_classes=10, seed=5)
    assert cfg == ref_cfg
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert spec.load_vae().config["block_out_channels"] == [16, 16, 32, 32]


def test_info_on_the_shipped_model():
    """`info tiny-digits` and `info <shipped file>` (issue 16: 'no such checkpoint', 'num_heads')."""
    pytest.importorskip("torch")
    from dit_export.models.checkpoints import describe

    by_name = describe("tiny-digits")
    assert "model:      tiny-digits (depth 4, hidden 128, heads 4, patch 1" in by_name
    assert "parameters: 1,274,888" in by_name
    by_file = describe(TINY.ckpt_path)
    assert "tiny-digits (depth 4, hidden 128, heads 4" in by_file and "meta.json" in by_file


def test_list_models():
    rows = {(r["name"], r["image_size"]): r for r in list_models()}
    assert len(rows) == 12 * 2 + 1
    xl = rows["DiT-XL/2", 256]
    assert xl["params"] == 675_129_632 and round(xl["gmacs"], 1) == 118.6 and xl["gflops"] == 2 * xl["gmacs"]
    assert xl["weights"] == "released" and xl["released"] == ["DiT-XL-2-256x256.pt", "facebook/DiT-XL-2-256"]
    assert round(rows["DiT-XL/2", 512]["gmacs"], 1) == 524.5
    assert (
        round(rows["DiT-S/8", 256]["gmacs"], 2) == 0.36 and rows["DiT-S/8", 256]["weights"] == "random only"
    )
    tiny = rows["tiny-digits", 32]
    assert (tiny["weights"], tiny["cached"], tiny["params"]) == ("shipped", ["tiny-digits"], 1_274_888)
    text = format_models(list(rows.values()))
    assert text.splitlines()[0].split() == ["model", "image", "params", "GFLOPs", "weights"]
    assert any(ln.startswith("tiny-digits") and "shipped in the package" in ln for ln in text.splitlines())
    assert any(ln.startswith("DiT-S/8") and "random weights only" in ln for ln in text.splitlines())


def test_list_models_sees_the_cache(tmp_path):
    (tmp_path / "DiT-XL-2-512x512.pt").write_bytes(b"x")
    (tmp_path / "huggingface" / "models--facebook--DiT-XL-2-256").mkdir(parents=True)
    xl = {r["image_size"]: r for r in list_models(cache_dir=tmp_path) if r["name"] == "DiT-XL/2"}
    assert (xl[256]["cached"], xl[512]["cached"]) == (["facebook/DiT-XL-2-256"], ["DiT-XL-2-512x512.pt"])
    assert "cached (DiT-XL-2-512x512.pt)" in format_models([xl[512]])


def test_num_params_matches_the_network():
    torch = pytest.importorskip("torch")
    from dit_export.models.configs import model_config
    from dit_export.models.dit import DiT

    for name in ("S/2", "B/4", "tiny-digits"):
        cfg = model_config(name)
        with torch.device("meta"):
            assert cfg.num_params() == sum(p.numel() for p in DiT(cfg).parameters()), name


# ------------------------------------------------------------------------------ offline, downloads


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("DIT_EXPORT_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("DIT_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def _fast_error(fn, *args, match: str, **kwargs) -> str:
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert time.monotonic() - start < 5.0  # no network retries
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_offline_is_honoured_on_every_download_path(offline):
    msg = _fast_error(
        hub.locate_vae, "mse", match="cannot get VAE stabilityai/sd-vae-ft-mse from the Hugging Face"
    )
    assert "offline: DIT_EXPORT_OFFLINE is set" in msg and str(offline / "sd-vae-ft-mse") in msg
    msg = _fast_error(
        hub.locate_checkpoint, "facebook/DiT-XL-2-256", match="(offline: DIT_EXPORT_OFFLINE is set"
    )
    msg = _fast_error(
        hub.locate_checkpoint, "DiT-XL-2-256x256.pt", match="offline and DiT-XL-2-256x256.pt is not cached"
    )
    assert f"place it at {offline / 'DiT-XL-2-256x256.pt'}" in msg
    _fast_error(
        hub.download_url, "http://127.0.0.1:9/x.pt", offline / "x.pt", match="offline and x.pt is not cached"
    )
    assert not offline.exists() or not any(offline.glob("*.pt"))


def test_check_available_before_any_model_is_built(offline):
    """The missing VAE of an XL/2 build is found before the 675 M-parameter model (issue 16)."""
    (offline).mkdir()
    (offline / "DiT-XL-2-256x256.pt").write_bytes(b"stand-in")  # the DiT is cached, the VAE is not
    msg = _fast_error(
        ModelSpec(model="XL/2").check_available, match="cannot get VAE stabilityai/sd-vae-ft-mse"
    )
    assert "DIT_EXPORT_OFFLINE" in msg
    _fast_error(ModelSpec(model="XL/2", image_size=512, vae="none").check_available, match="not cached")
    # nothing to fetch: shipped, random, or a local folder
    assert ModelSpec(model="tiny-digits").check_available().vae == "tiny-digits"
    assert ModelSpec(model="S/8", random_weights=True, vae="random-sd").check_available()
    assert ModelSpec(model="S/8", random_weights=True, vae=str(TINY.vae_path)).check_available()
    assert ModelSpec(model="XL/2", vae="none").check_available().model == "DiT-XL/2"


def test_vae_offline_subprocess_is_one_line(tmp_path):
    """The same through a fresh process with only DIT_EXPORT_OFFLINE (was 5 network retries, ~25 s)."""
    code = (
        "from dit_export.errors import UserError\n"
        "from dit_export.models.spec import ModelSpec\n"
        "try:\n"
        "    ModelSpec(model='S/8', random_weights=True, vae='ema').check_available()\n"
        "except UserError as e:\n"
        "    print('USERERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(DIT_EXPORT_OFFLINE="1", DIT_EXPORT_CACHE=str(tmp_path / "c"), HF_HOME=str(tmp_path / "hf"))
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert time.monotonic() - start < 60
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (
        r.stdout.startswith("USERERROR cannot get VAE stabilityai/sd-vae-ft-ema")
        and "DIT_EXPORT_OFFLINE" in r.stdout
    )


def test_download_url_checks_the_hash(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.delenv("DIT_EXPORT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 1000)
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = hub.download_url(src.as_uri(), tmp_path / "cache" / "a.bin", progress=False, sha256=digest[:16])
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(UserError, match="is corrupt .*invalid hash value") as info:
        hub.download_url(src.as_uri(), tmp_path / "cache" / "b.bin", progress=False, sha256="0" * 16)
    assert "place it at" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.bin"]  # no partial file left
    with pytest.raises(UserError, match="cannot download"):
        hub.download_url((tmp_path / "missing.bin").as_uri(), tmp_path / "cache" / "c.bin", progress=False)


# ------------------------------------------------------------------------------ refusals


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_vae_is_refused_as_code(tmp_path):
    """A VAE folder whose .bin would run code on load: refused, nothing runs, the message says why."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from dit_export.models.vae import load_vae, random_vae

    folder = tmp_path / "vae"
    random_vae("tiny").save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"decoder.conv_in.weight": _Evil(marker)}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError) as info:
        load_vae(str(folder))
    msg = str(info.value)
    assert "\n" not in msg and "refused" in msg and "would run code" in msg and "posix.system" in msg, msg
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_as_code(tmp_path):
    torch = pytest.importorskip("torch")
    from dit_export.models.checkpoints import load_dit

    marker = tmp_path / "PWNED"
    torch.save({"x_embedder.proj.weight": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused .*would run code"):
        ModelSpec(ckpt=str(tmp_path / "evil.pt")).load_dit()
    with pytest.raises(UserError, match="would run code"):
        load_dit(tmp_path / "evil.pt")
    assert not marker.exists()


def test_vae_load_prints_nothing(tmp_path):
    """Loading a VAE folder (diffusers underneath) adds no stderr line: the CLI's one line stays one."""
    code = (
        "from dit_export.models.spec import ModelSpec\n"
        "from dit_export.errors import UserError\n"
        "ModelSpec(model='tiny-digits').load_vae()\n"
        f"try:\n    ModelSpec(model='tiny-digits', vae={str(tmp_path / 'deeper')!r}).load_vae()\n"
        "except UserError as e:\n    print('USERERROR', e)\n"
    )
    pytest.importorskip("diffusers")
    shutil.copytree(TINY.vae_path, tmp_path / "deeper")
    conf = json.loads((tmp_path / "deeper" / "config.json").read_text())
    (tmp_path / "deeper" / "config.json").write_text(json.dumps({**conf, "layers_per_block": 2}))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("USERERROR VAE weights in") and "missing" in r.stdout
