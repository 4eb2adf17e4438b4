// The one small interface every C++ backend implements (design.md, contract 3): load the graphs
// named in the manifest, allocate tensors once, run a graph by name on bound buffers, describe
// itself. The sampling loop (runtime.cpp) lives once, above it, and does no arithmetic.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "manifest.hpp"

namespace dit {

// One bound graph input or output: a pointer into backend memory. `row` marks a view into a
// table (a schedule row, a step's noise): its address changes every step and is not aligned
// beyond its element type, so the TensorRT backend stages it into a fixed, 256-byte aligned
// buffer (which is also what a captured CUDA graph needs).
struct Binding {
  std::string name;
  void* ptr = nullptr;
  bool row = false;
};

struct BackendOptions {
  bool verify_hashes = true;
  bool load_vae = true;
  int num_threads = 0;
  int device = 0;
  bool cuda_graph = true;
  // The forecast cache's graphs are optional to a backend (missing: uncached only), except for the
  // TensorRT backend under AUTO, which then falls back like for any graph it lacks (the `auto` rule).
  bool require_cache_graphs = false;
};

// The forecast cache's two step graphs (manifest.hpp kFullGraph, kForecastGraph): a backend loads
// them beside dit_step when the export has them and it has their compiled form.
inline std::vector<std::string> cache_graphs() { return {kFullGraph, kForecastGraph}; }

class Backend {
 public:
  virtual ~Backend() = default;
  virtual dit_backend_kind kind() const = 0;
  virtual std::string describe() const = 0;
  virtual bool has_graph(const std::string& graph) const = 0;
  // Zeroed backend memory (host or device) owned by the backend until it is destroyed.
  virtual void* alloc(size_t bytes) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;      // host -> backend
  virtual void download(void* dst, const void* src, size_t bytes) = 0;    // backend -> host, waits
  // Zeroes backend memory (ordered before the next run); default: uploads of a zero block.
  virtual void zero(void* dst, size_t bytes) {
    static const std::vector<char> block(size_t(1) << 20, 0);
    for (size_t off = 0; off < bytes; off += block.size())
      upload(static_cast<char*>(dst) + off, block.data(), std::min(block.size(), bytes - off));
  }
  // Runs `graph` with every input and output bound (the manifest's names); may return early.
  virtual void run(const std::string& graph, const std::vector<Binding>& bindings) = 0;
  // Bytes that alloc() could still get (free host RAM, free GPU memory); -1 when unknown.
  virtual int64_t free_bytes() const { return -1; }
  // Why a graph of the export was not loaded (its package or plan is missing), with the command
  // that makes it; "" when it is loaded or the backend has nothing to say.
  virtual std::string not_loaded(const std::string& graph) const {
    (void)graph;
    return "";
  }
};

// Each returns nullptr with `why` set when the backend is not compiled in or the folder lacks
// what it needs (so AUTO can fall back); throws dit::Error when loading itself fails.
std::unique_ptr<Backend> make_aoti_backend(const Manifest& m, const BackendOptions& o, std::string* why);
std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& m, const BackendOptions& o, std::string* why);

// "cpu-aoti, tensorrt": what this build contains.
std::string compiled_backends();

}  // namespace dit
