"""Downloads against a local Hub (issue 24): the real ``huggingface_hub`` client and our official-URL
download, end to end through the CLI, with no internet.

`tests/local_hub.py` serves a tiny diffusers-format DiT and VAE that the tests make here; the CLI
runs in a fresh process with ``HF_ENDPOINT`` / ``DIT_EXPORT_BASE_URL`` pointed at it: it downloads,
caches, reloads offline from the cache without a request, and refuses a tampered or truncated file
(served so, or damaged in the cache afterwards) with one line.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("huggingface_hub")

from dit_diffusers import to_diffusers_config, to_diffusers_state_dict  # noqa: E402
from local_hub import LocalHub, error_line, network_environ, run  # noqa: E402
from safetensors.torch import save as save_safetensors  # noqa: E402

from dit_export.errors import UserError  # noqa: E402
from dit_export.models import hub  # noqa: E402
from dit_export.models.checkpoints import perturb_zero_initialised  # noqa: E402
from dit_export.models.configs import DiTConfig  # noqa: E402
from dit_export.models.dit import DiT  # noqa: E402
from dit_export.models.vae import random_vae  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
RELEASED = "DiT-XL-2-256x256.pt"
# a custom DiT far below S/8 (32×32 images with the ×8 tiny VAE): depth 2, width 64, 2 heads, patch 2
TINY = DiTConfig(depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=4, num_classes=10)
SAMPLE = ["--steps", "2", "--classes", "1", "7", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_dit() -> DiT:
    torch.manual_seed(0)
    net = DiT(TINY)
    perturb_zero_initialised(net, seed=0)  # fresh DiT weights output exactly zero
    return net.eval()


@pytest.fixture(scope="module")
def dit_files(tiny_dit) -> dict[str, bytes]:
    """A diffusers pipeline repo with only its transformer (as facebook/DiT-XL-2-256 is laid out)."""
    return {
        "model_index.json": b'{"_class_name": "DiTPipeline"}',
        "transformer/config.json": json.dumps(to_diffusers_config(TINY)).encode(),
        f"transformer/{WEIGHTS}": save_safetensors(to_diffusers_state_dict(tiny_dit)),
    }


@pytest.fixture(scope="module")
def vae_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("vae")
    random_vae("tiny", seed=1).save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", WEIGHTS)}


@pytest.fixture
def local_hub(dit_files, vae_files):
    with LocalHub() as h:
        h.add_repo("tester/tiny-dit", dit_files | {f"vae/{k}": v for k, v in vae_files.items()})
        h.add_repo("tester/tiny-vae", vae_files)
        yield h


def _blob(cache: Path, repo: str, path: str) -> Path:
    snapshots = cache / "huggingface" / f"models--{repo.replace('/', '--')}" / "snapshots"
    (snap,) = snapshots.iterdir()
    return (snap / path).resolve()


def test_hub_ids_download_cache_and_reload_offline(local_hub, tmp_path) -> None:
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    args = ["sample", "--ckpt", "tester/tiny-dit", "--vae", "tester/tiny-vae", *SAMPLE]
    r = run(env, *args, "--out", "online.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    asked = {p for _, p in local_hub.requests}
    commit = local_hub.repos["tester/tiny-dit"].commit
    assert "/api/models/tester/tiny-dit/revision/main" in asked  # the real client's endpoints, all of them
    assert f"/tester/tiny-dit/resolve/{commit}/transformer/{WEIGHTS}" in asked
    assert any(p.startswith("/lfs/tester/tiny-vae/") for p in asked)  # LFS through the redirect
    cache = tmp_path / "cache"
    assert (
        _blob(cache, "tester/tiny-dit", f"transformer/{WEIGHTS}").read_bytes()
        == local_hub.repos["tester/tiny-dit"].files[f"transformer/{WEIGHTS}"]
    )

    # offline: the same images from the cache, and not one request
    before = len(local_hub.requests)
    r = run({**env, "DIT_EXPORT_OFFLINE": "1"}, *args, "--out", "offline.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(local_hub.requests) == before
    assert (tmp_path / "offline.png").read_bytes() == (tmp_path / "online.png").read_bytes()

    # the cache damaged afterwards: a truncated VAE blob, then a flipped byte in the DiT's
    offline = {**env, "DIT_EXPORT_OFFLINE": "1"}
    vae_blob = _blob(cache, "tester/tiny-vae", WEIGHTS)
    data = vae_blob.read_bytes()
    vae_blob.write_bytes(data[: len(data) // 3])
    line = error_line(
        run(offline, *args, "--out", "x.png", cwd=tmp_path), "VAE tester/tiny-vae", "corrupt or truncated"
    )
    assert str(vae_blob) in line and "run again online" in line
    vae_blob.write_bytes(data)
    dit_blob = _blob(cache, "tester/tiny-dit", f"transformer/{WEIGHTS}")
    data = bytearray(dit_blob.read_bytes())
    data[-1] ^= 0x01  # same size, one bit: only the digest can tell
    dit_blob.write_bytes(bytes(data))
    error_line(run(offline, *args, "--out", "x.png", cwd=tmp_path), "tester/tiny-dit", "sha256", "corrupt")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "how, needle", [("flip", "corrupt or truncated"), ("truncate", "Consistency check failed")]
)
def test_hub_refuses_a_tampered_or_truncated_download(local_hub, tmp_path, how, needle) -> None:
    """The server lies about the weights: other bytes of the advertised size (huggingface_hub checks
    only the length: our digest check refuses them), or a short body (the client's length check)."""
    local_hub.corrupt("tester/tiny-dit", f"transformer/{WEIGHTS}", how)
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    r = run(env, "sample", "--ckpt", "tester/tiny-dit", "--vae", "none", *SAMPLE, "--save-latents",
        "z.npy", cwd=tmp_path)
    error_line(r, "tester/tiny-dit", needle)
    assert not (tmp_path / "z.npy").exists()
    if how != "flip":
        return  # the VAE case below does not depend on `how`: run once
    # the VAE config (a small, non-LFS file) served with other bytes: its git blob sha1 refuses it
    local_hub.corrupt("tester/tiny-vae", "config.json", "flip")
    r = run(env, "sample", "--model", "S/8", "--random-weights", "--vae", "tester/tiny-vae",
        "--image-size", "64", *SAMPLE, cwd=tmp_path)
    error_line(r, "VAE tester/tiny-vae", "git-sha1", "config.json")


def test_hub_pipeline_subfolder_vae(local_hub, tmp_path) -> None:
    """`--vae owner/name/vae`: a pipeline's VAE subfolder; only the files the loaders read are fetched."""
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    r = run(env, "sample", "--ckpt", "tester/tiny-dit", "--vae", "tester/tiny-dit/vae", *SAMPLE, "--out",
        "p.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {p for m, p in local_hub.requests if m == "GET" and "/resolve/" in p}
    assert {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in got} == {
        "transformer/config.json",
        "vae/config.json",
    }  # the weights come from the LFS host; model_index.json is never fetched
    assert not any("model_index.json" in p for _, p in local_hub.requests)


def test_hub_unknown_repo_and_missing_weights_are_one_line(local_hub, tmp_path) -> None:
    local_hub.add_repo("tester/no-weights", {"transformer/config.json": b"{}"})
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    r = run(env, "sample", "--ckpt", "tester/nothing-here", "--vae", "none", *SAMPLE, cwd=tmp_path)
    error_line(r, "tester/nothing-here is neither a local path nor a repository")
    r = run(env, "sample", "--ckpt", "tester/no-weights", "--vae", "none", *SAMPLE, cwd=tmp_path)
    error_line(r, "tester/no-weights on the Hugging Face Hub has no diffusers weights")


# ------------------------------------------------------------------------------ the official URL


@pytest.fixture
def released_stand_in(tiny_dit) -> bytes:
    """A small official-format .pt served under the released name (it is not XL/2, and says so)."""
    buf = io.BytesIO()
    torch.save(tiny_dit.state_dict(), buf)
    return buf.getvalue()


def test_official_name_downloads_from_the_base_url(local_hub, released_stand_in, tmp_path) -> None:
    local_hub.files[RELEASED] = released_stand_in
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    args = ["sample", "--ckpt", RELEASED, "--vae", "none", *SAMPLE]
    r = run(env, *args, cwd=tmp_path)
    # downloaded, named as not the official site, then refused for what it is: not XL/2 at 256
    assert f"downloading {RELEASED} from {local_hub.files_url}{RELEASED}, not the official site" in r.stderr
    error_line(r, "not image size 256")  # the released name means XL/2 at 256
    cached = tmp_path / "cache" / RELEASED
    assert cached.read_bytes() == released_stand_in
    record = json.loads((tmp_path / "cache" / "verified" / f"{RELEASED}.json").read_text())
    assert record["url"] == local_hub.files_url + RELEASED and record["size"] == len(released_stand_in)

    before = len(local_hub.requests)
    r = run({**env, "DIT_EXPORT_OFFLINE": "1"}, *args, cwd=tmp_path)
    error_line(r, "not image size 256")  # the same file, from the cache, no request
    assert len(local_hub.requests) == before

    cached.write_bytes(released_stand_in[:-10])  # damaged in the cache
    error_line(run(env, *args, cwd=tmp_path), RELEASED, "corrupt or truncated", f"delete {cached}")
    assert len(local_hub.requests) == before  # a cached file is never silently re-fetched


def test_official_truncated_download_leaves_nothing(local_hub, released_stand_in, tmp_path) -> None:
    local_hub.files[RELEASED] = released_stand_in
    local_hub.truncate_files.add(RELEASED)
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    r = run(env, "sample", "--ckpt", RELEASED, "--vae", "none", *SAMPLE, cwd=tmp_path)
    error_line(r, f"{RELEASED} is truncated", f"of {len(released_stand_in)} bytes")
    cache = tmp_path / "cache"
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == []


def test_a_known_hash_is_checked_whatever_the_base_url(
    local_hub, released_stand_in, tmp_path, monkeypatch
) -> None:
    """DIT_EXPORT_BASE_URL moves where the file comes from, never what it must be: with a hash on
    record (none is published today, so the table is empty) a different file is refused."""
    for var in ("DIT_EXPORT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    local_hub.files[RELEASED] = released_stand_in
    monkeypatch.setitem(hub.OFFICIAL_SHA256, RELEASED, "0" * 16)
    with pytest.raises(UserError, match="is corrupt .*invalid hash value") as info:
        hub.fetch_official(RELEASED, tmp_path / "c", base_url=local_hub.files_url, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c" / RELEASED).exists()
    import hashlib

    right = hashlib.sha256(released_stand_in).hexdigest()[:16]
    monkeypatch.setitem(hub.OFFICIAL_SHA256, RELEASED, right)
    path = hub.fetch_official(RELEASED, tmp_path / "c", base_url=local_hub.files_url, progress=False)
    assert path.read_bytes() == released_stand_in
    # the cached copy is held to the same hash
    path.write_bytes(released_stand_in[::-1])
    os.utime(path, ns=(1, 1))
    with pytest.raises(UserError, match="corrupt or truncated"):
        hub.fetch_official(RELEASED, tmp_path / "c", base_url=local_hub.files_url, progress=False)


def test_the_issue_command_downloads_the_default_vae(local_hub, vae_files, tmp_path) -> None:
    """`sample --model S/8 --random-weights --steps 2 --out x.png`, the command that crashed: its
    default VAE (`mse` = stabilityai/sd-vae-ft-mse, here a tiny stand-in under that id) is fetched."""
    local_hub.add_repo("stabilityai/sd-vae-ft-mse", vae_files)
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    r = run(env, "sample", "--model", "S/8", "--random-weights", "--steps", "2", "--out", "x.png",
        "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote grid x.png and 8 images in x/" in r.stdout
    assert ("GET", "/api/models/stabilityai/sd-vae-ft-mse/revision/main") in local_hub.requests


def test_hub_sharded_weights(local_hub, dit_files, tmp_path) -> None:
    """A transformer stored as an index + shards (how diffusers saves large models): the shards
    are fetched too, checked like any blob, and give the same latents as the single file."""
    from safetensors.torch import load as load_safetensors

    state = load_safetensors(dit_files[f"transformer/{WEIGHTS}"])
    names = sorted(state)
    halves = names[: len(names) // 2], names[len(names) // 2 :]
    shard = [f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
    files = {
        "transformer/config.json": dit_files["transformer/config.json"],
        "transformer/diffusion_pytorch_model.safetensors.index.json": json.dumps(
            {"metadata": {}, "weight_map": {k: shard[i] for i, part in enumerate(halves) for k in part}}
        ).encode(),
    }
    for i, part in enumerate(halves):
        files[f"transformer/{shard[i]}"] = save_safetensors({k: state[k] for k in part})
    local_hub.add_repo("tester/sharded", files)
    env = network_environ(local_hub.endpoint, local_hub.files_url, tmp_path)
    for repo, out in (("tester/sharded", "a.npy"), ("tester/tiny-dit", "b.npy")):
        r = run(env, "sample", "--ckpt", repo, "--vae", "none", *SAMPLE, "--save-latents", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
