#include "image_io.hpp"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

// PNG encoding: stb_image_write (Debian/Ubuntu: libstb-dev), compiled into this file only.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace dit_io {
namespace {

void put16le(std::vector<uint8_t>& v, uint32_t x) {
  v.push_back(uint8_t(x));
  v.push_back(uint8_t(x >> 8));
}
void put32le(std::vector<uint8_t>& v, uint32_t x) {
  put16le(v, x & 0xFFFF);
  put16le(v, x >> 16);
}

// stb_image_write's sink: append the encoded bytes to a std::vector.
void append(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(context);
  const auto* p = static_cast<const uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

}  // namespace

std::vector<uint8_t> to_uint8_grid(const float* x, size_t n, size_t h, size_t w, size_t* grid_h, size_t* grid_w,
                                   size_t nrow, size_t padding) {
  // torchvision make_grid: a single image is returned as is, without padding.
  const size_t pad = n == 1 ? 0 : padding;
  const size_t cols = n == 1 ? 1 : std::min(nrow, n), rows = (n + cols - 1) / cols;
  const size_t gh = (h + pad) * rows + pad, gw = (w + pad) * cols + pad;
  std::vector<float> grid(3 * gh * gw, 0.0f);  // pad value 0 (after normalising)
  for (size_t k = 0; k < n; ++k) {
    const size_t top = (k / cols) * (h + pad) + pad, left = (k % cols) * (w + pad) + pad;
    for (size_t c = 0; c < 3; ++c)
      for (size_t i = 0; i < h; ++i)
        for (size_t j = 0; j < w; ++j) {
          float t = x[((k * 3 + c) * h + i) * w + j];
          t = std::min(std::max(t, -1.0f), 1.0f);
          t = t - (-1.0f);  // normalize: (x - low) / (high - low), low = -1, high = 1
          t = t / 2.0f;
          grid[(c * gh + top + i) * gw + left + j] = t;
        }
  }
  std::vector<uint8_t> out(gh * gw * 3);
  for (size_t c = 0; c < 3; ++c)
    for (size_t p = 0; p < gh * gw; ++p) {
      float g = grid[c * gh * gw + p] * 255.0f;
      g = g + 0.5f;
      g = std::min(std::max(g, 0.0f), 255.0f);
      out[p * 3 + c] = uint8_t(g);
    }
  *grid_h = gh;
  *grid_w = gw;
  return out;
}

std::vector<uint8_t> encode_png(const uint8_t* rgb, size_t width, size_t height) {
  if (width == 0 || height == 0 || width > 0x7FFFFFFF / 3 || height > 0x7FFFFFFF)
    throw std::runtime_error("PNG: bad image size");
  std::vector<uint8_t> out;
  if (!stbi_write_png_to_func(append, &out, int(width), int(height), 3, rgb, int(width * 3)))
    throw std::runtime_error("PNG: stb_image_write failed (out of memory?)");
  return out;
}

void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  }
}

void write_png(const std::string& path, const uint8_t* rgb, size_t width, size_t height) {
  write_file_atomic(path, encode_png(rgb, width, height));
}

std::vector<uint8_t> npy_bytes(const void* data, const char* descr, size_t itemsize, const std::vector<size_t>& shape) {
  std::string dims;
  size_t numel = 1;
  for (size_t d : shape) {
    dims += std::to_string(d) + ", ";
    numel *= d;
  }
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // "(2, 4)"; a 1-d shape keeps "(2,)"
  else if (shape.size() == 1) dims.erase(dims.size() - 1);
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  put16le(out, uint32_t(header.size()));
  out.insert(out.end(), header.begin(), header.end());
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + numel * itemsize);
  return out;
}

void write_npy(const std::string& path, const float* data, const std::vector<size_t>& shape) {
  write_file_atomic(path, npy_bytes(data, "<f4", 4, shape));
}

void write_npz_uint8(const std::string& path, const uint8_t* data, const std::vector<size_t>& shape) {
  const std::vector<uint8_t> npy = npy_bytes(data, "|u1", 1, shape);
  if (npy.size() >= 0xFFFFFFFFu) throw std::runtime_error("npz: more than 4 GiB of images (no zip64 support)");
  const std::string name = "arr_0.npy";
  const uint32_t crc = uint32_t(crc32(0L, npy.data(), uInt(npy.size())));
  std::vector<uint8_t> out;
  auto header = [&](bool central) {
    put32le(out, central ? 0x02014b50 : 0x04034b50);
    if (central) put16le(out, 20);  // version made by
    put16le(out, 20);               // version needed
    put16le(out, 0);                // flags
    put16le(out, 0);                // method: stored
    put16le(out, 0);                // time
    put16le(out, 0x21);             // date: 1980-01-01
    put32le(out, crc);
    put32le(out, uint32_t(npy.size()));
    put32le(out, uint32_t(npy.size()));
    put16le(out, uint32_t(name.size()));
    put16le(out, 0);  // extra
    if (central) {
      put16le(out, 0);  // comment
      put16le(out, 0);  // disk
      put16le(out, 0);  // internal attributes
      put32le(out, 0);  // external attributes
      put32le(out, 0);  // offset of the local header
    }
    out.insert(out.end(), name.begin(), name.end());
  };
  header(false);
  out.insert(out.end(), npy.begin(), npy.end());
  const size_t cd_offset = out.size();
  header(true);
  const size_t cd_size = out.size() - cd_offset;
  put32le(out, 0x06054b50);
  put16le(out, 0);
  put16le(out, 0);
  put16le(out, 1);
  put16le(out, 1);
  put32le(out, uint32_t(cd_size));
  put32le(out, uint32_t(cd_offset));
  put16le(out, 0);
  write_file_atomic(path, out);
}

}  // namespace dit_io
