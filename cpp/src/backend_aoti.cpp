// CPU backend: the AOTInductor packages (aoti/dit_step.pt2, aoti/vae_decoder.pt2, and the forecast
// cache's aoti/dit_step_full.pt2 + aoti/dit_step_forecast.pt2 where the export has those graphs and
// they were compiled; each with its record <package>.json) compiled by dit_export.engine.aoti from
// the same torch modules as the ONNX graphs, run with LibTorch's
// AOTIModelPackageLoader. Buffers are 64-byte aligned host memory, wrapped (not copied) as input
// tensors; the package's output tensor is copied into the bound output buffer.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "backend.hpp"
#include "sha256.hpp"

#ifdef DIT_WITH_AOTI
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>
#include <torch/torch.h>
#endif

namespace dit {

#ifdef DIT_WITH_AOTI
namespace {

std::string first_line(const std::string& s) {
  const size_t start = s.find_first_not_of(" \n\t");
  if (start == std::string::npos) return "unknown error";
  const std::string line = s.substr(start, s.find('\n', start) - start);
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

c10::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::kFloat32: return c10::kFloat;
    case DType::kFloat16: return c10::kHalf;
    case DType::kInt64: return c10::kLong;
    case DType::kInt32: return c10::kInt;
    case DType::kUInt8: return c10::kByte;
    case DType::kBool: return c10::kBool;
  }
  return c10::kFloat;
}

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

class AotiBackend : public Backend {
 public:
  AotiBackend(const Manifest& m, const BackendOptions& o, const std::map<std::string, AotiEntry>& packages,
              std::map<std::string, std::string> missing)
      : missing_(std::move(missing)) {
    at::set_num_threads(o.num_threads > 0 ? o.num_threads : default_threads());
    for (const auto& [g, e] : packages) {
      specs_[g] = {e.inputs, e.outputs};
      paths_[g] = m.file_path(e.file.file);
      // The forecast cache's packages (each with a copy of the weights) load on the first cached
      // request: an uncached user holds the memory of dit_step and the VAE only.
      if (g != kFullGraph && g != kForecastGraph) load(g);
    }
    threads_ = at::get_num_threads();
  }

  ~AotiBackend() override {
    loaders_.clear();
    for (void* p : memory_) std::free(p);
  }

  dit_backend_kind kind() const override { return DIT_BACKEND_CPU; }

  std::string describe() const override {
    return "LibTorch " + torch_version() + " AOTInductor (CPU, " + std::to_string(threads_) + " threads)";
  }

  bool has_graph(const std::string& g) const override { return paths_.count(g) != 0; }

  std::string not_loaded(const std::string& g) const override {
    auto it = missing_.find(g);
    return it == missing_.end() ? "" : it->second;
  }

  int64_t free_bytes() const override {  // MemAvailable of /proc/meminfo (Linux); -1 elsewhere
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("MemAvailable:", 0) == 0) {
        std::istringstream in(line.substr(13));
        int64_t kib = -1;
        in >> kib;
        return kib < 0 ? -1 : kib * 1024;
      }
    return -1;
  }

  void* alloc(size_t bytes) override {
    const size_t size = ((bytes + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, size ? size : 64);
    if (!p) throw backend_error("out of host memory (" + std::to_string(bytes) + " bytes)");
    std::memset(p, 0, size ? size : 64);
    memory_.push_back(p);
    return p;
  }

  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }

  void run(const std::string& graph, const std::vector<Binding>& bindings) override {
    auto it = loaders_.find(graph);
    if (it == loaders_.end() && paths_.count(graph)) it = load(graph);
    if (it == loaders_.end()) throw backend_error("cpu backend: graph '" + graph + "' was not loaded");
    const auto& [inputs, outputs] = specs_.at(graph);
    auto find = [&](const std::string& name) -> void* {
      for (const Binding& b : bindings)
        if (b.name == name) return b.ptr;
      throw backend_error(graph + ": no buffer bound to '" + name + "'");
    };
    c10::InferenceMode guard;
    std::vector<at::Tensor> args;
    args.reserve(inputs.size());
    for (const TensorSpec& t : inputs)
      args.push_back(torch::from_blob(find(t.name), t.shape, torch::TensorOptions().dtype(scalar_type(t.dtype))));
    std::vector<at::Tensor> out;
    try {
      out = it->second->run(args);
    } catch (const std::exception& ex) {
      throw backend_error("cpu backend: " + graph + " failed: " + first_line(ex.what()));
    }
    if (out.size() != outputs.size())
      throw backend_error(graph + ".pt2 returned " + std::to_string(out.size()) + " outputs, the manifest says " +
                          std::to_string(outputs.size()));
    for (size_t i = 0; i < outputs.size(); ++i) {
      const TensorSpec& spec = outputs[i];
      at::Tensor r = out[i].contiguous();
      if (r.sizes().vec() != spec.shape || r.scalar_type() != scalar_type(spec.dtype))
        throw backend_error(graph + ".pt2 output " + std::to_string(i) + " is " + std::string(c10::toString(r.scalar_type())) +
                            " " + shape_str(r.sizes().vec()) + ", the manifest says " + spec.describe());
      std::memcpy(find(spec.name), r.data_ptr(), spec.nbytes());
    }
  }

 private:
  using Loaders = std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>>;

  Loaders::iterator load(const std::string& g) {
    const std::string& path = paths_.at(g);
    try {
      return loaders_.emplace(g, std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, -1))
          .first;
    } catch (const std::exception& ex) {
      throw backend_error("LibTorch " + torch_version() + " cannot load " + path + ": " + first_line(ex.what()));
    }
  }

  Loaders loaders_;
  std::map<std::string, std::string> paths_;  // every package it runs (loaded now or on first use)
  std::map<std::string, std::pair<std::vector<TensorSpec>, std::vector<TensorSpec>>> specs_;
  std::vector<void*> memory_;
  std::map<std::string, std::string> missing_;  // graph -> why it was not loaded
  int threads_ = 1;
};

}  // namespace

std::unique_ptr<Backend> make_aoti_backend(const Manifest& m, const BackendOptions& o, std::string* why) {
  const std::string redo = "python -m dit_export aoti " + m.folder;
  std::vector<std::string> graphs = {"dit_step"};
  if (m.has_vae && o.load_vae) graphs.push_back("vae_decoder");
  std::map<std::string, AotiEntry> packages;
  for (const std::string& g : graphs) {
    std::optional<AotiEntry> e = read_aoti_record(m, g);
    if (!e) {
      *why = "no AOTInductor package " + aoti_package_file(g) + " (with its .json record) in " + m.folder +
             " (compile it with: " + redo + ")";
      return nullptr;
    }
    packages.emplace(g, std::move(*e));
  }
  // The forecast cache's graphs: loaded when compiled; a folder without their packages still
  // samples uncached (a cached request then names the command that compiles them).
  std::map<std::string, std::string> missing;
  for (const std::string& g : cache_graphs()) {
    if (!m.has_graph(g)) continue;
    std::optional<AotiEntry> e = read_aoti_record(m, g);
    if (e) packages.emplace(g, std::move(*e));
    else
      missing[g] = "no AOTInductor package " + aoti_package_file(g) + " in " + m.folder + " (compile it with: " + redo +
                   " --graphs " + kFullGraph + " " + kForecastGraph + ")";
  }
  const std::string want = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + ".";
  for (const auto& [g, e] : packages) {
    const std::string where = m.folder + "/" + e.file.file;
    if (e.device != "cpu")
      throw manifest_error(where + " was compiled for '" + e.device + "', this backend runs on the CPU; recompile with: " + redo);
    if (e.torch.rfind(want, 0) != 0)
      throw manifest_error(where + " was compiled with torch " + e.torch + ", this library links LibTorch " +
                           torch_version() + "; recompile it (" + redo + ") with torch " + torch_version());
    const GraphEntry& onnx = m.graph(g);
    if (e.onnx_sha256 != onnx.file.sha256 || e.onnx_file != onnx.file.file)
      throw manifest_error(where + " was compiled for another " + onnx.file.file + " (stale); recompile with: " + redo);
    if (e.inputs != onnx.inputs || e.outputs != onnx.outputs)
      throw manifest_error(where + ": its I/O differs from " + onnx.file.file + "'s; recompile with: " + redo);
    verify_file(m, e.file, "AOTI package", o.verify_hashes, "its record");
  }
  return std::make_unique<AotiBackend>(m, o, packages, std::move(missing));
}

#else

std::unique_ptr<Backend> make_aoti_backend(const Manifest&, const BackendOptions&, std::string* why) {
  *why = "this dit_runtime was built without LibTorch (the CPU backend); reconfigure with LibTorch found";
  return nullptr;
}

#endif

}  // namespace dit
