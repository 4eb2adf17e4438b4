// TensorRT backend (compiled only when CMake finds TensorRT and the CUDA runtime).
//
// - Plans are files plans/<graph>.trt<major>.<minor>.sm<cc>.plan with a JSON record beside each
//   (<plan>.json, schema dit_export.plan/1, written by dit_export.engine.plans): the one for this
//   TensorRT release and GPU is used. No record for this one means "no plan here" (AUTO falls back
//   to the CPU); a record that disagrees with the ONNX graph, the precision or its own file is an error.
// - IRuntime::deserializeCudaEngine, the engine's I/O checked against the manifest (names,
//   modes, shapes, dtypes), one IExecutionContext per graph, setInputShape once (static shapes),
//   setTensorAddress when a binding changes, enqueueV3 on one non-blocking stream.
// - CUDA graphs for the step graphs (dit_step; dit_step_full and dit_step_forecast of the forecast
//   cache, whose two cache buffers swap on full steps): an address set runs once uncaptured, then
//   is captured and replayed. Table rows (timestep, coefficients, noise) are always copied device-to-device into
//   fixed, 256-byte aligned staging inputs first (with or without graphs: a row view is not
//   aligned), so the two latent buffers give just two graphs (x -> x' and x' -> x).
//
// Only the API present in both TensorRT 10.x and 11.x is used (shared/reference/tensorrt.md).
#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "backend.hpp"

#ifdef DIT_WITH_TENSORRT
#include <NvInfer.h>
#include <cuda_runtime_api.h>
#endif

namespace dit {

#ifdef DIT_WITH_TENSORRT
namespace {

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw backend_error(std::string("CUDA: ") + what + " failed: " + cudaGetErrorString(rc));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg ? msg : "";
  }
  std::string last_error;
};

struct Target {
  int major = 0, minor = 0, patch = 0;  // TensorRT
  std::string gpu;
  std::string cc;  // "9.0"
  std::string sm() const {
    std::string s = cc;
    s.erase(std::remove(s.begin(), s.end(), '.'), s.end());
    return "sm" + s;
  }
  std::string trt() const {
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  }
  std::string plan_name(const std::string& graph) const {  // relative to the export folder
    return "plans/" + graph + ".trt" + std::to_string(major) + "." + std::to_string(minor) + "." + sm() + ".plan";
  }
  std::string describe() const { return "TensorRT " + trt() + " on " + gpu + " (" + sm() + ")"; }
};

bool current_target(int device, Target* t, std::string* why) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    *why = "no CUDA GPU is visible";
    return false;
  }
  if (device < 0 || device >= count) {
    *why = "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)";
    return false;
  }
  cuda_check(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp prop;
  cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT >= 10)
  t->major = v / 10000;
  t->minor = (v / 100) % 100;
  t->patch = v % 100;
  t->gpu = prop.name;
  t->cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  return true;
}

DType from_trt(nvinfer1::DataType d, bool* ok) {
  *ok = true;
  switch (d) {
    case nvinfer1::DataType::kFLOAT: return DType::kFloat32;
    case nvinfer1::DataType::kHALF: return DType::kFloat16;
    case nvinfer1::DataType::kINT64: return DType::kInt64;
    case nvinfer1::DataType::kINT32: return DType::kInt32;
    case nvinfer1::DataType::kUINT8: return DType::kUInt8;
    case nvinfer1::DataType::kBOOL: return DType::kBool;
    default: *ok = false; return DType::kFloat32;
  }
}

struct Engine {
  std::string label;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  std::vector<TensorSpec> inputs, outputs;
  std::map<std::string, void*> bound;
  bool warm = false;  // enqueued once outside a capture
};

class TrtBackend : public Backend {
 public:
  TrtBackend(const Manifest& m, const BackendOptions& o, const Target& target,
             const std::map<std::string, std::string>& plans, std::map<std::string, std::string> missing)
      : target_(target), cuda_graph_(o.cuda_graph), missing_(std::move(missing)) {
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw backend_error("TensorRT: createInferRuntime failed: " + logger_.last_error);
    for (const auto& [graph, file] : plans) {
      const std::string path = m.file_path(file);
      std::ifstream f(path, std::ios::binary);
      std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (!f.good() && !f.eof()) throw backend_error("cannot read " + path);
      Engine e;
      e.label = file;
      e.engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
      if (!e.engine)
        throw backend_error("TensorRT " + target_.trt() + " cannot deserialize " + path + ": " + logger_.last_error);
      const GraphEntry& g = m.graph(graph);
      e.inputs = g.inputs;
      e.outputs = g.outputs;
      check_io(graph, e);
      e.context.reset(e.engine->createExecutionContext());
      if (!e.context) throw backend_error("TensorRT: createExecutionContext failed for " + file + ": " + logger_.last_error);
      for (const TensorSpec& t : e.inputs) {
        nvinfer1::Dims d{};
        d.nbDims = int32_t(t.shape.size());
        for (size_t i = 0; i < t.shape.size(); ++i) d.d[i] = t.shape[i];
        if (!e.context->setInputShape(t.name.c_str(), d))
          throw backend_error(file + ": setInputShape(" + t.name + ") failed: " + logger_.last_error);
      }
      engines_.emplace(graph, std::move(e));
    }
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }

  ~TrtBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
    engines_.clear();  // contexts and engines before the runtime
    runtime_.reset();
    for (void* p : memory_) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
  }

  dit_backend_kind kind() const override { return DIT_BACKEND_TENSORRT; }

  std::string describe() const override {
    std::string s = target_.describe();
    if (cuda_graph_) s += capture_failed_.empty() ? ", CUDA graph on" : ", CUDA graph off (capture failed)";
    return s;
  }

  bool has_graph(const std::string& g) const override { return engines_.count(g) != 0; }

  std::string not_loaded(const std::string& g) const override {
    auto it = missing_.find(g);
    return it == missing_.end() ? "" : it->second;
  }

  int64_t free_bytes() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    return int64_t(free);
  }

  void* alloc(size_t bytes) override {
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    memory_.push_back(p);
    // On the execution stream: a cudaMemset would run on the legacy default stream, which does
    // not order against our non-blocking stream (the zeros could land after a later upload).
    cuda_check(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync");
    return p;
  }

  void upload(void* dst, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync H2D");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // the caller may reuse src
  }

  void zero(void* dst, size_t bytes) override {  // on the stream: ordered before the next enqueue
    cuda_check(cudaMemsetAsync(dst, 0, bytes, stream_), "cudaMemsetAsync");
  }

  void download(void* dst, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync D2H");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  void run(const std::string& graph, const std::vector<Binding>& bindings) override {
    auto it = engines_.find(graph);
    if (it == engines_.end()) throw backend_error("tensorrt backend: graph '" + graph + "' was not loaded");
    Engine& e = it->second;
    // The step graphs (plain, and the cache's full and forecast steps) replay as CUDA graphs.
    const bool use_graph = cuda_graph_ && graph != "vae_decoder" && capture_failed_.empty();
    std::vector<std::pair<std::string, void*>> addrs;
    for (const auto* side : {&e.inputs, &e.outputs})
      for (const TensorSpec& t : *side) {
        const Binding* b = nullptr;
        for (const Binding& x : bindings)
          if (x.name == t.name) b = &x;
        if (!b) throw backend_error(graph + ": no buffer bound to '" + t.name + "'");
        void* ptr = b->ptr;
        // A table row: copy it into a fixed staging input. Row views sit at offsets that are not
        // 256-byte aligned (TensorRT wants aligned tensor addresses), and a captured graph needs
        // fixed addresses; cudaMalloc'd staging buffers are both. Always, graph or not.
        if (b->row) {
          void*& st = staging_[graph + "/" + t.name];
          if (!st) st = alloc(t.nbytes());
          cuda_check(cudaMemcpyAsync(st, b->ptr, t.nbytes(), cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync D2D");
          ptr = st;
        }
        addrs.emplace_back(t.name, ptr);
      }
    if (!use_graph) {
      set_addresses(e, addrs);
      enqueue(e);
      return;
    }
    std::ostringstream key;  // one captured graph per engine and address set
    key << graph << ":";
    for (const auto& a : addrs) key << a.first << "=" << a.second << ";";
    auto g = graphs_.find(key.str());
    if (g == graphs_.end()) {
      set_addresses(e, addrs);
      if (!e.warm) {  // TensorRT's first enqueue of a context may allocate: never inside a capture
        enqueue(e);
        e.warm = true;
      }
      cudaGraphExec_t exec = nullptr;
      if (!capture(e, &exec)) {  // run on without graphs rather than fail the request
        enqueue(e);
        return;
      }
      g = graphs_.emplace(key.str(), exec).first;
    }
    cuda_check(cudaGraphLaunch(g->second, stream_), "cudaGraphLaunch");
  }

 private:
  void check_io(const std::string& graph, const Engine& e) {
    const int n = e.engine->getNbIOTensors();
    const size_t want = e.inputs.size() + e.outputs.size();
    if (n < 0 || size_t(n) != want)
      throw backend_error(e.label + " has " + std::to_string(n) + " I/O tensors, the manifest's " + graph + " has " +
                          std::to_string(want));
    for (const auto* side : {&e.inputs, &e.outputs})
      for (const TensorSpec& t : *side) {
        const char* name = t.name.c_str();
        const bool is_input = side == &e.inputs;
        const nvinfer1::TensorIOMode mode = e.engine->getTensorIOMode(name);
        if (mode != (is_input ? nvinfer1::TensorIOMode::kINPUT : nvinfer1::TensorIOMode::kOUTPUT))
          throw backend_error(e.label + " does not match the manifest's " + graph + " I/O: " + t.name +
                              (mode == nvinfer1::TensorIOMode::kNONE ? " is missing" : " has the wrong direction"));
        const nvinfer1::Dims d = e.engine->getTensorShape(name);
        std::vector<int64_t> shape(d.d, d.d + std::max(0, int(d.nbDims)));
        bool ok = false;
        const DType dt = from_trt(e.engine->getTensorDataType(name), &ok);
        if (shape != t.shape || !ok || dt != t.dtype)
          throw backend_error(e.label + " does not match the manifest's " + graph + " I/O: " + t.name + " is " +
                              (ok ? dtype_name(dt) : "an unsupported type") + " " + shape_str(shape) +
                              ", the manifest says " + t.describe());
      }
  }

  void set_addresses(Engine& e, const std::vector<std::pair<std::string, void*>>& addrs) {
    for (const auto& [name, ptr] : addrs) {
      void*& have = e.bound[name];
      if (have == ptr) continue;
      if (!e.context->setTensorAddress(name.c_str(), ptr))
        throw backend_error(e.label + ": setTensorAddress(" + name + ") failed: " + logger_.last_error);
      have = ptr;
    }
  }

  void enqueue(Engine& e) {
    if (!e.context->enqueueV3(stream_)) throw backend_error(e.label + ": enqueueV3 failed: " + logger_.last_error);
  }

  bool capture(Engine& e, cudaGraphExec_t* exec) {
    cudaGraph_t graph = nullptr;
    cudaError_t rc = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    bool enqueued = false;
    if (rc == cudaSuccess) {
      enqueued = e.context->enqueueV3(stream_);
      rc = cudaStreamEndCapture(stream_, &graph);
    }
    if (rc == cudaSuccess && enqueued) rc = cudaGraphInstantiateWithFlags(exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (rc != cudaSuccess || !enqueued) {
      cudaGetLastError();  // reset the (non-sticky) error a failed capture leaves behind
      capture_failed_ = rc != cudaSuccess ? cudaGetErrorString(rc) : "enqueueV3 failed during capture";
      return false;
    }
    return true;
  }

  Logger logger_;  // must outlive the runtime and engines (declared first, destroyed last)
  Target target_;
  bool cuda_graph_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, Engine> engines_;
  cudaStream_t stream_ = nullptr;
  std::vector<void*> memory_;
  std::map<std::string, void*> staging_;
  std::map<std::string, cudaGraphExec_t> graphs_;
  std::map<std::string, std::string> missing_;  // graph -> why it was not loaded
  std::string capture_failed_;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& m, const BackendOptions& o, std::string* why) {
  Target target;
  if (!current_target(o.device, &target, why)) return nullptr;
  std::vector<std::string> graphs = {"dit_step"};
  if (m.has_vae && o.load_vae) graphs.push_back("vae_decoder");
  // The forecast cache's graphs: loaded when the folder has their plans for this target; without
  // them the folder still samples uncached (a cached request then names the rebuild).
  std::map<std::string, std::string> missing;
  for (const std::string& g : cache_graphs())
    if (m.has_graph(g)) graphs.push_back(g);
  std::map<std::string, std::string> plans;
  const std::string rebuild = "; rebuild with: python -m dit_export build --backend trt --out " + m.folder;
  for (const std::string& g : graphs) {
    const std::string name = target.plan_name(g);
    const std::optional<PlanRecord> rec = read_plan_record(m, name);
    if (!rec) {
      std::string others;
      for (const std::string& k : recorded_plans(m, g)) others += (others.empty() ? "" : ", ") + k;
      const std::string no = "no " + g + " engine for " + target.describe() + " (" + name + ")" +
                              (others.empty() ? "" : "; the folder has " + others);
      if ((g == kFullGraph || g == kForecastGraph) && !o.require_cache_graphs) {
        missing[g] = no + rebuild.substr(2);
        continue;
      }
      *why = no;
      return nullptr;
    }
    const PlanRecord& r = *rec;
    const GraphEntry& onnx = m.graph(g);
    std::string stale;
    if (r.graph != g) stale = "is recorded for graph " + r.graph;
    else if (r.onnx_sha256 != onnx.file.sha256 || r.onnx_file != onnx.file.file) stale = "was built from another " + onnx.file.file;
    else if (r.tensorrt.rfind(target.trt(), 0) != 0) stale = "was built with TensorRT " + r.tensorrt + ", this is " + target.trt();
    else if (r.compute_capability != target.cc) stale = "was built for compute capability " + r.compute_capability;
    else if (!r.precision.empty() && r.precision != m.precision) stale = "was built from a " + r.precision + " graph";
    if (!stale.empty()) throw manifest_error(m.folder + ": " + name + " " + stale + rebuild);
    verify_file(m, r.file, "TensorRT plan", o.verify_hashes, "its record");
    plans[g] = name;
  }
  return std::make_unique<TrtBackend>(m, o, target, plans, std::move(missing));
}

#else

std::unique_ptr<Backend> make_tensorrt_backend(const Manifest&, const BackendOptions&, std::string* why) {
  *why = "this dit_runtime was built without TensorRT (reconfigure with -DDIT_WITH_TENSORRT=ON where TensorRT and CUDA are installed)";
  return nullptr;
}

#endif

}  // namespace dit
