#include "runtime.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "philox.hpp"

namespace dit {
namespace {

// Largest noise table held per chunk (host and backend memory); longer runs upload it in blocks.
constexpr size_t kMaxNoiseTableBytes = size_t(256) << 20;

bool all_finite(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

}  // namespace

void check_cache(int64_t interval, int64_t order, int64_t max_order) {
  if (interval < 1)
    throw argument_error("cache interval " + std::to_string(interval) + ": an integer \u2265 1 (1 = every step full, no caching)");
  if (order < 0 || order > kCacheMaxOrder)
    throw argument_error("cache order " + std::to_string(order) + ": an integer 0.." + std::to_string(kCacheMaxOrder) +
                         " (0 = FORA reuse, 1\u20133 = Taylor)");
  if (interval > 1 && max_order >= 0 && order > max_order)
    throw argument_error("cache order " + std::to_string(order) + ": this export's forecast graphs hold order \u2264 " +
                         std::to_string(max_order) + " (re-export with --max-cache-order " + std::to_string(order) + ")");
}

int64_t CachePlan::num_full() const { return int64_t(std::count(full.begin(), full.end(), uint8_t(1))); }

std::vector<uint8_t> cache_full_steps(int64_t steps, int64_t interval) {
  std::vector<uint8_t> full(size_t(std::max<int64_t>(steps, 0)), 1);
  if (interval > 1)
    for (int64_t k = 0; k < steps; ++k)
      full[size_t(k)] = k < kCacheFirstFull || (k - (kCacheFirstFull - 1)) % interval == 0;
  return full;
}

CachePlan cache_plan(int64_t steps, int64_t interval, int64_t order, int64_t slots) {
  if (slots < 1) throw argument_error("cache slots " + std::to_string(slots) + ": at least 1");
  check_cache(interval, order, slots - 1);
  CachePlan p;
  p.steps = steps;
  p.interval = interval;
  p.order = order;
  p.slots = slots;
  p.full = cache_full_steps(steps, interval);
  p.coefs.assign(size_t(steps * slots), 0.0f);
  // Newton's form over the step index: a full step k refreshes D_i with a_i = 1 / (k - p_i) over the
  // earlier full steps p_1 > p_2 > ...; a forecast at s weighs D_i by b_i = prod_{j<i} (s - k_j).
  // Orders that lack points get 0. (An order above slots - 1 only passes check_cache at interval 1,
  // whose plan no loop reads: its rows stop at the last slot.)
  const int64_t top = std::min(order, slots - 1);
  std::vector<int64_t> nodes;  // full-step indices, latest first
  for (int64_t k = 0; k < steps; ++k) {
    float* row = p.coefs.data() + k * slots;
    row[0] = 1.0f;
    const int64_t have = int64_t(nodes.size());
    if (p.full[size_t(k)]) {
      for (int64_t i = 1; i <= std::min(top, have); ++i) row[i] = float(1.0 / double(k - nodes[size_t(i - 1)]));
      nodes.insert(nodes.begin(), k);
    } else {
      double w = 1.0;
      for (int64_t i = 1; i <= std::min(top, have - 1); ++i) {
        w *= double(k - nodes[size_t(i - 1)]);
        row[i] = float(w);
      }
    }
  }
  return p;
}

void to_uint8(const float* nchw, size_t n, size_t h, size_t w, uint8_t* nhwc) {
  const size_t plane = h * w;
  for (size_t i = 0; i < n; ++i)
    for (size_t c = 0; c < 3; ++c) {
      const float* src = nchw + (i * 3 + c) * plane;
      uint8_t* dst = nhwc + i * plane * 3 + c;
      for (size_t p = 0; p < plane; ++p) {
        float y = src[p] * 127.5f;  // two float32 operations, as torch/numpy do (no FMA: -ffp-contract=off)
        y = y + 128.0f;
        y = std::min(std::max(y, 0.0f), 255.0f);
        dst[p * 3] = static_cast<uint8_t>(y);  // truncation
      }
    }
}

Runtime::Runtime(Manifest m, std::unique_ptr<Backend> backend) : m_(std::move(m)), backend_(std::move(backend)) {
  description_ = m_.model_name + " " + std::to_string(m_.image_size) + "px " + m_.precision + " batch " +
                 std::to_string(m_.batch) + " on " + backend_->describe();
}

std::unique_ptr<Runtime> Runtime::open(const std::string& folder, const dit_open_options& o) {
  Manifest m = Manifest::load(folder);
  BackendOptions bo;
  bo.verify_hashes = o.verify_hashes != 0;
  bo.load_vae = o.load_vae != 0;
  bo.num_threads = o.num_threads;
  bo.device = o.device;
  bo.cuda_graph = o.cuda_graph != 0;
  std::unique_ptr<Backend> be;
  std::string why_trt, why_cpu;
  switch (o.backend) {
    case DIT_BACKEND_TENSORRT:
      be = make_tensorrt_backend(m, bo, &why_trt);
      if (!be) throw backend_error(why_trt);
      break;
    case DIT_BACKEND_CPU:
      be = make_aoti_backend(m, bo, &why_cpu);
      if (!be) throw backend_error(why_cpu);
      break;
    case DIT_BACKEND_AUTO:
      // The one `auto` rule (dit_export/runtime/folder.py states it): TensorRT when it works here
      // (built with it, a GPU visible) and the folder has a plan of every graph it runs for this
      // TensorRT and GPU (the forecast cache's step graphs too, when exported); a missing plan
      // falls back, a stale one throws (rebuild); else the CPU runtime, which in C++ is the
      // AOTInductor packages (Python's is ONNX Runtime).
      bo.require_cache_graphs = true;
      be = make_tensorrt_backend(m, bo, &why_trt);
      bo.require_cache_graphs = false;
      if (!be) be = make_aoti_backend(m, bo, &why_cpu);
      if (!be) throw backend_error("no usable backend for " + m.folder + ": tensorrt: " + why_trt + "; cpu: " + why_cpu);
      break;
    default:
      throw argument_error("unknown backend kind " + std::to_string(int(o.backend)));
  }
  return std::unique_ptr<Runtime>(new Runtime(std::move(m), std::move(be)));
}

void Runtime::info(dit_info* out) const {
  out->batch = int32_t(m_.batch);
  out->image_size = int32_t(m_.image_size);
  out->latent_channels = int32_t(m_.latent_channels);
  out->latent_size = int32_t(m_.latent_size);
  out->num_classes = int32_t(m_.num_classes);
  out->has_vae = backend_->has_graph("vae_decoder") ? 1 : 0;
  out->coef_size = int32_t(m_.coef_size());
  out->backend = backend_->kind();
  out->model_name = m_.model_name.c_str();
  out->precision = m_.precision.c_str();
  out->description = description_.c_str();
}

void* Runtime::buffer(const std::string& key, size_t bytes) {
  auto it = bufs_.find(key);
  if (it != bufs_.end() && it->second.bytes >= bytes) return it->second.ptr;
  // Backend memory lives until the backend is destroyed; a table only grows on a longer request.
  void* p = backend_->alloc(bytes);
  bufs_[key] = {p, bytes};
  return p;
}

void Runtime::check_request(const dit_sample_params& p, bool decode) const {
  if (!p.labels || p.num_images == 0) throw argument_error("no class labels given");
  if (p.num_images > (size_t(1) << 32)) throw argument_error("at most 2^32 images per request (noise image index)");
  for (size_t i = 0; i < p.num_images; ++i)
    if (p.labels[i] < 0 || p.labels[i] >= m_.num_classes)
      throw argument_error("class id " + std::to_string(p.labels[i]) + " is out of range: this model has classes 0.." +
                           std::to_string(m_.num_classes - 1));
  if (!(std::isfinite(p.cfg_scale) && p.cfg_scale >= 1.0f))
    throw argument_error("cfg scale must be >= 1 (1 = no guidance), got " + std::to_string(p.cfg_scale));
  if (p.steps < 1) throw argument_error("steps must be >= 1, got " + std::to_string(p.steps));
  // Every sampler fact comes from the folder's record (manifest.json's schedule.samplers plus the
  // schedules sidecar): this runtime names no sampler itself.
  const SamplerRecord& rec = m_.sampler(p.sampler ? p.sampler : "ddpm");  // throws naming the fix
  if (p.steps < rec.min_steps)
    throw argument_error("steps " + std::to_string(p.steps) + ": " + rec.name + " needs at least " +
                         std::to_string(rec.min_steps) + " steps");
  if ((p.timesteps == nullptr) != (p.coefs == nullptr))
    throw argument_error("give both timesteps and coefs for a schedule of your own, or neither");
  if (decode && !backend_->has_graph("vae_decoder"))
    throw argument_error(m_.has_vae ? "the VAE decoder was not loaded (load_vae = 0)"
                                    : "this export has no VAE decoder (exported with --vae none): ask for latents only");
  if (!p.timesteps) m_.schedule(rec.name, p.steps);  // throws, naming the stored tables and the fix
  check_cache(p.cache_interval, p.cache_order);
  if (p.cache_interval > 1) cache_spec(p);
}

const TensorSpec& Runtime::cache_spec(const dit_sample_params& p) const {
  if (!m_.has_cache())  // the words of Python's manifest.rules.no_cache_message
    throw argument_error(m_.folder + ": this export has no forecast graphs (" + kFullGraph + ", " + kForecastGraph +
                         "): re-export with --max-cache-order " + std::to_string(std::max<int64_t>(p.cache_order, 2)) +
                         " to sample with --cache-interval > 1");
  check_cache(p.cache_interval, p.cache_order, m_.cache->max_order);
  for (const char* g : {kFullGraph, kForecastGraph})
    if (!backend_->has_graph(g)) {
      const std::string why = backend_->not_loaded(g);
      throw argument_error(backend_->describe() + " has not loaded " + g + (why.empty() ? "" : ": " + why) +
                           ", so --cache-interval above 1 cannot run");
    }
  // The manifest checked the cached graphs' I/O against its cache record (shape, dtype, slots).
  return *m_.graph(kFullGraph).find("cache");
}

void Runtime::generate(const dit_sample_params& p, float* latents_out, float* images_out) {
  const bool decode = images_out != nullptr;
  check_request(p, decode);
  const SamplerRecord& rec = m_.sampler(p.sampler ? p.sampler : "ddpm");
  const std::string& sampler = rec.name;
  // Samplers that draw no per-step noise (the ODE ones) get one zero noise row, bound at every step.
  const bool step_noise = rec.draws_noise;
  const size_t steps = size_t(p.steps), k = m_.coef_size();
  std::vector<int64_t> timesteps;
  const float* coefs;
  if (p.timesteps) {
    timesteps.assign(p.timesteps, p.timesteps + steps);
    for (int64_t t : timesteps)
      if (t < 0 || t >= m_.num_train_steps)
        throw argument_error("timestep " + std::to_string(t) + " is outside 0.." + std::to_string(m_.num_train_steps - 1));
    coefs = p.coefs;
  } else {
    const ScheduleTable& table = m_.schedule(sampler, p.steps);
    timesteps = table.timesteps;
    coefs = table.coefs.data();
  }

  // The forecast cache (interval > 1): the plan picks the graph of each step and its cache_coef row.
  const bool cached = p.cache_interval > 1;
  const TensorSpec* cspec = cached ? &cache_spec(p) : nullptr;
  const CachePlan plan = cached ? cache_plan(int64_t(steps), p.cache_interval, p.cache_order, cspec->shape[2]) : CachePlan();

  const size_t n = size_t(m_.batch), m = p.num_images, chunks = (m + n - 1) / n;
  const size_t numel = size_t(m_.latent_channels * m_.latent_size * m_.latent_size);
  const size_t lat_bytes = n * numel * sizeof(float);
  const size_t block = step_noise ? std::max<size_t>(1, std::min(steps, kMaxNoiseTableBytes / lat_bytes)) : 1;
  const size_t img_numel = size_t(3 * m_.image_size * m_.image_size);

  // --- buffers (allocated once) and the tables ---
  Backend& be = *backend_;
  void* x[2] = {buffer("x0", lat_bytes), buffer("x1", lat_bytes)};
  void* y = buffer("y", n * sizeof(int64_t));
  void* guidance = buffer("guidance", sizeof(float));
  auto* t_table = static_cast<char*>(buffer("t", steps * n * sizeof(int64_t)));
  auto* c_table = static_cast<char*>(buffer("coef", steps * k * sizeof(float)));
  auto* noise_table = static_cast<char*>(buffer("noise", block * lat_bytes));
  void* image = decode ? buffer("image", n * img_numel * sizeof(float)) : nullptr;
  // Solver history (every state input of the graph, issue 11): two buffers each, swapped with x.
  std::vector<std::array<void*, 2>> state;
  for (const std::string& s : m_.state_names)
    state.push_back({buffer("state:" + s + "/0", lat_bytes), buffer("state:" + s + "/1", lat_bytes)});
  const std::vector<float> zeros(n * numel, 0.0f);
  // The cache: two buffers, the full steps write the refreshed one (cache_next), then they swap.
  void* cache[2] = {nullptr, nullptr};
  char* cc_table = nullptr;
  const size_t cache_bytes = cached ? cspec->nbytes() : 0, slots = cached ? size_t(plan.slots) : 0;
  if (cached) {
    size_t need = 0;
    for (const char* key : {"cache0", "cache1"}) {
      auto it = bufs_.find(key);
      if (it == bufs_.end() || it->second.bytes < cache_bytes) need += cache_bytes;
    }
    const int64_t free = be.free_bytes();
    if (need && free >= 0 && need > uint64_t(free)) {
      auto mib = [](uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
      throw argument_error("the forecast cache needs " + mib(need) + " (two tensors of " + shape_str(cspec->shape) + " " +
                           dtype_name(cspec->dtype) + "), " + be.describe() + " has " + mib(uint64_t(free)) +
                           " free: use an export with a smaller batch, a lower --max-cache-order, or --cache-interval 1");
    }
    cache[0] = buffer("cache0", cache_bytes);
    cache[1] = buffer("cache1", cache_bytes);
    cc_table = static_cast<char*>(buffer("cache_coef", steps * slots * sizeof(float)));
    be.upload(cc_table, plan.coefs.data(), steps * slots * sizeof(float));
  }

  std::vector<int64_t> t_host(steps * n);
  for (size_t s = 0; s < steps; ++s) std::fill_n(t_host.begin() + s * n, n, timesteps[s]);
  be.upload(t_table, t_host.data(), t_host.size() * sizeof(int64_t));
  be.upload(c_table, coefs, steps * k * sizeof(float));
  // Exactly 1.0 at cfg 1: the graph then selects the conditional prediction (no guidance arithmetic).
  const float g = p.cfg_scale == 1.0f ? 1.0f : p.cfg_scale;
  be.upload(guidance, &g, sizeof(float));

  auto noise = [&](uint32_t draw, size_t image_index, float* out) {
    if (p.noise_fn) {
      const int rc = p.noise_fn(p.noise_user, draw, uint32_t(image_index), out, numel);
      if (rc != 0)
        throw Error(DIT_ERROR_CANCELLED, "the noise callback returned " + std::to_string(rc) + " (draw " +
                                             std::to_string(draw) + ", image " + std::to_string(image_index) + ")");
    } else {
      philox_normal(p.seed, draw, uint32_t(image_index), out, numel);
    }
  };

  const int64_t total = int64_t(chunks * steps);
  std::vector<float> host(block * n * numel), lat_host(n * numel), img_host(decode ? n * img_numel : 0);
  std::vector<int64_t> y_host(n);
  for (size_t c = 0; c < chunks; ++c) {
    const size_t lo = c * n, hi = std::min(m, lo + n), rows = hi - lo;
    std::fill(y_host.begin(), y_host.end(), 0);  // pad rows: label 0, zero latents and noise, discarded
    std::copy(p.labels + lo, p.labels + hi, y_host.begin());
    be.upload(y, y_host.data(), n * sizeof(int64_t));
    std::fill(host.begin(), host.begin() + n * numel, 0.0f);
    for (size_t i = 0; i < rows; ++i) noise(0, lo + i, host.data() + i * numel);
    be.upload(x[0], host.data(), lat_bytes);
    for (auto& st : state) be.upload(st[0], zeros.data(), lat_bytes);  // the history starts at zero
    if (!step_noise) be.upload(noise_table, zeros.data(), lat_bytes);
    int cur = 0, cc = 0;  // cc: the current cache buffer (zeroed per chunk: 0 * stale could be NaN)
    if (cached) be.zero(cache[0], cache_bytes);
    const size_t stride = step_noise ? block : steps;  // no noise: one block of every step, row 0
    for (size_t k0 = 0; k0 < steps; k0 += stride) {
      const size_t k1 = std::min(steps, k0 + stride);
      if (step_noise) {
        std::fill(host.begin(), host.end(), 0.0f);
        for (size_t s = k0; s < k1; ++s)
          for (size_t i = 0; i < rows; ++i) noise(uint32_t(s + 1), lo + i, host.data() + ((s - k0) * n + i) * numel);
        be.upload(noise_table, host.data(), (k1 - k0) * lat_bytes);
      }
      for (size_t s = k0; s < k1; ++s) {
        const size_t noise_row = step_noise ? s - k0 : 0;
        std::vector<Binding> io = {{"x", x[cur], false},
                                   {"t", t_table + s * n * sizeof(int64_t), true},
                                   {"y", y, false},
                                   {"noise", noise_table + noise_row * lat_bytes, true},
                                   {"guidance", guidance, false},
                                   {"coef", c_table + s * k * sizeof(float), true},
                                   {"x_next", x[1 - cur], false}};
        for (size_t i = 0; i < state.size(); ++i) {
          io.push_back({m_.state_names[i], state[i][cur], false});
          io.push_back({m_.state_names[i] + "_next", state[i][1 - cur], false});
        }
        const char* graph = "dit_step";
        if (cached) {
          const bool full = plan.full[s] != 0;
          graph = full ? kFullGraph : kForecastGraph;
          io.push_back({"cache", cache[cc], false});
          io.push_back({"cache_coef", cc_table + s * slots * sizeof(float), true});
          if (full) io.push_back({"cache_next", cache[1 - cc], false});
        }
        be.run(graph, io);
        if (cached && plan.full[s]) cc = 1 - cc;
        cur = 1 - cur;
        if (p.progress_fn && p.progress_fn(p.progress_user, int64_t(c * steps + s + 1), total) != 0)
          throw Error(DIT_ERROR_CANCELLED, "cancelled by the progress callback");
      }
    }
    be.download(lat_host.data(), x[cur], lat_bytes);
    const std::string where = "images " + std::to_string(lo) + ".." + std::to_string(hi - 1) + ", seed " +
                              std::to_string(p.seed);
    if (!all_finite(lat_host.data(), rows * numel))
      throw Error(DIT_ERROR_NUMERIC, be.describe() + ": NaN/Inf in the final latents (" + where + ")");
    if (latents_out) std::memcpy(latents_out + lo * numel, lat_host.data(), rows * numel * sizeof(float));
    if (decode) {
      be.run("vae_decoder", {{"latent", x[cur], false}, {"image", image, false}});
      be.download(img_host.data(), image, n * img_numel * sizeof(float));
      if (!all_finite(img_host.data(), rows * img_numel))
        throw Error(DIT_ERROR_NUMERIC, be.describe() + ": NaN/Inf in the vae_decoder output (" + where +
                                           "; the latents were finite)");
      std::memcpy(images_out + lo * img_numel, img_host.data(), rows * img_numel * sizeof(float));
    }
  }
}

void Runtime::run_graph_host(const std::string& graph, const std::vector<std::pair<std::string, void*>>& host) {
  if (!backend_->has_graph(graph)) {
    std::string loaded = "dit_step";
    for (const char* g : {kFullGraph, kForecastGraph})
      if (backend_->has_graph(g)) loaded += std::string(", ") + g;
    if (backend_->has_graph("vae_decoder")) loaded += ", vae_decoder";
    const std::string why = backend_->not_loaded(graph);
    throw argument_error("graph '" + graph + "' is not loaded (this runtime loads " + loaded + ")" +
                         (why.empty() ? "" : ": " + why));
  }
  const GraphEntry& g = m_.graph(graph);
  if (host.size() != g.inputs.size() + g.outputs.size())
    throw argument_error(graph + " has " + std::to_string(g.inputs.size() + g.outputs.size()) + " inputs and outputs, " +
                         std::to_string(host.size()) + " buffers were given");
  auto host_ptr = [&](const std::string& name) -> void* {
    for (const auto& [n, p] : host)
      if (n == name) {
        if (!p) throw argument_error(graph + ": NULL buffer for '" + name + "'");
        return p;
      }
    throw argument_error(graph + ": no buffer given for '" + name + "'");
  };
  std::vector<Binding> bindings;
  for (const auto* side : {&g.inputs, &g.outputs})
    for (const TensorSpec& t : *side) {
      void* dev = buffer("host:" + graph + "/" + t.name, t.nbytes());
      if (side == &g.inputs) backend_->upload(dev, host_ptr(t.name), t.nbytes());
      bindings.push_back({t.name, dev, false});
    }
  backend_->run(graph, bindings);
  for (const TensorSpec& t : g.outputs)
    for (const Binding& b : bindings)
      if (b.name == t.name) backend_->download(host_ptr(t.name), b.ptr, t.nbytes());
}

void Runtime::sample(const dit_sample_params& p, uint8_t* images_out) {
  check_request(p, true);
  const size_t hw = size_t(m_.image_size) * size_t(m_.image_size);
  std::vector<float> images(p.num_images * 3 * hw);
  generate(p, nullptr, images.data());
  to_uint8(images.data(), p.num_images, size_t(m_.image_size), size_t(m_.image_size), images_out);
}

}  // namespace dit

namespace dit {

std::string compiled_backends() {
  std::string s;
#ifdef DIT_WITH_AOTI
  s += "cpu-aoti";
#endif
#ifdef DIT_WITH_TENSORRT
  s += std::string(s.empty() ? "" : ", ") + "tensorrt";
#endif
  return s.empty() ? "none" : s;
}

}  // namespace dit
