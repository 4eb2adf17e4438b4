// Files the example writes, matching `python -m dit_export sample`: the PNG grid of
// torchvision's save_image (dit_export.images.to_uint8_grid), .npy latents, .npz uint8 images.
// PNG by stb_image_write, zip CRCs by zlib; every file is written beside the target and renamed
// into place (never half-written).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dit_io {

// (N,3,H,W) float in about [-1,1] -> one (gh, gw, 3) uint8 grid as to_uint8_grid (nrow 4, padding 2):
// clamp to [-1,1], (x + 1) / 2, tiles, * 255, + 0.5, clamp [0,255], truncate; float32 math.
std::vector<uint8_t> to_uint8_grid(const float* nchw, size_t n, size_t h, size_t w, size_t* grid_h,
                                   size_t* grid_w, size_t nrow = 4, size_t padding = 2);

// RGB 8-bit PNG (stb_image_write); throws std::runtime_error on I/O errors.
void write_png(const std::string& path, const uint8_t* rgb, size_t width, size_t height);
std::vector<uint8_t> encode_png(const uint8_t* rgb, size_t width, size_t height);

// NumPy .npy (format 1.0, little endian, C order) of float32 or uint8 data.
std::vector<uint8_t> npy_bytes(const void* data, const char* descr, size_t itemsize, const std::vector<size_t>& shape);
void write_npy(const std::string& path, const float* data, const std::vector<size_t>& shape);
// NumPy .npz with one stored (uncompressed) array `arr_0`: the layout the ADM FID evaluator reads.
void write_npz_uint8(const std::string& path, const uint8_t* data, const std::vector<size_t>& shape);

void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace dit_io
