// The sampling loop, once for every backend: cut the request into chunks of the engine batch,
// bind the schedule rows, the step's noise and the two latent buffers (ping-pong) to the fused
// step graph, then decode. No diffusion arithmetic happens here: it is all inside the graph.
// With the forecast cache (cache_interval > 1) each step runs dit_step_full or dit_step_forecast
// instead, as the host table of `cache_plan` says, and binds the cache buffers and one
// coefficient row besides (dit_export/sampling/cache.py, restated below).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "dit_runtime.h"
#include "manifest.hpp"

namespace dit {

// ---- the forecast step cache's schedule: dit_export/sampling/cache.py, restated (checked against
// it by the shared vectors of tests/data/cache_plans.json, cpp/tests/test_cache_plan.cpp).
constexpr int64_t kCacheMaxOrder = 3;   // MAX_ORDER: the largest Taylor order a request may ask
constexpr int64_t kCacheFirstFull = 2;  // FIRST_FULL: TaylorSeer-DiT's first full steps
// (FULL_GRAPH, FORECAST_GRAPH: kFullGraph, kForecastGraph in manifest.hpp.)

// One-line argument errors for a bad (interval, order), in check_cache's words; `max_order` < 0:
// not checked against an export (otherwise: the order its forecast graphs hold).
void check_cache(int64_t interval, int64_t order, int64_t max_order = -1);

struct CachePlan {
  int64_t steps = 0, interval = 1, order = 0, slots = 0;
  std::vector<uint8_t> full;  // (steps,): 1 = run dit_step_full, 0 = dit_step_forecast
  std::vector<float> coefs;   // (steps, slots) row-major: row k is step k's cache_coef input
  int64_t num_full() const;
};

// full_steps + cache_plan: loop indices 0, 1, then 1 + N, 1 + 2N, ... run in full (every step when
// interval is 1); Newton divided-difference coefficients over the step index, computed in double
// and rounded to float once, as numpy's float64 -> float32.
std::vector<uint8_t> cache_full_steps(int64_t steps, int64_t interval);
CachePlan cache_plan(int64_t steps, int64_t interval, int64_t order, int64_t slots);

class Runtime {
 public:
  static std::unique_ptr<Runtime> open(const std::string& folder, const dit_open_options& options);

  const Manifest& manifest() const { return m_; }
  Backend& backend() { return *backend_; }
  void info(dit_info* out) const;
  const std::string& description() const { return description_; }

  // Final latents (M,C,L,L) and/or images (M,3,H,W) float32; either pointer may be null.
  void generate(const dit_sample_params& p, float* latents_out, float* images_out);
  // uint8 (M,H,W,3) as dit_export.images.to_uint8.
  void sample(const dit_sample_params& p, uint8_t* images_out);
  // One graph call on host buffers named by the manifest's I/O (copied in and out).
  void run_graph_host(const std::string& graph, const std::vector<std::pair<std::string, void*>>& host);

 private:
  Runtime(Manifest m, std::unique_ptr<Backend> backend);
  void* buffer(const std::string& key, size_t bytes);  // allocated once, grown when needed
  void check_request(const dit_sample_params& p, bool decode) const;
  // The `cache` input of dit_step_full (shape, dtype; slots = shape[2]) for a cached request; throws
  // one line when the export has no cached graphs, their order is too small or they are not loaded.
  const TensorSpec& cache_spec(const dit_sample_params& p) const;

  Manifest m_;
  std::unique_ptr<Backend> backend_;
  std::string description_;
  struct Buf {
    void* ptr;
    size_t bytes;
  };
  std::map<std::string, Buf> bufs_;
};

// (N,3,H,W) float -> (N,H,W,3) uint8: clamp(127.5 x + 128, 0, 255) truncated, in float32 with the
// multiply and the add rounded separately (the official sample_ddp.py conversion).
void to_uint8(const float* nchw, size_t n, size_t h, size_t w, uint8_t* nhwc);

}  // namespace dit
