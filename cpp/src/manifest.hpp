// manifest.json of an exported folder: parsed with nlohmann-json and validated like the Python
// reader (dit_export.export.manifest) against the fields the committed schema
// (dit_export/export/manifest/manifest.schema.json) requires, plus the checks this runtime relies on (the
// step and VAE graph I/O agree with the batch and latent shape, schedule rows fit the coef input).
// The manifest is written once by `export` and never rewritten: compiled artifacts (AOTI packages,
// TensorRT plans) are files in aoti/ and plans/ with a JSON record beside each (<artifact>.json,
// written by dit_export.engine), read here too. Every failure is one dit::Error line naming the field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"

namespace dit {

constexpr const char* kManifestSchema = "dit_export.manifest/2";
constexpr const char* kAotiSchema = "dit_export.aoti/2";
constexpr const char* kPlanSchema = "dit_export.plan/1";
constexpr const char* kManifestFile = "manifest.json";

struct FileEntry {
  std::string file;  // relative to the export folder (is_inside_path: dit.onnx, aoti/dit_step.pt2)
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

// schedule.samplers.<name> (or the schedules.json sidecar's samplers.<name>): the Python sampler
// registry's SamplerSpec.record(). Everything this runtime knows about a sampler comes from here.
struct SamplerRecord {
  std::string name;
  std::string kind;               // "ancestral" | "sde" | "ode"
  int64_t min_steps = 1;
  std::vector<std::string> state;  // dit_step state inputs it reads (output: name + "_next")
  bool multistep = false;          // absent in older records: true when it has state
  bool draws_noise = true;         // absent in older records: kind != "ode"
  std::vector<std::string> coefs;  // the coef columns it writes (absent: all of coef_names)
};

// The sidecar `python -m dit_export schedules --add` writes beside manifest.json (never rewritten):
// more tables and sampler records, bound to manifest.json by its sha256, each table by its own.
constexpr const char* kSchedulesFile = "schedules.json";
constexpr const char* kSchedulesSchema = "dit_export.schedules/1";

// An AOTInductor package: aoti/<graph>.pt2 and its record aoti/<graph>.pt2.json.
struct AotiEntry {
  std::string graph;
  FileEntry file;
  std::string onnx_file, onnx_sha256;
  std::vector<TensorSpec> inputs, outputs;
  std::string torch, device, cpu_isa, precision;
};

// A TensorRT plan: plans/<graph>.trt<major>.<minor>.sm<cc>.plan and its record (<plan>.json).
struct PlanRecord {
  std::string graph;
  FileEntry file;
  std::string onnx_file, onnx_sha256;
  std::string tensorrt;            // full version string, e.g. "10.13.0.35"
  std::string gpu;
  std::string compute_capability;  // "9.0"
  std::string precision;
};

// The forecast step cache (issue 21): manifest "cache", present exactly when the folder has the graphs
// dit_step_full and dit_step_forecast (dit_export/sampling/cache.py). Their extra inputs are
// "cache" (shape, dtype) and "cache_coef" float32 (slots,); dit_step_full also writes "cache_next".
constexpr const char* kFullGraph = "dit_step_full";
constexpr const char* kForecastGraph = "dit_step_forecast";
struct CacheRecord {
  int64_t max_order = 0;            // the largest Taylor order the graphs hold (0..3)
  int64_t slots = 0;                // max_order + 1 (Newton differences D_0..D_O per branch)
  std::vector<int64_t> shape;       // (depth, 2 branches, slots, 2N rows, tokens, hidden)
  DType dtype = DType::kFloat32;
  int64_t bytes_per_image = 0;      // one cache tensor for one image (the loop holds two)
  std::string schedule;             // "taylorseer-dit"
  int64_t first_full = 2;           // the first steps that always run in full
  size_t nbytes() const;            // one cache tensor for the export's batch
};

struct Manifest {
  std::string folder;
  std::string path;  // folder/manifest.json (prefix of every error)
  std::string schema;
  std::map<std::string, std::string> versions;
  std::string model_name, flavor, source;
  int64_t num_classes = 0, null_class = 0, cfg_channels = 0;
  int64_t config_input_size = 0, config_in_channels = 0;  // model.config: latent size and channels
  int64_t config_depth = 0, config_hidden_size = 0, config_patch_size = 0;  // model.config (the cache shape)
  bool learn_sigma = false;
  int64_t image_size = 0, latent_size = 0, latent_channels = 0, batch = 0, opset = 0;
  std::string precision;
  bool has_vae = false;
  double vae_scaling_factor = 0.0;
  int64_t vae_factor = 0;
  std::map<std::string, GraphEntry> graphs;  // non-null graphs only
  std::vector<std::string> coef_names;
  int64_t num_train_steps = 0;
  std::map<std::string, std::map<int64_t, ScheduleTable>> schedules;  // sampler -> steps -> table
  // dit_step's solver-state inputs (issue 11: hist_x0, hist_x0_prev, hist_x; output = name + "_next").
  std::vector<std::string> state_names;
  // The samplers this folder supports: schedule.samplers plus the schedules.json sidecar's.
  std::map<std::string, SamplerRecord> samplers;
  std::string noise_default;
  std::optional<CacheRecord> cache;  // set exactly when graphs has dit_step_full and dit_step_forecast

  // Reads folder/manifest.json and validates it (files named by graphs must exist), then the
  // schedules.json sidecar when there is one (its tables and sampler records join the manifest's).
  static Manifest load(const std::string& folder);
  // Validates JSON text as the manifest of `folder` (tests use it on edited copies).
  static Manifest parse(const std::string& json_text, const std::string& folder, bool check_files = true);

  const GraphEntry& graph(const std::string& name) const;  // throws when the export lacks it
  bool has_graph(const std::string& name) const { return graphs.count(name) != 0; }
  bool has_cache() const { return cache.has_value(); }
  // The cache record; throws (one line: re-export with --max-cache-order) when the export has none.
  const CacheRecord& cache_record() const;
  size_t coef_size() const;  // K: the dit_step coef input length
  // The stored table; throws (naming the stored ones and the `schedules --add` command) when there is none.
  const ScheduleTable& schedule(const std::string& sampler, int64_t steps) const;
  std::string stored_schedules() const;  // "ddim 10,25,50; ddpm 25,50,100,250"
  // The record of a sampler; throws (naming the folder's samplers and the fix) when it has none.
  const SamplerRecord& sampler(const std::string& name) const;
  // One line per sampler, as `python -m dit_export schedules --engines DIR` prints them.
  std::string describe_samplers() const;
  std::string file_path(const std::string& name) const { return folder + "/" + name; }
};

// The record of an artifact (`rel`: its path relative to the folder, e.g. "aoti/dit_step.pt2"):
// nullopt when the artifact has no record; throws (one line) when the record is unreadable, is
// not of its schema, or its "file" is not `rel`. Files are not hashed here (verify_file does).
std::optional<AotiEntry> read_aoti_record(const Manifest& m, const std::string& graph);
std::optional<PlanRecord> read_plan_record(const Manifest& m, const std::string& rel);
std::string aoti_package_file(const std::string& graph);  // "aoti/<graph>.pt2"
// Relative paths of the plans recorded in plans/ for `graph` (any TensorRT or GPU), sorted.
std::vector<std::string> recorded_plans(const Manifest& m, const std::string& graph);
// THE path rule of manifests and artifact records (Python: manifest.rules.inside_path): a relative,
// '/'-separated path whose every part is non-empty and not hidden ("", ".", "..", ".x"), with no
// backslash, ':' (drive or stream) or NUL, at most 4096 bytes; subfolders allowed (plans/, aoti/).
// So it resolves inside the folder (symlinks are the folder's own).
bool is_inside_path(const std::string& rel);

// Existence, size, then (when `hash`) sha256 of a file the manifest records; one-line error naming it on a mismatch.
// `recorded_in` names where the size and digest come from ("the manifest", "its record").
void verify_file(const Manifest& m, const FileEntry& e, const std::string& what, bool hash = true,
                 const char* recorded_in = "the manifest");

}  // namespace dit
