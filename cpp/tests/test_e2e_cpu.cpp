// End to end on the CPU backend: sample a small exported model through the C API and compare
// with the Python runtime's images for the same requests (max uint8 |delta| <= 1).
//
// Needs DIT_TEST_REFERENCE: a JSON file written by tests/runtime/test_cpp.py, naming the exported folder
// (with AOTI packages) and, per request, the Python runtime's uint8 images and latents (.npy).
// Skipped (exit 77) with the reason when it is not set or the library has no CPU backend.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dit_runtime.h"
#include "dit_runtime.hpp"
#include "npy.hpp"
#include "testutil.hpp"

using json = nlohmann::json;

namespace {

struct Request {
  std::vector<int64_t> labels;
  dit::SampleOptions opts;  // seed, cfg_scale, steps, sampler, cache_interval, cache_order (optional)
  Npy images, latents;
};

dit_sample_params params(const Request& r) {
  dit_sample_params p;
  dit_sample_params_init(&p);
  p.labels = r.labels.data();
  p.num_images = r.labels.size();
  p.seed = r.opts.seed;
  p.cfg_scale = r.opts.cfg_scale;
  p.steps = r.opts.steps;
  p.sampler = r.opts.sampler.c_str();
  p.cache_interval = r.opts.cache_interval;
  p.cache_order = r.opts.cache_order;
  return p;
}

int philox_noise(void* user, uint32_t draw, uint32_t image, float* out, size_t numel) {
  return dit_philox_normal(*static_cast<uint64_t*>(user), draw, image, out, numel);
}

int cancel_at_3(void*, int64_t done, int64_t) { return done >= 3; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
#ifndef DIT_TEST_HAVE_AOTI
  t::skip("dit_runtime was built without LibTorch: no CPU backend to run end to end");
#endif
  const std::string ref_path = t::env("DIT_TEST_REFERENCE");
  if (ref_path.empty())
    t::skip("DIT_TEST_REFERENCE is not set (tests/runtime/test_cpp.py exports a small model, compiles its AOTI packages, "
            "samples it with the Python runtime and runs ctest with it)");
  std::ifstream f(ref_path);
  if (!f) t::skip("cannot read DIT_TEST_REFERENCE " + ref_path);
  const json ref = json::parse(f);
  const std::string base = ref_path.substr(0, ref_path.rfind('/') + 1);
  const std::string engines = ref["engines"].get<std::string>();
  std::vector<Request> requests;
  for (const json& r : ref["requests"]) {
    Request q;
    q.labels = r["labels"].get<std::vector<int64_t>>();
    q.opts.seed = r["seed"].get<uint64_t>();
    q.opts.cfg_scale = r["cfg_scale"].get<float>();
    q.opts.steps = r["steps"].get<int>();
    q.opts.sampler = r["sampler"].get<std::string>();
    q.opts.cache_interval = r.value("cache_interval", 1);
    q.opts.cache_order = r.value("cache_order", 2);
    q.images = read_npy(base + r["images"].get<std::string>());
    q.latents = read_npy(base + r["latents"].get<std::string>());
    requests.push_back(std::move(q));
  }

  auto t0 = std::chrono::steady_clock::now();
  dit_open_options o;
  dit_open_options_init(&o);
  o.backend = DIT_BACKEND_CPU;
  // One thread by default: on a shared 2-core CI machine, OpenMP with 2 threads ran 4x slower.
  o.num_threads = t::env("DIT_TEST_THREADS").empty() ? 1 : std::atoi(t::env("DIT_TEST_THREADS").c_str());
  dit_runtime* rt = dit_open(engines.c_str(), &o);
  if (!rt) {
    std::fprintf(stderr, "dit_open: %s\n", dit_last_error());
    return 1;
  }
  std::printf("opened in %.2f s\n", seconds_since(t0));
  dit_info info;
  CHECK(dit_get_info(rt, &info) == DIT_OK);
  std::printf("%s\n", info.description);
  CHECK(info.backend == DIT_BACKEND_CPU);
  CHECK(info.has_vae == 1);
  const size_t hw = size_t(info.image_size), img = hw * hw * 3;
  const size_t lat = size_t(info.latent_channels) * info.latent_size * info.latent_size;

  int worst = 0;
  for (size_t qi = 0; qi < requests.size(); ++qi) {
    const Request& r = requests[qi];
    const size_t n = r.labels.size();
    CHECK(r.images.shape == (std::vector<size_t>{n, hw, hw, 3}));
    const dit_sample_params p = params(r);
    std::vector<uint8_t> u8(n * img);
    t0 = std::chrono::steady_clock::now();
    CHECK_MSG(dit_sample(rt, &p, u8.data()) == DIT_OK, dit_last_error());
    const double secs = seconds_since(t0);
    int max_diff = 0;
    size_t differing = 0;
    for (size_t i = 0; i < u8.size(); ++i) {
      const int d = std::abs(int(u8[i]) - int(r.images.as<uint8_t>()[i]));
      max_diff = std::max(max_diff, d);
      differing += d != 0;
    }
    std::vector<float> latents(n * lat), images(n * 3 * hw * hw);
    CHECK(dit_generate(rt, &p, latents.data(), images.data()) == DIT_OK);
    double max_abs = 0, num = 0, den = 0;
    for (size_t i = 0; i < latents.size(); ++i) {
      const double a = latents[i], b = r.latents.as<float>()[i];
      max_abs = std::max(max_abs, std::fabs(a - b));
      num += (a - b) * (a - b);
      den += b * b;
    }
    std::printf("request %zu: %zu images, %s %d steps, cfg %g, seed %llu, cache interval %d order %d: %.2f s; "
                "uint8 max |delta| %d (%zu of %zu values differ); latents max |delta| %.3g, rel-L2 %.3g\n",
                qi, n, r.opts.sampler.c_str(), r.opts.steps, double(r.opts.cfg_scale),
                static_cast<unsigned long long>(r.opts.seed), r.opts.cache_interval, r.opts.cache_order, secs,
                max_diff, differing, u8.size(), max_abs, std::sqrt(num / std::max(den, 1e-30)));
    CHECK_MSG(max_diff <= 1, "uint8 images differ from the Python runtime's by " + std::to_string(max_diff));
    worst = std::max(worst, max_diff);
    // dit_sample == to_uint8(dit_generate images): the same conversion.
    std::vector<uint8_t> again(n * img);
    CHECK(dit_images_to_uint8(images.data(), n, info.image_size, info.image_size, again.data()) == DIT_OK);
    CHECK(again == u8);
    // Caller-provided noise that is the Philox stream gives the very same images.
    dit_sample_params pc = p;
    uint64_t seed = r.opts.seed;
    pc.noise_fn = philox_noise;
    pc.noise_user = &seed;
    std::vector<uint8_t> viacb(n * img);
    CHECK(dit_sample(rt, &pc, viacb.data()) == DIT_OK);
    CHECK(viacb == u8);
    // Deterministic, and a chunk does not depend on the chunks after it.
    if (n > size_t(info.batch)) {
      Request head = r;
      head.labels.resize(size_t(info.batch));
      const dit_sample_params ph = params(head);
      std::vector<uint8_t> part(size_t(info.batch) * img);
      CHECK(dit_sample(rt, &ph, part.data()) == DIT_OK);
      CHECK(std::equal(part.begin(), part.end(), u8.begin()));
    }
  }

  // Request errors: one line, a status, nothing written.
  {
    Request r = requests[0];
    std::vector<uint8_t> out(r.labels.size() * img);
    dit_sample_params p = params(r);
    const int64_t bad[2] = {0, info.num_classes};
    p.labels = bad;
    p.num_images = 2;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    CHECK(std::string(dit_last_error()).find("class id " + std::to_string(info.num_classes) + " is out of range") !=
          std::string::npos);
    p = params(r);
    p.cfg_scale = 0.5f;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    CHECK(std::string(dit_last_error()).find("cfg scale must be >= 1") != std::string::npos);
    p = params(r);
    p.steps = 7;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    CHECK(std::string(dit_last_error()).find("no stored " + r.opts.sampler + " table for 7 steps") !=
          std::string::npos);
    p = params(r);
    p.sampler = "euler";
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    p = params(r);
    p.num_images = 0;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    p = params(r);  // the forecast cache's parameters, in check_cache's words
    p.cache_interval = 0;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    CHECK(std::string(dit_last_error()).find("cache interval 0: an integer") != std::string::npos);
    p = params(r);
    p.cache_interval = 3;
    p.cache_order = 4;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
    CHECK(std::string(dit_last_error()).find("cache order 4: an integer 0..3") != std::string::npos);
    p = params(r);
    p.progress_fn = cancel_at_3;
    CHECK(dit_sample(rt, &p, out.data()) == DIT_ERROR_CANCELLED);
    CHECK(dit_sample(rt, nullptr, out.data()) == DIT_ERROR_INVALID_ARGUMENT);
  }

  // The C++ wrapper over the same handle type.
  {
    dit::OpenOptions oo;
    oo.backend = DIT_BACKEND_CPU;
    oo.verify_hashes = false;
    oo.num_threads = o.num_threads;
    dit::Runtime w(engines, oo);
    const Request& r = requests.back();
    dit::SampleOptions so = r.opts;
    const std::vector<uint8_t> u8 = w.sample(r.labels, so);
    std::vector<uint8_t> direct(u8.size());
    const dit_sample_params p = params(r);
    CHECK(dit_sample(rt, &p, direct.data()) == DIT_OK);
    CHECK(u8 == direct);
    bool threw = false;
    try {
      so.steps = 7;
      w.sample(r.labels, so);
    } catch (const dit::RuntimeError& e) {
      threw = e.status() == DIT_ERROR_INVALID_ARGUMENT;
    }
    CHECK(threw);
  }
  dit_close(rt);
  std::printf("end to end: worst uint8 |delta| vs the Python runtime = %d over %zu requests\n", worst, requests.size());
  return t::finish("test_e2e_cpu");
}
