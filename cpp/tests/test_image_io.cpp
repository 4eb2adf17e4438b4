// The example's writers: the PNG (stb_image_write) decodes back (stb_image) to the pixels, .npy
// headers are valid, the grid layout is torchvision's make_grid (padding 2, at most 4 per row).
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>

#include "image_io.hpp"
#include "testutil.hpp"

int main() {
  for (const auto& [w, h] : std::vector<std::pair<size_t, size_t>>{{5, 3}, {1, 1}, {260, 130}}) {
    std::vector<uint8_t> rgb(w * h * 3);
    for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 37) ^ (i >> 7));
    const std::vector<uint8_t> png = dit_io::encode_png(rgb.data(), w, h);
    CHECK(png.size() > 8 && std::memcmp(png.data(), "\x89PNG\r\n\x1a\n", 8) == 0);
    int dw = 0, dh = 0, comp = 0;
    stbi_uc* back = stbi_load_from_memory(png.data(), int(png.size()), &dw, &dh, &comp, 0);
    CHECK_MSG(back != nullptr, stbi_failure_reason() ? stbi_failure_reason() : "?");
    if (back) {
      CHECK(size_t(dw) == w && size_t(dh) == h && comp == 3);  // 8-bit RGB, no alpha
      CHECK(std::memcmp(back, rgb.data(), rgb.size()) == 0);
      stbi_image_free(back);
    }
  }
  bool threw = false;
  try {
    dit_io::encode_png(nullptr, 0, 3);
  } catch (const std::runtime_error&) {
    threw = true;
  }
  CHECK(threw);
  // Grid of 6 images of 2x2: 4 columns, 2 rows, padding 2 -> (2*4+2) x (4*4+2) = 10 x 18.
  std::vector<float> x(6 * 3 * 2 * 2, 1.0f);
  size_t gh = 0, gw = 0;
  auto grid = dit_io::to_uint8_grid(x.data(), 6, 2, 2, &gh, &gw);
  CHECK(gh == 10 && gw == 18);
  CHECK(grid[0] == 0);                        // padding
  CHECK(grid[(2 * gw + 2) * 3] == 255);       // first pixel of image 0: (1+1)/2*255+0.5 -> 255
  CHECK(grid[(6 * gw + 2) * 3] == 255);       // image 4, second row
  CHECK(grid[(6 * gw + 6) * 3] == 255);       // image 5
  CHECK(grid[(6 * gw + 10) * 3] == 0);        // no image 6: padding value
  x.assign(3 * 2 * 2, -0.25f);                // one image: no padding; (0.75/2)*255+0.5 = 96.125 -> 96
  grid = dit_io::to_uint8_grid(x.data(), 1, 2, 2, &gh, &gw);
  CHECK(gh == 2 && gw == 2 && grid[0] == 96);
  // .npy header: 64-byte aligned, the shape as numpy writes it.
  const float v[6] = {1, 2, 3, 4, 5, 6};
  const auto npy = dit_io::npy_bytes(v, "<f4", 4, {2, 3});
  const size_t hl = npy[8] | (npy[9] << 8);
  CHECK((10 + hl) % 64 == 0);
  const std::string header(npy.begin() + 10, npy.begin() + 10 + long(hl));
  CHECK(header.find("'shape': (2, 3)") != std::string::npos);
  CHECK(npy.size() == 10 + hl + sizeof(v));
  const auto one = dit_io::npy_bytes(v, "<f4", 4, {6});
  CHECK(std::string(one.begin() + 10, one.end()).find("'shape': (6,)") != std::string::npos);
  return t::finish("test_image_io");
}
