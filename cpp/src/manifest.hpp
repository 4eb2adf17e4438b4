// manifest.json of an exported folder: parsed with nlohmann-json and validated like the Python
// reader (dit_export.export.manifest), plus the checks this runtime relies on (the step and VAE
// graph I/O agree with the batch and latent shape, schedule rows fit the coef input, the AOTI
// packages and TensorRT plans belong to these graphs). Every failure is one dit::Error line that
// names the field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"

namespace dit {

constexpr const char* kManifestSchema = "dit_export.manifest/1";
constexpr const char* kAotiSchema = "dit_export.aoti/1";
constexpr const char* kManifestFile = "manifest.json";

struct FileEntry {
  std::string file;
  std::string sha256;
  uint64_t bytes = 0;
};

struct GraphEntry {
  FileEntry file;
  std::vector<FileEntry> external_data;
  std::vector<TensorSpec> inputs, outputs;
  std::string precision;
  const TensorSpec* find(const std::string& name) const;
};

struct ScheduleTable {
  std::vector<int64_t> timesteps;  // (S,)
  std::vector<float> coefs;        // (S, K) row-major, loop order
};

// An AOTInductor package (manifest "aoti.graphs.<graph>").
struct AotiEntry {
  FileEntry file;
  std::string onnx_sha256;
  std::vector<TensorSpec> inputs, outputs;
};

// A TensorRT plan record (manifest "engines.<file name>").
struct PlanRecord {
  std::string graph;
  FileEntry file;
  std::string tensorrt;            // full version string, e.g. "10.13.0.35"
  std::string gpu;
  std::string compute_capability;  // "9.0"
  std::string onnx_sha256;
  std::string precision;
};

struct Manifest {
  std::string folder;
  std::string path;  // folder/manifest.json (prefix of every error)
  std::string schema;
  std::map<std::string, std::string> versions;
  std::string model_name, flavor, source;
  int64_t num_classes = 0, null_class = 0, cfg_channels = 0;
  int64_t image_size = 0, latent_size = 0, latent_channels = 0, batch = 0, opset = 0;
  std::string precision;
  bool has_vae = false;
  double vae_scaling_factor = 0.0;
  int64_t vae_factor = 0;
  std::map<std::string, GraphEntry> graphs;  // non-null graphs only
  std::vector<std::string> coef_names;
  int64_t num_train_steps = 0;
  std::map<std::string, std::map<int64_t, ScheduleTable>> schedules;  // sampler -> steps -> table
  std::string noise_default;
  bool has_aoti = false;
  std::string aoti_torch, aoti_device, aoti_cpu_isa;
  std::map<std::string, AotiEntry> aoti;
  std::map<std::string, PlanRecord> engines;  // by plan file name

  // Reads folder/manifest.json and validates it (files named by graphs must exist).
  static Manifest load(const std::string& folder);
  // Validates JSON text as the manifest of `folder` (tests use it on edited copies).
  static Manifest parse(const std::string& json_text, const std::string& folder, bool check_files = true);

  const GraphEntry& graph(const std::string& name) const;  // throws when the export lacks it
  bool has_graph(const std::string& name) const { return graphs.count(name) != 0; }
  size_t coef_size() const;  // K: the dit_step coef input length
  // The stored table; throws (naming the stored ones) when there is none.
  const ScheduleTable& schedule(const std::string& sampler, int64_t steps) const;
  std::string stored_schedules() const;  // "ddpm 25,50,100,250; ddim 10,25,50"
  std::string file_path(const std::string& name) const { return folder + "/" + name; }
};

// Existence, size, then (when `hash`) sha256 of a file the manifest records; one-line error naming it on a mismatch.
void verify_file(const Manifest& m, const FileEntry& e, const std::string& what, bool hash = true);

}  // namespace dit
