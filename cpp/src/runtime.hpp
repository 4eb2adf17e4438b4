// The sampling loop, once for every backend: cut the request into chunks of the engine batch,
// bind the schedule rows, the step's noise and the two latent buffers (ping-pong) to the fused
// step graph, then decode. No diffusion arithmetic happens here: it is all inside the graph.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "dit_runtime.h"
#include "manifest.hpp"

namespace dit {

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
