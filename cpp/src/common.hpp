// Shared internals: the error type every layer throws, tensor specs, small helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dit_runtime.h"

namespace dit {

// One-line, user-facing error with the C API status it maps to.
class Error : public std::runtime_error {
 public:
  Error(dit_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  dit_status status() const { return status_; }

 private:
  dit_status status_;
};

inline Error manifest_error(const std::string& m) { return Error(DIT_ERROR_MANIFEST, m); }
inline Error backend_error(const std::string& m) { return Error(DIT_ERROR_BACKEND, m); }
inline Error argument_error(const std::string& m) { return Error(DIT_ERROR_INVALID_ARGUMENT, m); }

enum class DType { kFloat32, kFloat16, kInt64, kInt32, kUInt8, kBool };

DType parse_dtype(const std::string& name);  // throws std::invalid_argument for unknown names
const char* dtype_name(DType d);
size_t dtype_size(DType d);

// One graph input or output as the manifest declares it (static shape).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;

  size_t numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  size_t nbytes() const { return numel() * dtype_size(dtype); }
  std::string describe() const;  // "x float32 [2, 4, 32, 32]"
  bool operator==(const TensorSpec& o) const {
    return name == o.name && shape == o.shape && dtype == o.dtype;
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

// CPU threads when the caller asks for the default (num_threads 0): OMP_NUM_THREADS when it is set
// to a positive integer, else one per free CPU: the CPUs this process may run on (its affinity
// mask) minus the 1-minute load average, rounded, at least 1. On a busy machine oversubscribed
// OpenMP threads spin against each other (2 threads ran 6.6x slower than 1 on a loaded 2-core box).
int default_threads();
int usable_cpus();                     // sched_getaffinity count, else hardware_concurrency
int free_cpus(int cpus, double load);  // max(1, min(cpus, cpus - round(load)))

}  // namespace dit
