"""A request's noise served per engine batch (`sampling.batch_noise`): any chunking, any packing of
requests, draws exactly what each image draws alone; pad rows are zero."""

from __future__ import annotations

import numpy as np
import pytest

from dit_export.errors import UserError
from dit_export.sampling.batch_noise import ChunkNoise, RowsPhilox, pad_rows
from dit_export.sampling.noise import PhiloxNoise, make_noise

SHAPE = (4, 2, 2)


def test_pad_rows_zero_pads_the_first_axis():
    a = np.arange(6, dtype=np.int64).reshape(3, 2)
    out = pad_rows(a, 5)
    assert out.dtype == np.int64 and out.shape == (5, 2)
    np.testing.assert_array_equal(out[:3], a)
    assert not out[3:].any()


def test_chunks_of_a_request_draw_what_each_image_draws_alone():
    seed, first, m, n, steps = 5, 11, 7, 3, 4
    indices = first + np.arange(m, dtype=np.int64)
    src = ChunkNoise("philox", np.full(m, seed, np.uint64), indices, n, SHAPE, True, steps)
    alone = PhiloxNoise(seed, indices, SHAPE)
    want_init, want_steps = alone.initial(), np.stack([alone.step(k) for k in range(steps)])
    for c in range(3):
        lo, hi = c * n, min(m, (c + 1) * n)
        init = src.initial(c)
        assert init.shape == (n, *SHAPE) and init.dtype == np.float32
        np.testing.assert_array_equal(init[: hi - lo], want_init[lo:hi])
        assert not init[hi - lo :].any()  # the last chunk's pad rows
        block = src.steps(c, 1, 4)  # a block of steps 1..3
        assert block.shape == (3, n, *SHAPE)
        np.testing.assert_array_equal(block[:, : hi - lo], want_steps[1:4, lo:hi])
        assert not block[:, hi - lo :].any()


def test_packed_rows_of_several_requests_equal_each_request_alone():
    seeds = np.array([3, 9, 3, 9, 9], dtype=np.uint64)
    indices = np.array([0, 0, 1, 5, 6], dtype=np.int64)
    rows = RowsPhilox(seeds, indices, SHAPE)
    got_init, got_step = rows.initial(), rows.step(2)
    for i, (s, j) in enumerate(zip(seeds, indices)):
        one = PhiloxNoise(int(s), [int(j)], SHAPE)
        np.testing.assert_array_equal(got_init[i], one.initial()[0])
        np.testing.assert_array_equal(got_step[i], one.step(2)[0])


def test_torch_noise_is_the_official_stream_and_bounded():
    with pytest.raises(UserError, match="GiB up front") as e:  # refused before anything is drawn
        ChunkNoise("torch", np.zeros(10**6, np.uint64), np.arange(10**6), 2, (4, 32, 32), True, 250)
    assert "\n" not in str(e.value)
    pytest.importorskip("torch")
    m, n, steps = 3, 2, 2
    src = ChunkNoise("torch", np.full(m, 4, np.uint64), np.arange(m), n, SHAPE, True, steps)
    ref = make_noise("torch", 4, m, SHAPE, True)
    init, per_step = ref.initial(), [ref.step(k) for k in range(steps)]
    np.testing.assert_array_equal(src.initial(1)[:1], init[2:])
    assert not src.initial(1)[1:].any()
    np.testing.assert_array_equal(src.steps(0, 0, 2), np.stack(per_step)[:, :2])
