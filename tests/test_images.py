"""uint8 conversions against a plain torch restatement of the official scripts' ops (exact)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from dit_export import images

torch = pytest.importorskip("torch")


# ---- the reference: the official scripts' torch ops, restated (torchvision is not installable here)


def ref_uint8(x: np.ndarray) -> np.ndarray:
    """sample_ddp.py: clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to(uint8)."""
    t = torch.from_numpy(x)
    return torch.clamp(127.5 * t + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


def ref_grid(x: np.ndarray, nrow: int = 4, padding: int = 2) -> np.ndarray:
    """sample.py: torchvision save_image(x, nrow, normalize=True, value_range=(-1, 1)), step by step."""
    t = torch.from_numpy(x).clone()
    low, high = -1, 1
    t.clamp_(min=low, max=high)
    t.sub_(low).div_(max(high - low, 1e-5))
    if t.size(0) == 1:
        grid = t.squeeze(0)
    else:
        nmaps = t.size(0)
        xmaps = min(nrow, nmaps)
        ymaps = int(math.ceil(float(nmaps) / xmaps))
        height, width = t.size(2) + padding, t.size(3) + padding
        grid = t.new_full((t.size(1), height * ymaps + padding, width * xmaps + padding), 0)
        k = 0
        for y in range(ymaps):
            for xx in range(xmaps):
                if k >= nmaps:
                    break
                grid.narrow(1, y * height + padding, height - padding).narrow(
                    2, xx * width + padding, width - padding
                ).copy_(t[k])
                k += 1
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def hard_values() -> np.ndarray:
    """Values on and next to every rounding boundary of both conversions, and beyond [-1, 1]."""
    f = np.float32
    k = np.arange(-2, 258, dtype=np.float64)
    ddp_edges = (k - 128.0) / 127.5  # 127.5x + 128 == k
    grid_edges = (k - 0.5) / 255.0 * 2.0 - 1.0  # (x+1)/2 * 255 + 0.5 == k
    base = np.concatenate([ddp_edges, grid_edges]).astype(f)
    near = np.concatenate([base, np.nextafter(base, f(-np.inf)), np.nextafter(base, f(np.inf))])
    special = np.array([-1, 1, 0, -0.0, 1e-8, -1e-8, 1.5, -1.5, 3e4, -3e4, np.nextafter(f(1), f(0))], dtype=f)
    return np.concatenate([near, special]).astype(f)


def batch_of(values: np.ndarray, n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 3, h, w)) * 0.7).astype(np.float32)
    flat = x.reshape(-1)
    m = min(values.size, flat.size)
    flat[rng.permutation(flat.size)[:m]] = values[:m]
    return x


# ---- tests


def test_to_uint8_matches_sample_ddp_exactly():
    vals = hard_values()
    x = batch_of(vals, 4, 16, 24, seed=1)
    assert vals.size <= x.size  # room for every hard value
    out = images.to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (4, 16, 24, 3)
    np.testing.assert_array_equal(out, ref_uint8(x))
    every = np.concatenate([vals] * 3).reshape(1, 3, 1, -1)  # each value in each channel
    np.testing.assert_array_equal(images.to_uint8(every), ref_uint8(every))


def test_to_uint8_known_values():
    x = np.array([-1.0, 1.0, 0.0, -7.0, 7.0, 1 / 127.5], dtype=np.float32).reshape(1, 1, 1, 6)
    out = images.to_uint8(np.repeat(x, 3, axis=1))[0, 0, :, 0]
    # -1 → 0.5 → 0; 1 → 255.5 → 255; 0 → 128 (the +128 and truncation of the official script)
    assert out.tolist() == [0, 255, 128, 0, 255, 129]


def test_to_uint8_half_input_widens_exactly():
    x = batch_of(hard_values(), 2, 16, 16, seed=2)
    h = x.astype(np.float16)
    np.testing.assert_array_equal(images.to_uint8(h), ref_uint8(h.astype(np.float32)))


@pytest.mark.parametrize("n,nrow", [(8, 4), (3, 4), (5, 4), (1, 4), (6, 2), (4, 8)])
def test_grid_matches_save_image_exactly(n, nrow):
    x = batch_of(hard_values(), n, 6, 7, seed=n)
    out = images.to_uint8_grid(x, nrow=nrow)
    np.testing.assert_array_equal(out, ref_grid(x, nrow=nrow))


def test_grid_rounding_on_boundaries():
    vals = hard_values()
    x = np.repeat(vals.reshape(1, 1, 1, -1), 3, axis=1)
    np.testing.assert_array_equal(images.to_uint8_grid(x), ref_grid(x))
    y = np.stack([x[0], -x[0]])  # two images: through the padded grid path too
    np.testing.assert_array_equal(images.to_uint8_grid(y, padding=3), ref_grid(y, padding=3))


def test_grid_layout_n8_nrow4():
    h, w, pad = 5, 6, 2
    x = np.empty((8, 3, h, w), dtype=np.float32)
    for k in range(8):  # tile k is a constant colour of its own
        x[k] = np.array([0.1, 0.5, -0.5], dtype=np.float32)[:, None, None] * (k + 1) / 8
    g = images.to_uint8_grid(x, nrow=4, padding=pad)
    assert g.shape == (2 * (h + pad) + pad, 4 * (w + pad) + pad, 3)
    mask = np.zeros(g.shape[:2], dtype=bool)
    colours = set()
    for k in range(8):
        r, c = divmod(k, 4)
        top, left = r * (h + pad) + pad, c * (w + pad) + pad
        tile = g[top : top + h, left : left + w]
        np.testing.assert_array_equal(tile, images.to_uint8_grid(x[k : k + 1]))  # N=1: no padding
        assert (tile == tile[0, 0]).all()
        colours.add(tuple(tile[0, 0]))
        mask[top : top + h, left : left + w] = True
    assert len(colours) == 8  # every tile in its own place
    assert (g[~mask] == 0).all()  # padding is black (pad value 0 after normalisation)


def test_grid_layout_n3_single_row_and_n1_unpadded():
    x = np.zeros((3, 3, 4, 4), dtype=np.float32)
    g = images.to_uint8_grid(x, nrow=4, padding=2)
    assert g.shape == (4 + 4, 3 * 6 + 2, 3)  # xmaps = min(4, 3) = 3, one row
    assert (g[2:6, 2:6] == 128).all() and (g[0:2] == 0).all() and (g[:, 6:8] == 0).all()
    one = images.to_uint8_grid(x[:1])
    assert one.shape == (4, 4, 3) and (one == 128).all()


def test_grid_incomplete_last_row_stays_black():
    x = np.ones((5, 3, 4, 4), dtype=np.float32)
    g = images.to_uint8_grid(x, nrow=4)
    assert g.shape == (2 * 6 + 2, 4 * 6 + 2, 3)
    assert (g[8:12, 2:6] == 255).all()  # tile 4 = row 1, col 0
    assert (g[8:12, 8:] == 0).all()  # no tiles 5..7


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        images.to_uint8(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError):
        images.to_uint8(np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError):
        images.to_uint8_grid(np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        images.save_png("unused.png", np.zeros((4, 4, 3), np.float32))


def test_png_round_trip(tmp_path):
    x = batch_of(hard_values(), 3, 9, 11, seed=5)
    u = images.to_uint8(x)
    p = images.save_png(tmp_path / "a.png", u[0])
    np.testing.assert_array_equal(images.load_png(p), u[0])
    paths = images.save_png_folder(tmp_path / "samples", u, start=7)
    assert [q.name for q in paths] == ["000007.png", "000008.png", "000009.png"]
    for q, img in zip(paths, u):
        np.testing.assert_array_equal(images.load_png(q), img)
    grid = images.to_uint8_grid(x)
    images.save_png(tmp_path / "grid.png", grid)
    np.testing.assert_array_equal(images.load_png(tmp_path / "grid.png"), grid)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.png", "grid.png", "samples"]  # no temp files


def test_npz_round_trip_arr_0(tmp_path):
    u = images.to_uint8(batch_of(hard_values(), 4, 8, 8, seed=6))
    p = images.save_npz(tmp_path / "samples.npz", u)
    with np.load(p) as f:
        assert list(f.keys()) == ["arr_0"]
        np.testing.assert_array_equal(f["arr_0"], u)
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (4, 8, 8, 3)
    images.save_npz(tmp_path / "plain", u)  # the name is kept as given (no added suffix)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["plain", "samples.npz"]
    with pytest.raises(ValueError):
        images.save_npz(tmp_path / "bad.npz", u[0])


def test_images_module_imports_without_torch():
    code = "import sys, dit_export.images; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_hard_values_discriminate_float64_arithmetic():
    """The boundary values catch an implementation that rounds differently (e.g. float64 math)."""
    v = hard_values()
    x = np.concatenate([v] * 3).reshape(1, 3, 1, -1)
    x64 = x.astype(np.float64)
    naive_ddp = np.clip(127.5 * x64 + 128.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    naive_grid = (
        np.clip((np.clip(x64, -1, 1) + 1) / 2 * 255 + 0.5, 0, 255).astype(np.uint8)[0].transpose(1, 2, 0)
    )
    assert (naive_ddp != ref_uint8(x)).any()
    assert (naive_grid != ref_grid(x)).any()


def test_labelled_pngs_one_file_per_image(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    paths = images.save_labelled_pngs(tmp_path / "out", imgs, [207, 5, 999], start=2)
    assert [p.name for p in paths] == ["002-class207.png", "003-class5.png", "004-class999.png"]
    for p, img in zip(paths, imgs):
        np.testing.assert_array_equal(images.load_png(p), img)
    with pytest.raises(ValueError, match="N labels"):
        images.save_labelled_pngs(tmp_path / "bad", imgs, [1, 2])
