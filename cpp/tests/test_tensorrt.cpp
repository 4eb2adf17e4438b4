// The TensorRT backend end to end, over what the folders hold: DIT_TEST_TRT_ENGINES names one or
// more exported folders (':'-separated) with plans built for this GPU (scripts/test.sh makes them
// on a GPU + TensorRT machine: one S/8 folder per precision, scripts/trt_test_engines.py). For
// each folder, every sampler it records (dit_describe_samplers: the manifest's sampler record and
// the stored tables) samples at its shortest stored step count, twice (CUDA-graph replays are
// deterministic), and is compared with the Python TensorRT runtime's images for the same request
// in <folder>.trt_reference.json when that file exists (it must then hold every sampler); with the
// forecast cache's graphs, one cached request too (check_cache). Skipped
// (exit 77) with the reason where TensorRT, a GPU or the folders are missing.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dit_runtime.h"
#include "npy.hpp"
#include "testutil.hpp"

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

// "<name>: <kind>..., stored steps 10,20,25" per line → {name: shortest stored step count (0: none)}.
std::map<std::string, int> recorded_samplers(const std::string& folder) {
  const char* text = dit_describe_samplers(folder.c_str());
  std::map<std::string, int> out;
  CHECK_MSG(text != nullptr, dit_last_error());
  if (!text) return out;
  for (const auto& line : split(text, '\n')) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    int shortest = 0;
    const auto at = line.find("stored steps ");
    if (at != std::string::npos)
      for (const auto& n : split(line.substr(at + 13), ','))
        if (const int v = std::atoi(n.c_str()); v > 0) shortest = shortest ? std::min(shortest, v) : v;
    out[line.substr(0, colon)] = shortest;
  }
  return out;
}

int max_delta(const std::vector<uint8_t>& a, const uint8_t* b) {
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  return worst;
}

// The request every check samples: the 3 labels, seed 3, sampler `name` (kept alive by the caller) at
// `steps`, uncached.
dit_sample_params request(const int64_t* labels, const std::string& name, int steps) {
  dit_sample_params p;
  dit_sample_params_init(&p);
  p.labels = labels;
  p.num_images = 3;
  p.seed = 3;
  p.steps = steps;
  p.sampler = name.c_str();
  return p;
}

// The forecast cache (issue 21), where the folder has its graphs: a cached request (N = 3, the
// export's order up to 2) runs the plans of dit_step_full and dit_step_forecast as CUDA graphs, gives
// the same images twice and not the uncached ones, and equals the Python TensorRT runtime's cached
// images when the reference holds that request (a "cache_interval" field).
void check_cache(dit_runtime* rt, const std::string& engines, const nlohmann::json& ref, const std::string& base,
                 const std::map<std::string, int>& samplers, const int64_t* labels, size_t hw) {
  std::ifstream mf(engines + "/manifest.json");
  const nlohmann::json manifest = nlohmann::json::parse(mf);
  if (!manifest.contains("cache") || samplers.empty()) {
    std::printf("  no forecast cache graphs in %s: cached sampling not checked\n", engines.c_str());
    return;
  }
  const auto& [name, stored] = *samplers.begin();
  dit_sample_params p = request(labels, name, stored);
  const size_t lat = manifest["latent_channels"].get<size_t>() * manifest["latent_size"].get<size_t>() *
                     manifest["latent_size"].get<size_t>();
  std::vector<float> plain(3 * lat), cached(3 * lat);
  CHECK_MSG(dit_generate(rt, &p, plain.data(), nullptr) == DIT_OK, dit_last_error());
  p.cache_interval = 3;
  p.cache_order = std::min(2, manifest["cache"]["max_order"].get<int>());
  CHECK_MSG(dit_generate(rt, &p, cached.data(), nullptr) == DIT_OK, name + " cached: " + dit_last_error());
  CHECK_MSG(cached != plain, name + " cached: the latents of the uncached request");
  std::vector<uint8_t> a(3 * hw * hw * 3), b(a.size());
  CHECK_MSG(dit_sample(rt, &p, a.data()) == DIT_OK, name + " cached: " + dit_last_error());
  CHECK_MSG(dit_sample(rt, &p, b.data()) == DIT_OK, name + " cached: " + dit_last_error());
  CHECK_MSG(a == b, name + " cached: two runs of one request differ");
  if (ref.is_null()) return;
  for (const auto& r : ref["requests"]) {
    if (r["sampler"].get<std::string>() != name || r.value("cache_interval", 1) != p.cache_interval ||
        r.value("cache_order", 2) != p.cache_order || r["steps"].get<int>() != stored)
      continue;
    const Npy want = read_npy(base + r["images"].get<std::string>());
    CHECK(want.numel() == a.size());
    if (want.numel() != a.size()) return;
    const int worst = max_delta(a, want.as<uint8_t>());
    std::printf("  %s, %d steps, cache interval %d order %d: C++ vs Python TensorRT runtime, max uint8 |delta| %d\n",
                name.c_str(), stored, p.cache_interval, p.cache_order, worst);
    CHECK_MSG(worst <= 8, name + " cached");
  }
}

void check_folder(const std::string& engines) {
  dit_open_options o;
  dit_open_options_init(&o);
  o.backend = DIT_BACKEND_TENSORRT;
  dit_runtime* rt = dit_open(engines.c_str(), &o);
  if (!rt) {
    const std::string err = dit_last_error();
    if (err.find("no CUDA GPU") != std::string::npos) t::skip(err);
    CHECK_MSG(false, "dit_open " + engines + ": " + err);
    return;
  }
  dit_info info;
  CHECK(dit_get_info(rt, &info) == DIT_OK);
  std::printf("%s: %s\n", engines.c_str(), info.description);
  CHECK(info.backend == DIT_BACKEND_TENSORRT);
  const auto samplers = recorded_samplers(engines);
  CHECK_MSG(!samplers.empty(), "no sampler recorded in " + engines);

  nlohmann::json ref;  // the Python TensorRT runtime's images, one request per sampler
  std::ifstream f(engines + ".trt_reference.json");
  if (f) ref = nlohmann::json::parse(f);
  const std::string base = engines.substr(0, engines.rfind('/') + 1);

  const int64_t labels[3] = {207, 360, 387};  // 3 images on the test folders' batch 2: two chunks
  const size_t hw = size_t(info.image_size);
  for (const auto& [name, stored] : samplers) {
    CHECK_MSG(stored > 0, name + " has no stored step count in " + engines);
    if (stored <= 0) continue;
    const dit_sample_params p = request(labels, name, stored);
    std::vector<uint8_t> a(3 * hw * hw * 3), b(a.size());
    CHECK_MSG(dit_sample(rt, &p, a.data()) == DIT_OK, name + ": " + dit_last_error());
    CHECK_MSG(dit_sample(rt, &p, b.data()) == DIT_OK, name + ": " + dit_last_error());
    CHECK_MSG(a == b, name + ": two runs of one request differ");
    if (ref.is_null()) continue;
    const auto it = std::find_if(ref["requests"].begin(), ref["requests"].end(), [&](const nlohmann::json& r) {
      return r["sampler"].get<std::string>() == name && r.value("cache_interval", 1) == 1;
    });
    CHECK_MSG(it != ref["requests"].end(), name + " has no request in " + engines + ".trt_reference.json");
    if (it == ref["requests"].end()) continue;
    const auto& r = *it;
    CHECK(r["steps"].get<int>() == stored && r["seed"].get<uint64_t>() == p.seed);
    CHECK(r["labels"].get<std::vector<int64_t>>() == std::vector<int64_t>(labels, labels + 3));
    const Npy want = read_npy(base + r["images"].get<std::string>());
    CHECK(want.numel() == a.size());
    if (want.numel() != a.size()) continue;
    const int worst = max_delta(a, want.as<uint8_t>());
    std::printf("  %s, %d steps: C++ vs Python TensorRT runtime, max uint8 |delta| %d\n", name.c_str(), stored,
                worst);
    CHECK_MSG(worst <= 8, name);  // the same plans; fp16 kernels may pick other tactics per process
  }
  check_cache(rt, engines, ref, base, samplers, labels, hw);
  dit_close(rt);
}

}  // namespace

int main() {
#ifndef DIT_TEST_HAVE_TENSORRT
  t::skip("dit_runtime was built without TensorRT (CMake found no TensorRT + CUDA); configure with "
          "-DDIT_WITH_TENSORRT=ON -DTENSORRT_ROOT=... on a machine with both");
#endif
  const std::string engines = t::env("DIT_TEST_TRT_ENGINES");
  if (engines.empty())
    t::skip("DIT_TEST_TRT_ENGINES is not set (scripts/test.sh sets it on a GPU + TensorRT machine: exported "
            "folders with TensorRT plans for this GPU, ':'-separated)");
  for (const auto& folder : split(engines, ':')) check_folder(folder);
  return t::finish("test_tensorrt");
}
