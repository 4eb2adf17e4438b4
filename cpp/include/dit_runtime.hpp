// dit_runtime.hpp: a thin C++17 wrapper over the C API (dit_runtime.h), header-only.
//
//   dit::Runtime rt("engines/DiT-S-8");                       // throws dit::RuntimeError
//   dit::SampleOptions o; o.seed = 0; o.cfg_scale = 4.0f; o.steps = 250;
//   std::vector<uint8_t> rgb = rt.sample({207, 360}, o);     // (N, H, W, 3)
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dit_runtime.h"

namespace dit {

class RuntimeError : public std::runtime_error {
 public:
  RuntimeError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }  // a dit_status

 private:
  int status_;
};

inline void check(int status) {
  if (status != DIT_OK) throw RuntimeError(status, dit_last_error());
}

// The samplers a folder supports and their stored step counts, one per line (no graph is loaded).
inline std::string describe_samplers(const std::string& engines_dir) {
  const char* s = dit_describe_samplers(engines_dir.c_str());
  if (!s) throw RuntimeError(dit_last_status(), dit_last_error());
  return s;
}

// The C struct itself (fields and defaults stated once, in dit_runtime.h / dit_open_options_init):
// backend, verify_hashes, num_threads, device, cuda_graph, load_vae.
struct OpenOptions : dit_open_options {
  OpenOptions() : dit_open_options() { dit_open_options_init(this); }
};

struct SampleOptions {
  uint64_t seed = 0;
  float cfg_scale = 4.0f;
  int steps = 250;
  std::string sampler = "ddpm";
  std::vector<int64_t> timesteps;  // optional schedule of your own (with coefs), loop order
  std::vector<float> coefs;        // steps x coef_size
  dit_noise_fn noise_fn = nullptr;  // optional caller noise (see dit_runtime.h)
  void* noise_user = nullptr;
  dit_progress_fn progress_fn = nullptr;
  void* progress_user = nullptr;
  int cache_interval = 1;  // forecast step cache: 1 = off; N > 1 = a full step every N (see dit_runtime.h)
  int cache_order = 2;     // 0 = reuse (FORA), 1..3 = Taylor
};

class Runtime {
 public:
  explicit Runtime(const std::string& engines_dir, const OpenOptions& o = OpenOptions()) {
    handle_ = dit_open(engines_dir.c_str(), &o);
    if (!handle_) throw RuntimeError(dit_last_status(), dit_last_error());
    check(dit_get_info(handle_, &info_));
  }
  ~Runtime() { dit_close(handle_); }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  Runtime(Runtime&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)), info_(o.info_) {}
  Runtime& operator=(Runtime&& o) noexcept {
    if (this != &o) {
      dit_close(handle_);
      handle_ = std::exchange(o.handle_, nullptr);
      info_ = o.info_;
    }
    return *this;
  }

  const dit_info& info() const { return info_; }
  std::string describe() const { return info_.description; }
  size_t latent_numel() const { return size_t(info_.latent_channels) * info_.latent_size * info_.latent_size; }
  size_t image_numel() const { return size_t(3) * info_.image_size * info_.image_size; }

  // uint8 (N, H, W, 3).
  std::vector<uint8_t> sample(const std::vector<int64_t>& labels, const SampleOptions& o = SampleOptions()) {
    std::vector<uint8_t> out(labels.size() * image_numel());
    const dit_sample_params p = params(labels, o);
    check(dit_sample(handle_, &p, out.data()));
    return out;
  }

  // Final latents (N, C, L, L) and, when `decode`, float images (N, 3, H, W) in about [-1, 1].
  std::pair<std::vector<float>, std::vector<float>> generate(const std::vector<int64_t>& labels,
                                                             const SampleOptions& o = SampleOptions(),
                                                             bool decode = true) {
    std::vector<float> latents(labels.size() * latent_numel());
    std::vector<float> images(decode ? labels.size() * image_numel() : 0);
    const dit_sample_params p = params(labels, o);
    check(dit_generate(handle_, &p, latents.data(), decode ? images.data() : nullptr));
    return {std::move(latents), std::move(images)};
  }

  dit_runtime* handle() { return handle_; }

 private:
  dit_sample_params params(const std::vector<int64_t>& labels, const SampleOptions& o) const {
    dit_sample_params p;
    dit_sample_params_init(&p);
    p.labels = labels.data();
    p.num_images = labels.size();
    p.seed = o.seed;
    p.cfg_scale = o.cfg_scale;
    p.steps = o.steps;
    p.sampler = o.sampler.c_str();
    if (!o.timesteps.empty() || !o.coefs.empty()) {
      if (o.timesteps.size() != size_t(o.steps) || o.coefs.size() != size_t(o.steps) * size_t(info_.coef_size))
        throw RuntimeError(DIT_ERROR_INVALID_ARGUMENT, "schedule: need steps timesteps and steps x coef_size coefs");
      p.timesteps = o.timesteps.data();
      p.coefs = o.coefs.data();
    }
    p.noise_fn = o.noise_fn;
    p.noise_user = o.noise_user;
    p.progress_fn = o.progress_fn;
    p.progress_user = o.progress_user;
    p.cache_interval = o.cache_interval;
    p.cache_order = o.cache_order;
    return p;
  }

  dit_runtime* handle_ = nullptr;
  dit_info info_{};
};

// Philox noise of docs/noise.md for one image (numel values).
inline std::vector<float> philox_normal(uint64_t seed, uint32_t draw, uint32_t image, size_t numel) {
  std::vector<float> out(numel);
  check(dit_philox_normal(seed, draw, image, out.data(), numel));
  return out;
}

}  // namespace dit
