// The C API: exceptions stop here and become a status code plus a per-thread message.
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "dit_runtime.h"
#include "philox.hpp"
#include "runtime.hpp"

struct dit_runtime {
  std::unique_ptr<dit::Runtime> rt;
};

namespace {

thread_local std::string g_last_error;
thread_local int g_last_status = DIT_OK;

int fail(dit_status status, const std::string& message) {
  g_last_error = message;
  g_last_status = status;
  return status;
}

template <typename F>
int guarded(F&& f) {
  try {
    g_last_error.clear();
    g_last_status = DIT_OK;
    f();
    return DIT_OK;
  } catch (const dit::Error& e) {
    return fail(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return fail(DIT_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(DIT_ERROR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(DIT_ERROR_INTERNAL, "internal error (unknown exception)");
  }
}

}  // namespace

extern "C" {

void dit_open_options_init(dit_open_options* o) {
  if (!o) return;
  o->backend = DIT_BACKEND_AUTO;
  o->verify_hashes = 1;
  o->num_threads = 0;
  o->device = 0;
  o->cuda_graph = 1;
  o->load_vae = 1;
}

dit_runtime* dit_open(const char* engines_dir, const dit_open_options* options) {
  dit_runtime* out = nullptr;
  const int rc = guarded([&] {
    if (!engines_dir || !*engines_dir) throw dit::argument_error("dit_open: no engines folder given");
    dit_open_options o;
    dit_open_options_init(&o);
    if (options) o = *options;
    auto handle = std::make_unique<dit_runtime>();
    handle->rt = dit::Runtime::open(engines_dir, o);
    out = handle.release();
  });
  return rc == DIT_OK ? out : nullptr;
}

void dit_close(dit_runtime* rt) { delete rt; }

const char* dit_describe_samplers(const char* engines_dir) {
  thread_local std::string text;
  const int rc = guarded([&] {
    if (!engines_dir || !*engines_dir) throw dit::argument_error("dit_describe_samplers: no engines folder given");
    text = dit::Manifest::load(engines_dir).describe_samplers();
  });
  return rc == DIT_OK ? text.c_str() : nullptr;
}

int dit_get_info(const dit_runtime* rt, dit_info* info) {
  return guarded([&] {
    if (!rt || !info) throw dit::argument_error("dit_get_info: NULL handle or info");
    rt->rt->info(info);
  });
}

void dit_sample_params_init(dit_sample_params* p) {
  if (!p) return;
  *p = dit_sample_params{};
  p->seed = 0;
  p->cfg_scale = 4.0f;
  p->steps = 250;
  p->sampler = "ddpm";
  p->cache_interval = 1;
  p->cache_order = 2;
}

int dit_sample(dit_runtime* rt, const dit_sample_params* params, uint8_t* images_out) {
  return guarded([&] {
    if (!rt || !params || !images_out) throw dit::argument_error("dit_sample: NULL handle, params or output buffer");
    rt->rt->sample(*params, images_out);
  });
}

int dit_generate(dit_runtime* rt, const dit_sample_params* params, float* latents_out, float* images_out) {
  return guarded([&] {
    if (!rt || !params) throw dit::argument_error("dit_generate: NULL handle or params");
    if (!latents_out && !images_out) throw dit::argument_error("dit_generate: give latents_out, images_out or both");
    rt->rt->generate(*params, latents_out, images_out);
  });
}

int dit_run_graph(dit_runtime* rt, const char* graph, size_t num_tensors, const char* const* names,
                  void* const* host_buffers) {
  return guarded([&] {
    if (!rt || !graph || (num_tensors && (!names || !host_buffers)))
      throw dit::argument_error("dit_run_graph: NULL handle, graph, names or buffers");
    std::vector<std::pair<std::string, void*>> host;
    for (size_t i = 0; i < num_tensors; ++i) {
      if (!names[i]) throw dit::argument_error("dit_run_graph: NULL name");
      host.emplace_back(names[i], host_buffers[i]);
    }
    rt->rt->run_graph_host(graph, host);
  });
}

int dit_images_to_uint8(const float* images, size_t num_images, int32_t height, int32_t width, uint8_t* out) {
  return guarded([&] {
    if ((!images || !out) && num_images) throw dit::argument_error("dit_images_to_uint8: NULL buffer");
    if (height <= 0 || width <= 0) throw dit::argument_error("dit_images_to_uint8: height and width must be positive");
    dit::to_uint8(images, num_images, size_t(height), size_t(width), out);
  });
}

int dit_philox_normal(uint64_t seed, uint32_t draw, uint32_t image, float* out, size_t numel) {
  return guarded([&] {
    if (!out && numel) throw dit::argument_error("dit_philox_normal: NULL output");
    try {
      dit::philox_normal(seed, draw, image, out, numel);
    } catch (const std::invalid_argument& e) {
      throw dit::argument_error(e.what());
    }
  });
}

const char* dit_last_error(void) { return g_last_error.c_str(); }

int dit_last_status(void) { return g_last_status; }

const char* dit_version(void) {
  static const std::string v = std::to_string(DIT_RUNTIME_VERSION_MAJOR) + "." + std::to_string(DIT_RUNTIME_VERSION_MINOR) +
                               "." + std::to_string(DIT_RUNTIME_VERSION_PATCH) + " (backends: " +
                               dit::compiled_backends() + ")";
  return v.c_str();
}

}  // extern "C"
