// The counter-based sampler noise of docs/noise.md, bit for bit as dit_export.sampling.noise.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace dit {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // Random123 multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // Weyl key bumps
constexpr uint32_t kNoiseTag = 0x44695400u;                            // counter word 3: "DiT\0"

using Philox4x32Counter = std::array<uint32_t, 4>;
using Philox4x32Key = std::array<uint32_t, 2>;

// Philox4x32-R (Random123): the key is bumped before rounds 1..R-1.
Philox4x32Counter philox4x32(Philox4x32Counter c, Philox4x32Key k, int rounds = 10);

// Standard normals for one image: element e (row-major, 0 <= e < numel) of draw `draw` of image
// index `image` under `seed`: lane e % 4 of block counter (e / 4, draw, image, kNoiseTag), key
// (seed low, seed high); uniforms (w + 0.5) * 2^-32, Box-Muller in double, rounded to float.
// Throws std::invalid_argument when numel needs more than 2^32 blocks.
void philox_normal(uint64_t seed, uint32_t draw, uint32_t image, float* out, size_t numel);

}  // namespace dit
