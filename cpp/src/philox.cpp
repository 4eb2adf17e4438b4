#include "philox.hpp"

#include <cmath>
#include <stdexcept>

namespace dit {

Philox4x32Counter philox4x32(Philox4x32Counter c, Philox4x32Key k, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    if (r) {
      k[0] += kPhiloxW0;
      k[1] += kPhiloxW1;
    }
    const uint64_t p0 = uint64_t(kPhiloxM0) * c[0];
    const uint64_t p1 = uint64_t(kPhiloxM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1], uint32_t(p0)};
  }
  return c;
}

void philox_normal(uint64_t seed, uint32_t draw, uint32_t image, float* out, size_t numel) {
  const uint64_t blocks = (uint64_t(numel) + 3) / 4;
  if (blocks > (uint64_t(1) << 32)) throw std::invalid_argument("noise tensor too large (more than 2^32 blocks)");
  const Philox4x32Key key = {uint32_t(seed), uint32_t(seed >> 32)};
  // 2*pi as the double 2 * M_PI, multiplied by u in double (docs/noise.md).
  const double two_pi = 2.0 * 3.14159265358979323846;
  const double scale = 1.0 / 4294967296.0;  // 2^-32, exact
  for (uint64_t b = 0; b < blocks; ++b) {
    const Philox4x32Counter w = philox4x32({uint32_t(b), draw, image, kNoiseTag}, key);
    double z[4];
    for (int pair = 0; pair < 2; ++pair) {
      const double u0 = (double(w[2 * pair]) + 0.5) * scale;
      const double u1 = (double(w[2 * pair + 1]) + 0.5) * scale;
      const double r = std::sqrt(-2.0 * std::log(u0));
      const double theta = two_pi * u1;
      z[2 * pair] = r * std::cos(theta);
      z[2 * pair + 1] = r * std::sin(theta);
    }
    const size_t base = size_t(b) * 4;
    for (size_t lane = 0; lane < 4 && base + lane < numel; ++lane) out[base + lane] = float(z[lane]);
  }
}

}  // namespace dit
