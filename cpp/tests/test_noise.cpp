// The C++ Philox noise against the shared vectors of tests/data/noise_vectors.json (docs/noise.md):
// Random123 known answers (10 and 7 rounds) and philox_normal float32 bit patterns, exactly.
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dit_runtime.h"
#include "philox.hpp"
#include "testutil.hpp"

using json = nlohmann::json;

static uint32_t hex32(const json& v) { return uint32_t(std::stoul(v.get<std::string>(), nullptr, 16)); }

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : DIT_NOISE_VECTORS;
  std::ifstream f(path);
  if (!f) t::skip("noise vectors not found at " + path);
  json j = json::parse(f);
  CHECK(hex32(j["noise_tag"]) == dit::kNoiseTag);

  int kat = 0;
  for (const json& c : j["philox4x32_kat"]) {
    dit::Philox4x32Counter ctr;
    for (int i = 0; i < 4; ++i) ctr[i] = hex32(c["counter"][i]);
    const dit::Philox4x32Key key = {hex32(c["key"][0]), hex32(c["key"][1])};
    const auto out = dit::philox4x32(ctr, key, c["rounds"].get<int>());
    for (int i = 0; i < 4; ++i) CHECK_MSG(out[i] == hex32(c["output"][i]), "kat case " + std::to_string(kat));
    ++kat;
  }
  CHECK(kat >= 3);

  int cases = 0;
  size_t values = 0;
  for (const json& c : j["philox_normal"]) {
    const uint64_t seed = std::stoull(c["seed_hex"].get<std::string>(), nullptr, 16);
    CHECK(seed == c["seed"].get<uint64_t>());
    const uint32_t draw = c["draw"].get<uint32_t>(), image = c["image"].get<uint32_t>();
    size_t numel = 1;
    for (const json& d : c["shape"]) numel *= d.get<size_t>();
    const size_t start = c["start"].get<size_t>();
    std::vector<float> z(numel);
    dit::philox_normal(seed, draw, image, z.data(), numel);
    const auto words = dit::philox4x32({uint32_t(start / 4), draw, image, dit::kNoiseTag},
                                       {uint32_t(seed), uint32_t(seed >> 32)});
    for (int i = 0; i < 4; ++i) CHECK_MSG(words[i] == hex32(c["block_words"][i]), "block words, case " + std::to_string(cases));
    const json& bits = c["values_f32_bits"];
    for (size_t i = 0; i < bits.size(); ++i) {
      uint32_t got;
      std::memcpy(&got, &z[start + i], 4);
      CHECK_MSG(got == hex32(bits[i]), "case " + std::to_string(cases) + " element " + std::to_string(start + i));
      ++values;
    }
    // The C API gives the same numbers.
    std::vector<float> viac(numel);
    CHECK(dit_philox_normal(seed, draw, image, viac.data(), numel) == DIT_OK);
    CHECK(std::memcmp(viac.data(), z.data(), numel * sizeof(float)) == 0);
    ++cases;
  }
  CHECK(cases >= 5);
  std::printf("philox: %d known answers, %d normal cases, %zu float32 values bit-exact\n", kat, cases, values);
  return t::finish("test_noise");
}
