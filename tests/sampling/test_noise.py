"""Noise generators: Random123 known answers, the shared C++ vectors, counter-based invariances, torch stream.

`python tests/sampling/test_noise.py` regenerates tests/data/noise_vectors.json from the scalar reference
below (plain Python ints and `math`, independent of the vectorised module).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dit_export.errors import UserError
from dit_export.fileio import write_json
from dit_export.sampling.noise import (
    NOISE_KINDS,
    NOISE_TAG,
    PhiloxNoise,
    TorchNoise,
    make_noise,
    philox4x32,
    philox_normal,
)

VECTORS = Path(__file__).resolve().parents[1] / "data" / "noise_vectors.json"

# Random123 tests/kat_vectors, as cut-and-pasted into DEShawResearch/Random123-Boost
# libs/random/test/test_philox.cpp: counter (4 words), key (2 words) -> output (4 words).
RANDOM123_KAT = [
    (10, "00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    (10, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    (10, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
    (7, "00000000 00000000 00000000 00000000", "00000000 00000000", "5f6fb709 0d893f64 4f121f81 4f730a48"),
    (7, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "5207ddc2 45165e59 4d8ee751 8c52f662"),
    (7, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "4dfccaba 190a87f0 c47362ba b6b5242a"),
]

# (seed, draw, image, shape, start): the shared vectors, each 16 values (fewer at a tensor's end).
VECTOR_CASES = [
    (0, 0, 0, (4, 32, 32), 0),
    (0, 1, 0, (4, 32, 32), 0),
    (42, 250, 7, (4, 32, 32), 4000),
    (0x0123456789ABCDEF, 3, 123456, (4, 64, 64), 16368),
    (2**64 - 1, 2**32 - 1, 2**32 - 1, (4, 8, 8), 0),
    (1, 0, 2, (3, 5, 5), 64),  # 75 elements: the last block is used for lanes 0..2 only
]


def ref_philox(ctr: list[int], key: list[int], rounds: int = 10) -> list[int]:
    """Scalar Philox4x32 straight from the Random123 definition."""
    c, (k0, k1) = list(ctr), key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
    return c


def ref_block(seed: int, draw: int, image: int, block: int) -> tuple[list[int], list[float]]:
    """Words and the four float64 normals of one block, as docs/noise.md specifies."""
    words = ref_philox([block, draw, image, NOISE_TAG], [seed & 0xFFFFFFFF, seed >> 32])
    u = [(w + 0.5) * 2.0**-32 for w in words]
    z = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        r = math.sqrt(-2.0 * math.log(a))
        z += [r * math.cos(2.0 * math.pi * b), r * math.sin(2.0 * math.pi * b)]
    return words, z


def ref_values(seed: int, draw: int, image: int, start: int, count: int) -> np.ndarray:
    out = [ref_block(seed, draw, image, e // 4)[1][e % 4] for e in range(start, start + count)]
    return np.array(out, dtype=np.float64).astype(np.float32)


def f32_hex(values: np.ndarray) -> list[str]:
    return [f"{b:08x}" for b in np.asarray(values, dtype=np.float32).view(np.uint32).tolist()]


def make_vectors() -> dict:
    kat = [
        {"rounds": r, "counter": c.split(), "key": k.split(), "output": o.split()}
        for r, c, k, o in RANDOM123_KAT
    ]
    normal = []
    for seed, draw, image, shape, start in VECTOR_CASES:
        count = min(16, math.prod(shape) - start)
        vals = ref_values(seed, draw, image, start, count)
        normal.append(
            {
                "seed": seed,
                "seed_hex": f"{seed:016x}",
                "draw": draw,
                "image": image,
                "shape": list(shape),
                "start": start,
                "block_words": [f"{w:08x}" for w in ref_block(seed, draw, image, start // 4)[0]],
                "values_f32_bits": f32_hex(vals),
                "values": [float(str(v)) for v in vals],
            }
        )
    return {
        "about": "Shared noise test vectors (docs/noise.md). philox4x32_kat: Random123 known answers, hex "
        "uint32 words. philox_normal: values[i] is flat element start+i of philox_normal(seed, draw, "
        "[image], shape); values_f32_bits are the exact float32 bit patterns (authoritative), values the "
        "shortest decimal of each float32; block_words the raw Philox output of block start // 4.",
        "noise_tag": f"{NOISE_TAG:08x}",
        "philox4x32_kat": kat,
        "philox_normal": normal,
    }


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_vector_file_is_current(vectors: dict) -> None:
    assert vectors == json.loads(json.dumps(make_vectors())), "run: python tests/sampling/test_noise.py"


def test_philox_known_answers(vectors: dict) -> None:
    assert len(vectors["philox4x32_kat"]) == 6
    for case in vectors["philox4x32_kat"]:
        ctr = np.array([int(w, 16) for w in case["counter"]], dtype=np.uint32)
        key = (int(case["key"][0], 16), int(case["key"][1], 16))
        want = [int(w, 16) for w in case["output"]]
        assert philox4x32(ctr, key, case["rounds"]).tolist() == want
        assert ref_philox(ctr.tolist(), list(key), case["rounds"]) == want


def test_philox_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2**32, size=(3, 5, 4), dtype=np.uint32)
    key = (0xDEADBEEF, 0x01234567)
    out = philox4x32(ctr, key)
    assert out.shape == (3, 5, 4) and out.dtype == np.uint32
    for c, o in zip(ctr.reshape(-1, 4), out.reshape(-1, 4)):
        assert o.tolist() == ref_philox(c.tolist(), list(key))


def test_shared_vectors(vectors: dict) -> None:
    for case in vectors["philox_normal"]:
        z = philox_normal(case["seed"], case["draw"], [case["image"]], tuple(case["shape"]))
        assert z.dtype == np.float32 and z.shape == (1, *case["shape"])
        got = z.reshape(-1)[case["start"] : case["start"] + len(case["values"])]
        assert f32_hex(got) == case["values_f32_bits"], case
        assert np.array_equal(got, np.array(case["values"], dtype=np.float32))
        block = case["start"] // 4
        ctr = np.array([block, case["draw"], case["image"], NOISE_TAG], dtype=np.uint32)
        words = philox4x32(ctr, (case["seed"] & 0xFFFFFFFF, case["seed"] >> 32))
        assert [f"{w:08x}" for w in words.tolist()] == case["block_words"]


def test_whole_tensor_matches_scalar_reference() -> None:
    z = philox_normal(7, 2, [0, 9], (3, 5, 5))
    for row, image in zip(z, [0, 9]):
        assert f32_hex(row.reshape(-1)) == f32_hex(ref_values(7, 2, image, 0, 75))


def test_deterministic_and_batch_split_invariant() -> None:
    shape = (4, 16, 16)
    full = philox_normal(123, 5, range(8), shape)
    assert np.array_equal(full, philox_normal(123, 5, np.arange(8), shape))
    halves = np.concatenate(
        [philox_normal(123, 5, [0, 1, 2, 3], shape), philox_normal(123, 5, [4, 5, 6, 7], shape)]
    )
    assert np.array_equal(full, halves)
    assert np.array_equal(full[5:6], philox_normal(123, 5, [5], shape))
    assert np.array_equal(full[[6, 2]], philox_normal(123, 5, [6, 2], shape))


@pytest.mark.parametrize(
    "other",
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2**32, 0, 0), (0, 2**31, 0), (0, 0, 2**31)],
    ids=["seed", "draw", "image", "seed-high-word", "draw-high-bit", "image-high-bit"],
)
def test_streams_differ(other: tuple[int, int, int]) -> None:
    base = philox_normal(0, 0, [0], (4, 32, 32)).reshape(-1)
    seed, draw, image = other
    alt = philox_normal(seed, draw, [image], (4, 32, 32)).reshape(-1)
    assert abs(np.corrcoef(base, alt)[0, 1]) < 0.1
    assert np.mean(base == alt) < 0.01


def test_normal_statistics() -> None:
    z = philox_normal(2024, 0, range(16), (4, 64, 64)).astype(np.float64).reshape(-1)  # 262144 values
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(np.abs(z) > 1.959964) - 0.05) < 0.003
    assert abs(np.mean(z**3)) < 0.03 and abs(np.mean(z**4) - 3.0) < 0.1
    for lag in (1, 2, 4):  # neighbouring lanes and blocks uncorrelated
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 0.01
    assert np.isfinite(z).all() and np.abs(z).max() < 6.8  # (w + 0.5) * 2**-32 keeps |z| < sqrt(66 ln 2)


def test_import_does_not_load_torch() -> None:
    code = "import sys, dit_export.sampling.noise; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_philox_noise_source() -> None:
    shape = (4, 8, 8)
    src = make_noise("philox", 9, 3, shape, guided=True, first_image=5)
    assert isinstance(src, PhiloxNoise)
    assert np.array_equal(src.initial(), philox_normal(9, 0, [5, 6, 7], shape))
    assert np.array_equal(src.step(3), philox_normal(9, 4, [5, 6, 7], shape))
    assert np.array_equal(src.step(0), philox_normal(9, 1, [5, 6, 7], shape))  # counter-based: any order
    whole = make_noise("philox", 9, 8, shape, guided=False)
    assert np.array_equal(whole.step(3)[5:], src.step(3))


def test_user_errors() -> None:
    assert NOISE_KINDS == ("philox", "torch")
    with pytest.raises(UserError, match="unknown noise kind"):
        make_noise("gaussian", 0, 1, (4, 8, 8), guided=True)
    with pytest.raises(UserError, match="seed"):
        make_noise("philox", 2**64, 1, (4, 8, 8), guided=True)
    with pytest.raises(UserError, match="seed"):
        make_noise("torch", -1, 1, (4, 8, 8), guided=True)
    with pytest.raises(UserError, match="image"):
        philox_normal(0, 0, [-1], (4, 8, 8))
    with pytest.raises(UserError, match="image"):
        make_noise("philox", 0, 2, (4, 8, 8), guided=True, first_image=2**32 - 1)
    with pytest.raises(UserError, match="draw"):
        philox_normal(0, 2**32, [0], (4, 8, 8))
    with pytest.raises(UserError, match="one official batch"):
        make_noise("torch", 0, 2, (4, 8, 8), guided=True, first_image=2)


@pytest.mark.parametrize("guided", [True, False])
def test_torch_noise_matches_global_generator(guided: bool) -> None:
    torch = pytest.importorskip("torch")
    n, shape, seed, steps = 3, (4, 8, 8), 11, 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        want = [torch.randn(n, *shape)]
        want += [torch.randn(2 * n if guided else n, *shape)[:n] for _ in range(steps)]
        torch.manual_seed(0)
        state = torch.get_rng_state()
        src = make_noise("torch", seed, n, shape, guided=guided)
        got = [src.initial()] + [src.step(k) for k in range(steps)]
        assert torch.equal(torch.get_rng_state(), state), "TorchNoise must not touch the global generator"
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == (n, *shape)
        assert np.array_equal(g, w.numpy())


@pytest.mark.gpu
def test_torch_noise_cuda_matches_global_generator() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: the official script on a GPU draws from the CUDA generator")
    n, shape, seed = 2, (4, 8, 8), 5
    with torch.random.fork_rng(devices=[0]):
        torch.manual_seed(seed)
        want = [torch.randn(n, *shape, device="cuda"), torch.randn(2 * n, *shape, device="cuda")[:n]]
    src = make_noise("torch", seed, n, shape, guided=True, torch_device="cuda")
    assert np.array_equal(src.initial(), want[0].cpu().numpy())
    assert np.array_equal(src.step(0), want[1].cpu().numpy())
    assert not np.array_equal(want[0].cpu().numpy(), TorchNoise(seed, n, shape, guided=True).initial())


def test_torch_noise_order_enforced() -> None:
    pytest.importorskip("torch")
    src = TorchNoise(0, 2, (4, 8, 8), guided=True)
    with pytest.raises(RuntimeError, match="initial"):
        src.step(0)
    src.initial()
    with pytest.raises(RuntimeError, match="initial"):
        src.initial()
    src.step(0)
    with pytest.raises(RuntimeError, match="step\\(1\\)"):
        src.step(2)


if __name__ == "__main__":
    write_json(VECTORS, make_vectors())
    print(f"wrote {VECTORS}")
