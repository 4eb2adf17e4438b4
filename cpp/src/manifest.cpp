#include "manifest.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "sha256.hpp"

namespace dit {
namespace {

using json = nlohmann::json;

enum class Kind { kStr, kInt, kNum, kBool, kObj, kArr };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kStr: return "str";
    case Kind::kInt: return "int";
    case Kind::kNum: return "float/int";
    case Kind::kBool: return "bool";
    case Kind::kObj: return "dict";
    case Kind::kArr: return "list";
  }
  return "?";
}

// The Python type name of a JSON value, so messages read like the Python reader's.
const char* json_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "NoneType";
    case json::value_t::object: return "dict";
    case json::value_t::array: return "list";
    case json::value_t::string: return "str";
    case json::value_t::boolean: return "bool";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "int";
    case json::value_t::number_float: return "float";
    default: return "binary";
  }
}

// A JSON Schema integer: 2 or 2.0 (an integral number; the Python reader's fastjsonschema agrees).
bool is_integer(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return d == static_cast<double>(static_cast<int64_t>(d)) && d > -9.2e18 && d < 9.2e18;
}

int64_t as_int(const json& v) { return v.is_number_float() ? static_cast<int64_t>(v.get<double>()) : v.get<int64_t>(); }

// "field 'precision' is 'int4', not one of fp32, fp16, int8, fp8" (the words of the Python reader's schema errors).
std::string not_one_of(const std::string& label, const std::string& value, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  return "field '" + label + "' is '" + value + "', not one of " + list;
}

bool one_of(const std::string& value, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed)
    if (value == a) return true;
  return false;
}

bool is_kind(const json& v, Kind k) {
  switch (k) {
    case Kind::kStr: return v.is_string();
    case Kind::kInt: return is_integer(v);
    case Kind::kNum: return v.is_number();
    case Kind::kBool: return v.is_boolean();
    case Kind::kObj: return v.is_object();
    case Kind::kArr: return v.is_array();
  }
  return false;
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

class Validator {
 public:
  explicit Validator(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& msg) const { throw manifest_error(where_ + ": " + msg); }

  // obj[dotted path] of the given kind; `label` is the full field name used in messages.
  const json* get(const json& obj, const std::string& path, Kind kind, const std::string& prefix = "",
                  bool optional = false) const {
    const json* cur = &obj;
    std::stringstream ss(path);
    std::string key;
    while (std::getline(ss, key, '.')) {
      if (!cur->is_object() || !cur->contains(key)) {
        if (optional) return nullptr;
        fail("missing field '" + prefix + path + "'");
      }
      cur = &(*cur)[key];
    }
    if (cur->is_null() && optional) return nullptr;
    if (!is_kind(*cur, kind))
      fail("field '" + prefix + path + "' should be " + kind_name(kind) + ", got " + json_type(*cur));
    return cur;
  }
  std::string str(const json& o, const std::string& p, const std::string& pre = "") const {
    return get(o, p, Kind::kStr, pre)->get<std::string>();
  }
  int64_t integer(const json& o, const std::string& p, const std::string& pre = "") const {
    return as_int(*get(o, p, Kind::kInt, pre));
  }
  // obj[key] is one of `allowed` (a string enum of the schema).
  std::string choice(const json& o, const std::string& p, const std::string& pre,
                     std::initializer_list<const char*> allowed) const {
    const std::string value = str(o, p, pre);
    if (!one_of(value, allowed)) fail(not_one_of(pre + p, value, allowed));
    return value;
  }
  // Keys of `o` outside `known` (the schema's additionalProperties: false).
  void only(const json& o, const std::string& label, std::initializer_list<const char*> known) const {
    for (auto& [key, _] : o.items())
      if (!one_of(key, known)) fail("unknown field '" + label + "." + key + "'");
  }

  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// {file, sha256, bytes}: `file` follows the one path rule (is_inside_path), in manifests and records alike.
FileEntry parse_file_entry(const Validator& v, const json& e, const std::string& label) {
  FileEntry f;
  f.file = v.str(e, "file", label + ".");
  if (!is_inside_path(f.file)) v.fail("field '" + label + ".file' must be a relative path inside the folder, got '" + f.file + "'");
  f.sha256 = v.str(e, "sha256", label + ".");
  if (f.sha256.size() != 64 ||
      !std::all_of(f.sha256.begin(), f.sha256.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }))
    v.fail("field '" + label + ".sha256' must be a sha256 hex digest (64 lowercase hex digits), got '" + f.sha256 + "'");
  int64_t bytes = v.integer(e, "bytes", label + ".");
  if (bytes < 0) v.fail("field '" + label + ".bytes' must be non-negative");
  f.bytes = static_cast<uint64_t>(bytes);
  return f;
}

std::vector<TensorSpec> parse_specs(const Validator& v, const json& g, const std::string& label,
                                    const std::string& side) {
  const json& items = *v.get(g, side, Kind::kArr, label + ".");
  if (items.empty()) v.fail("field '" + label + "." + side + "' is empty");
  std::vector<TensorSpec> out;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string lab = label + "." + side + "[" + std::to_string(i) + "].";
    const json& t = items[i];
    if (!t.is_object()) v.fail("field '" + label + "." + side + "[" + std::to_string(i) + "]' should be dict, got " + json_type(t));
    TensorSpec s;
    s.name = v.str(t, "name", lab);
    if (s.name.empty()) v.fail("field '" + lab + "name' is empty");
    const json& shape = *v.get(t, "shape", Kind::kArr, lab);
    for (size_t d = 0; d < shape.size(); ++d) {  // a static graph: every dimension a non-negative integer
      const std::string dim = lab + "shape[" + std::to_string(d) + "]";
      if (!is_integer(shape[d])) v.fail("field '" + dim + "' should be int, got " + json_type(shape[d]));
      s.shape.push_back(as_int(shape[d]));
      if (s.shape.back() < 0) v.fail("field '" + dim + "' must be non-negative (static graph: every dimension a non-negative integer)");
    }
    s.dtype = parse_dtype(v.choice(t, "dtype", lab, {"float32", "float16", "int64", "int32", "uint8", "bool"}));
    v.only(t, label + "." + side + "[" + std::to_string(i) + "]", {"name", "shape", "dtype"});
    out.push_back(std::move(s));
  }
  return out;
}

GraphEntry parse_graph(const Validator& v, const json& g, const std::string& label, const std::string& folder,
                       bool check_files) {
  if (!g.is_object()) v.fail("field '" + label + "' should be " + (label == "graphs.vae_decoder" ? "dict/NoneType" : "dict") + ", got " + json_type(g));
  GraphEntry e;
  e.file = parse_file_entry(v, g, label);
  const json& ext = *v.get(g, "external_data", Kind::kArr, label + ".");
  for (size_t i = 0; i < ext.size(); ++i) {
    const std::string lab = label + ".external_data[" + std::to_string(i) + "]";
    if (!ext[i].is_object()) v.fail("field '" + lab + "' should be dict, got " + json_type(ext[i]));
    e.external_data.push_back(parse_file_entry(v, ext[i], lab));
  }
  e.inputs = parse_specs(v, g, label, "inputs");
  e.outputs = parse_specs(v, g, label, "outputs");
  if (v.get(g, "precision", Kind::kStr, label + ".", true)) e.precision = v.choice(g, "precision", label + ".", {"fp32", "fp16", "int8", "fp8"});
  if (check_files) {
    std::vector<FileEntry> files = {e.file};
    files.insert(files.end(), e.external_data.begin(), e.external_data.end());
    for (const FileEntry& f : files)
      if (!file_exists(folder + "/" + f.file)) v.fail(label + " file " + f.file + " is missing from " + folder);
  }
  return e;
}

// The runtime's own contract with the step and VAE graphs (names, dtypes, shapes).
void check_io(const Validator& v, const std::string& graph, const std::vector<TensorSpec>& have,
              const std::vector<TensorSpec>& want, const char* side, const std::string& why) {
  if (have.size() != want.size()) {
    std::string names;
    for (const auto& t : want) names += (names.empty() ? "" : ", ") + t.name;
    v.fail("graphs." + graph + " has " + std::to_string(have.size()) + " " + side + ", this runtime feeds " +
           std::to_string(want.size()) + " (" + names + ")");
  }
  for (size_t i = 0; i < want.size(); ++i)
    if (!(have[i] == want[i]))
      v.fail("graphs." + graph + "." + side + "[" + std::to_string(i) + "] is " + have[i].describe() + "; " + why + " " +
             want[i].describe());
}

}  // namespace

const TensorSpec* GraphEntry::find(const std::string& name) const {
  for (const auto* side : {&inputs, &outputs})
    for (const TensorSpec& t : *side)
      if (t.name == name) return &t;
  return nullptr;
}

namespace {
void load_schedule_sidecar(Manifest& m, const std::string& manifest_text);  // the schedule section, below
}  // namespace

Manifest Manifest::load(const std::string& folder_in) {
  std::string folder = folder_in;
  while (folder.size() > 1 && folder.back() == '/') folder.pop_back();
  const std::string path = folder + "/" + kManifestFile;
  if (!dir_exists(folder))
    throw manifest_error(folder + " is not a folder (expected an exported folder with manifest.json)");
  if (!file_exists(path))
    throw manifest_error(folder + " has no manifest.json: not an exported folder (run `python -m dit_export export`)");
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f && !f.eof()) throw manifest_error("cannot read " + path);
  const std::string text = ss.str();
  Manifest m = parse(text, folder, true);
  load_schedule_sidecar(m, text);  // the tables `schedules --add` stored beside it (schedule section)
  return m;
}

// ---------------------------------------------------------------- Manifest::parse, one function per section
namespace {

json parse_json(const Validator& v, const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    throw manifest_error("cannot read " + path + ": " + what.substr(0, what.find('\n')));
  }
  if (!j.is_object()) v.fail("not a JSON object");
  return j;
}

// schema, versions
void parse_head(const Validator& v, const json& j, Manifest& m) {
  m.schema = v.str(j, "schema");
  if (m.schema.substr(0, m.schema.find('/')) != "dit_export.manifest")
    v.fail("field 'schema' is '" + m.schema + "', not a dit_export manifest");
  const std::string version = m.schema.substr(m.schema.find('/') + 1), ours = std::strchr(kManifestSchema, '/') + 1;
  const bool digits = !version.empty() && version.size() < 9 &&
                      std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits && std::stol(version) < std::stol(ours))
    v.fail(m.schema + " was exported by an older dit_export (this one reads " + kManifestSchema + "); re-export");
  if (m.schema != kManifestSchema)
    v.fail("schema '" + m.schema + "' is not supported (this one reads " + kManifestSchema + "); re-export");
  for (const char* key : {"dit_export", "torch", "onnx"}) m.versions[key] = v.str(j, std::string("versions.") + key);
  for (auto& [k, val] : v.get(j, "versions", Kind::kObj)->items()) {
    if (!val.is_string()) v.fail("field 'versions." + k + "' should be str, got " + json_type(val));
    m.versions[k] = val.get<std::string>();
  }
}

// model.*
void parse_model(const Validator& v, const json& j, Manifest& m) {
  m.model_name = v.str(j, "model.name");
  if (m.model_name.empty()) v.fail("field 'model.name' is empty");
  const json& cfg = *v.get(j, "model.config", Kind::kObj);
  for (const char* key : {"depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_classes"})
    if (v.integer(cfg, key, "model.config.") < 1) v.fail(std::string("field 'model.config.") + key + "' must be positive");
  v.get(cfg, "learn_sigma", Kind::kBool, "model.config.");
  m.num_classes = v.integer(cfg, "num_classes", "model.config.");
  m.config_input_size = v.integer(cfg, "input_size", "model.config.");
  m.config_in_channels = v.integer(cfg, "in_channels", "model.config.");
  m.config_depth = v.integer(cfg, "depth", "model.config.");
  m.config_hidden_size = v.integer(cfg, "hidden_size", "model.config.");
  m.config_patch_size = v.integer(cfg, "patch_size", "model.config.");
  m.learn_sigma = v.get(cfg, "learn_sigma", Kind::kBool, "model.config.")->get<bool>();
  m.flavor = v.choice(j, "model.flavor", "", {"official", "diffusers"});
  m.cfg_channels = v.integer(j, "model.cfg_channels");
  if (m.cfg_channels < 1) v.fail("field 'model.cfg_channels' must be positive");
  m.null_class = v.integer(j, "model.null_class");
  m.source = v.str(j, "model.source");
  v.get(j, "model.spec", Kind::kObj);  // the ModelSpec as data (the Python side reloads weights from it)
}

// image_size, latent_size, latent_channels, batch, opset, precision
void parse_sizes(const Validator& v, const json& j, Manifest& m) {
  int64_t* sizes[] = {&m.image_size, &m.latent_size, &m.latent_channels, &m.batch, &m.opset};
  const char* size_keys[] = {"image_size", "latent_size", "latent_channels", "batch", "opset"};
  for (int i = 0; i < 5; ++i) {
    *sizes[i] = v.integer(j, size_keys[i]);
    if (*sizes[i] <= 0) v.fail(std::string("field '") + size_keys[i] + "' must be positive");
  }
  m.precision = v.choice(j, "precision", "", {"fp32", "fp16", "int8", "fp8"});
}

// vae (null when exported with --vae none)
void parse_vae(const Validator& v, const json& j, Manifest& m) {
  if (!j.contains("vae")) v.fail("missing field 'vae' (null when exported with --vae none)");
  const json* vae = v.get(j, "vae", Kind::kObj, "", true);
  m.has_vae = vae != nullptr;
  if (!vae) return;
  v.str(j, "vae.source");
  m.vae_scaling_factor = v.get(j, "vae.scaling_factor", Kind::kNum)->get<double>();
  if (!(m.vae_scaling_factor > 0)) v.fail("field 'vae.scaling_factor' must be positive");
  m.vae_factor = v.integer(j, "vae.factor");
  if (m.vae_factor < 1) v.fail("field 'vae.factor' must be positive");
}

// graphs.{dit, dit_step, vae_decoder}, and the forecast cache's optional dit_step_full, dit_step_forecast
void parse_graphs(const Validator& v, const json& j, Manifest& m, bool check_files) {
  const json& graphs = *v.get(j, "graphs", Kind::kObj);
  v.only(graphs, "graphs", {"dit", "dit_step", "vae_decoder", kFullGraph, kForecastGraph});
  for (const char* name : {"dit", "dit_step", "vae_decoder"}) {
    const std::string label = std::string("graphs.") + name;
    if (!graphs.contains(name)) v.fail("missing field '" + label + "'");
    const json& g = graphs[name];
    if (g.is_null() && std::string(name) != "vae_decoder") v.fail("field '" + label + "' should be dict, got NoneType");
    if (!g.is_null()) m.graphs[name] = parse_graph(v, g, label, m.folder, check_files);
  }
  for (const char* name : {kFullGraph, kForecastGraph})  // absent when exported with --max-cache-order none
    if (graphs.contains(name)) m.graphs[name] = parse_graph(v, graphs[name], std::string("graphs.") + name, m.folder, check_files);
}

// cache (optional): the forecast step cache record, present exactly when both cached graphs are
void parse_cache(const Validator& v, const json& j, Manifest& m) {
  const bool full = m.graphs.count(kFullGraph) != 0, forecast = m.graphs.count(kForecastGraph) != 0;
  if (!j.contains("cache") && !full && !forecast) return;
  if (!j.contains("cache")) v.fail("missing field 'cache'");
  const json& c = *v.get(j, "cache", Kind::kObj);
  if (!full) v.fail(std::string("missing field 'graphs.") + kFullGraph + "'");
  if (!forecast) v.fail(std::string("missing field 'graphs.") + kForecastGraph + "'");
  for (const char* key : {"max_order", "slots", "shape", "dtype", "bytes_per_image", "schedule", "first_full"})
    if (!c.contains(key)) v.fail(std::string("missing field 'cache.") + key + "'");
  v.only(c, "cache", {"max_order", "slots", "shape", "dtype", "bytes_per_image", "schedule", "first_full"});
  CacheRecord r;
  r.max_order = v.integer(c, "max_order", "cache.");
  if (r.max_order < 0 || r.max_order > 3)
    v.fail("field 'cache.max_order' is " + std::to_string(r.max_order) + ", not one of 0, 1, 2, 3");
  r.slots = v.integer(c, "slots", "cache.");
  if (r.slots < 1) v.fail("field 'cache.slots' must be positive");
  const json& shape = *v.get(c, "shape", Kind::kArr, "cache.");
  for (size_t d = 0; d < shape.size(); ++d) {
    const std::string dim = "cache.shape[" + std::to_string(d) + "]";
    if (!is_integer(shape[d])) v.fail("field '" + dim + "' should be int, got " + json_type(shape[d]));
    r.shape.push_back(as_int(shape[d]));
    if (r.shape.back() < 1) v.fail("field '" + dim + "' must be positive");
  }
  r.dtype = parse_dtype(v.choice(c, "dtype", "cache.", {"float32", "float16"}));
  r.bytes_per_image = v.integer(c, "bytes_per_image", "cache.");
  if (r.bytes_per_image < 1) v.fail("field 'cache.bytes_per_image' must be positive");
  r.schedule = v.choice(c, "schedule", "cache.", {"taylorseer-dit"});
  r.first_full = v.integer(c, "first_full", "cache.");
  if (r.first_full < 1) v.fail("field 'cache.first_full' must be positive");
  m.cache = r;
}

std::string int_list(const std::vector<int64_t>& xs) {  // Python's list repr: [4, 2, 3]
  std::string out = "[";
  for (size_t i = 0; i < xs.size(); ++i) out += (i ? ", " : "") + std::to_string(xs[i]);
  return out + "]";
}

// (depth, 2 branches, slots, 2N rows, tokens, hidden) of the export's model and batch
std::vector<int64_t> cache_shape(const Manifest& m, int64_t slots) {
  const int64_t grid = m.config_patch_size > 0 ? m.config_input_size / m.config_patch_size : 0;
  return {m.config_depth, 2, slots, 2 * m.batch, grid * grid, m.config_hidden_size};
}

// The cache record against the model and batch, in the order and words of manifest/rules.py cache_problems.
void check_cache_record(const Validator& v, const Manifest& m) {
  if (!m.cache) return;
  const CacheRecord& c = *m.cache;
  if (c.first_full != 2)
    v.fail("field 'cache.first_full' is " + std::to_string(c.first_full) + "; the " + c.schedule +
           " schedule runs the first 2 steps in full");
  if (c.slots != c.max_order + 1)
    v.fail("field 'cache.slots' is " + std::to_string(c.slots) + "; max_order " + std::to_string(c.max_order) + " needs " +
           std::to_string(c.max_order + 1));
  const std::vector<int64_t> want = cache_shape(m, c.slots);
  if (c.shape != want)
    v.fail("field 'cache.shape' is " + int_list(c.shape) + "; depth " + std::to_string(m.config_depth) + ", batch " +
           std::to_string(m.batch) + ", patch " + std::to_string(m.config_patch_size) + " and hidden " +
           std::to_string(m.config_hidden_size) + " need " + int_list(want));
  int64_t n = 1;
  for (int64_t d : c.shape) n *= d;
  const int64_t per_image = n / m.batch * int64_t(dtype_size(c.dtype));
  if (c.bytes_per_image != per_image)
    v.fail("field 'cache.bytes_per_image' is " + std::to_string(c.bytes_per_image) + "; the shape and dtype need " +
           std::to_string(per_image));
}

// One sampler record (schedule.samplers.<name>, or samplers.<name> of the schedules sidecar): the
// Python registry's SamplerSpec.record(). Older records lack multistep / draws_noise / coefs.
SamplerRecord parse_sampler_record(const Validator& v, const std::string& name, const json& info, const std::string& lab,
                                   const std::vector<std::string>& coef_names) {
  if (!info.is_object()) v.fail("field '" + lab + "' should be an object");
  v.only(info, lab, {"kind", "spacing", "min_steps", "state", "multistep", "draws_noise", "coefs"});
  SamplerRecord r;
  r.name = name;
  r.kind = v.choice(info, "kind", lab + ".", {"ancestral", "sde", "ode"});
  v.str(info, "spacing", lab + ".");
  r.min_steps = v.integer(info, "min_steps", lab + ".");
  if (r.min_steps < 1) v.fail("field '" + lab + ".min_steps' must be >= 1");
  for (const json& pair : *v.get(info, "state", Kind::kArr, lab + ".")) {
    if (!pair.is_object()) v.fail("field '" + lab + ".state' should hold objects");
    v.only(pair, lab + ".state[]", {"input", "output"});
    const std::string in = v.str(pair, "input", lab + ".state[].");
    if (v.str(pair, "output", lab + ".state[].") != in + "_next")
      v.fail("field '" + lab + ".state[].output' must be the input's name + '_next'");
    r.state.push_back(in);
  }
  auto flag = [&](const char* key, bool absent) {
    auto it = info.find(key);
    if (it == info.end()) return absent;
    if (!it->is_boolean()) v.fail("field '" + lab + "." + key + "' should be bool, got " + json_type(*it));
    return it->get<bool>();
  };
  r.draws_noise = flag("draws_noise", r.kind != "ode");
  r.multistep = flag("multistep", !r.state.empty());
  if (const json* cols = v.get(info, "coefs", Kind::kArr, lab + ".", true)) {
    for (const json& c : *cols) {
      if (!c.is_string() || std::find(coef_names.begin(), coef_names.end(), c.get<std::string>()) == coef_names.end())
        v.fail("field '" + lab + ".coefs' names " + c.dump() + ", not one of schedule.coef_names");
      r.coefs.push_back(c.get<std::string>());
    }
  } else {
    r.coefs = coef_names;
  }
  return r;
}

// schedule.samplers (optional): the samplers this folder supports and their table layout
void parse_samplers(const Validator& v, const json& sched, Manifest& m) {
  const json* samplers = v.get(sched, "samplers", Kind::kObj, "schedule.", true);
  if (!samplers) return;
  for (auto& [sampler, info] : samplers->items())
    m.samplers[sampler] = parse_sampler_record(v, sampler, info, "schedule.samplers." + sampler, m.coef_names);
}

// {sampler: {steps: {timesteps (S,), coefs (S, K)}}} under `prefix` ("schedule.tables." in the
// manifest, "tables." in the sidecar) into `out`.
void parse_table_map(const Validator& v, const json& tables, const std::string& prefix, const Manifest& m,
                     std::map<std::string, std::map<int64_t, ScheduleTable>>& out) {
  const size_t k = m.coef_names.size();
  for (auto& [sampler, by_steps] : tables.items()) {
    if (!by_steps.is_object()) v.fail("field '" + prefix + sampler + "' should be an object");
    for (auto& [steps, t] : by_steps.items()) {
      const std::string label = prefix + sampler + "." + steps;
      if (!t.is_object()) v.fail("field '" + label + "' should be an object");
      const json& ts = *v.get(t, "timesteps", Kind::kArr, label + ".");
      const json& coefs = *v.get(t, "coefs", Kind::kArr, label + ".");
      const bool digits = !steps.empty() && steps.size() < 10 && steps[0] != '0' &&
                          std::all_of(steps.begin(), steps.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits) v.fail("field '" + prefix + sampler + "' has key '" + steps + "', not a step count >= 1");
      const int64_t s = std::stoll(steps);
      if (int64_t(ts.size()) != s || int64_t(coefs.size()) != s)
        v.fail("field '" + label + "' should hold " + steps + " timesteps and coef rows");
      ScheduleTable table;
      for (const json& tv : ts) {
        if (!tv.is_number_integer() || tv.get<int64_t>() < 0 || tv.get<int64_t>() >= m.num_train_steps)
          v.fail("field '" + label + ".timesteps' must hold integers in 0.." + std::to_string(m.num_train_steps - 1));
        table.timesteps.push_back(tv.get<int64_t>());
      }
      for (const json& row : coefs) {
        if (!row.is_array() || row.size() != k)
          v.fail("field '" + label + ".coefs' rows should have " + std::to_string(k) + " values");
        for (const json& c : row) {
          if (!c.is_number()) v.fail("field '" + label + ".coefs' should hold numbers");
          table.coefs.push_back(static_cast<float>(c.get<double>()));  // the Python runtime's float32 cast
        }
      }
      out[sampler][s] = std::move(table);
    }
  }
}

// schedule.tables: sampler -> steps -> {timesteps (S,), coefs (S, K)}
void parse_tables(const Validator& v, const json& sched, Manifest& m) {
  parse_table_map(v, *v.get(sched, "tables", Kind::kObj, "schedule."), "schedule.tables.", m, m.schedules);
}

// schedule: coef_names, num_train_steps, rule, then the samplers and their tables
void parse_schedule(const Validator& v, const json& j, Manifest& m) {
  const json& sched = *v.get(j, "schedule", Kind::kObj);
  if (v.get(sched, "coef_names", Kind::kArr, "schedule.")->empty()) v.fail("field 'schedule.coef_names' is empty");
  for (const json& n : *v.get(sched, "coef_names", Kind::kArr, "schedule.")) {
    if (!n.is_string()) v.fail("field 'schedule.coef_names' should hold strings");
    m.coef_names.push_back(n.get<std::string>());
  }
  m.num_train_steps = v.integer(sched, "num_train_steps", "schedule.");
  if (m.num_train_steps < 1) v.fail("field 'schedule.num_train_steps' must be positive");
  v.str(sched, "rule", "schedule.");
  parse_samplers(v, sched, m);
  parse_tables(v, sched, m);
}

// noise, checks
void parse_noise(const Validator& v, const json& j, Manifest& m) {
  m.noise_default = v.choice(j, "noise.default", "", {"philox", "torch"});
  v.get(j, "checks", Kind::kObj);
}

// What the schema cannot say, in the order and words of the Python reader (manifest/rules.py):
// model-level agreements, then the graphs' I/O: the step graph (its 6 inputs, then the multistep
// solvers' state) and the VAE decoder exactly, the dit graph by shape.
void check_contract(const Validator& v, Manifest& m) {
  const int64_t n = m.batch, c = m.latent_channels, l = m.latent_size, img = m.image_size;
  const int64_t k = int64_t(m.coef_names.size());
  if (m.has_vae != (m.graphs.count("vae_decoder") != 0))
    v.fail("field 'vae' and 'graphs.vae_decoder' must both be set or both null");
  if (m.config_input_size != l || m.config_in_channels != c)
    v.fail("field 'latent_size'/'latent_channels' (" + std::to_string(c) + "×" + std::to_string(l) +
           "²) disagree with model.config (" + std::to_string(m.config_in_channels) + "×" +
           std::to_string(m.config_input_size) + "²)");
  if (m.null_class != m.num_classes)
    v.fail("field 'model.null_class' is " + std::to_string(m.null_class) + ", the model has " +
           std::to_string(m.num_classes) + " classes (null = num_classes)");
  if (m.cfg_channels != 3 && m.cfg_channels != c)
    v.fail("field 'model.cfg_channels' is " + std::to_string(m.cfg_channels) + "; expected 3 or the latent channels " +
           std::to_string(c));
  const int64_t factor = m.has_vae ? m.vae_factor : 8;
  if (img != l * factor)
    v.fail("field 'image_size' " + std::to_string(img) + " is not latent_size " + std::to_string(l) + " × VAE factor " +
           std::to_string(factor));
  const std::string why = "batch " + std::to_string(n) + ", latent " + std::to_string(c) + "×" + std::to_string(l) +
                          "² and image " + std::to_string(img) + " need";
  const std::vector<int64_t> lat = {n, c, l, l};
  using D = DType;
  std::vector<TensorSpec> step_in = {{"x", lat, D::kFloat32},     {"t", {n}, D::kInt64},
                                     {"y", {n}, D::kInt64},         {"noise", lat, D::kFloat32},
                                     {"guidance", {1}, D::kFloat32}, {"coef", {k}, D::kFloat32}};
  std::vector<TensorSpec> step_out = {{"x_next", lat, D::kFloat32}};
  m.state_names.clear();
  for (const char* s : {"hist_x0", "hist_x0_prev", "hist_x"}) {  // the multistep solvers' history (issue 11)
    step_in.push_back({s, lat, D::kFloat32});
    step_out.push_back({std::string(s) + "_next", lat, D::kFloat32});
    m.state_names.push_back(s);
  }
  check_io(v, "dit_step", m.graphs["dit_step"].inputs, step_in, "inputs", why);
  check_io(v, "dit_step", m.graphs["dit_step"].outputs, step_out, "outputs", why);
  if (m.has_vae) {
    check_io(v, "vae_decoder", m.graphs["vae_decoder"].inputs, {{"latent", lat, D::kFloat32}}, "inputs", why);
    check_io(v, "vae_decoder", m.graphs["vae_decoder"].outputs, {{"image", {n, 3, img, img}, D::kFloat32}}, "outputs", why);
  }
  // the dit graph: the shapes of its 3 inputs and 1 output (names and dtypes are its own)
  const GraphEntry& dit = m.graphs["dit"];
  const int64_t out_c = m.learn_sigma ? 2 * c : c;
  const std::vector<std::vector<int64_t>> dit_shapes = {{2 * n, c, l, l}, {2 * n}, {2 * n}, {2 * n, out_c, l, l}};
  if (dit.inputs.size() == 3 && dit.outputs.size() == 1) {
    std::vector<TensorSpec> ins = dit.inputs, outs = dit.outputs;
    for (size_t i = 0; i < 3; ++i) ins[i].shape = dit_shapes[i];
    outs[0].shape = dit_shapes[3];
    check_io(v, "dit", dit.inputs, ins, "inputs", why);
    check_io(v, "dit", dit.outputs, outs, "outputs", why);
  }
  if (m.cache) {  // the cached step graphs: the step's I/O, then the cache (shape of the model and
    // max_order) and its coefficient row; the cache record's own fields after (check_cache_record)
    const std::vector<int64_t> shape = cache_shape(m, m.cache->max_order + 1);
    std::vector<TensorSpec> cached_in = step_in, full_out = step_out;
    cached_in.push_back({"cache", shape, m.cache->dtype});
    cached_in.push_back({"cache_coef", {m.cache->max_order + 1}, D::kFloat32});
    full_out.push_back({"cache_next", shape, m.cache->dtype});
    check_io(v, kFullGraph, m.graphs[kFullGraph].inputs, cached_in, "inputs", why);
    check_io(v, kFullGraph, m.graphs[kFullGraph].outputs, full_out, "outputs", why);
    check_io(v, kForecastGraph, m.graphs[kForecastGraph].inputs, cached_in, "inputs", why);
    check_io(v, kForecastGraph, m.graphs[kForecastGraph].outputs, step_out, "outputs", why);
  }
  check_cache_record(v, m);
  for (const auto& [sampler, rec] : m.samplers)
    for (const std::string& s : rec.state)
      if (std::find(m.state_names.begin(), m.state_names.end(), s) == m.state_names.end())
        v.fail("field 'schedule.samplers." + sampler + ".state' names '" + s + "', not a state input of graphs.dit_step");
}

}  // namespace

Manifest Manifest::parse(const std::string& text, const std::string& folder, bool check_files) {
  Manifest m;
  m.folder = folder;
  m.path = folder + "/" + kManifestFile;
  const Validator v(m.path);
  const json j = parse_json(v, text, m.path);
  parse_head(v, j, m);
  parse_model(v, j, m);
  parse_sizes(v, j, m);
  parse_vae(v, j, m);
  parse_graphs(v, j, m, check_files);
  parse_cache(v, j, m);
  parse_schedule(v, j, m);
  parse_noise(v, j, m);
  check_contract(v, m);
  return m;
}

namespace {
// Python: dit_export.export.manifest.rules.no_cache_message(folder, order)
std::string no_cache_message(const std::string& folder, int64_t order = 2) {
  return folder + ": this export has no forecast graphs (" + kFullGraph + ", " + kForecastGraph +
         "): re-export with --max-cache-order " + std::to_string(order) + " to sample with --cache-interval > 1";
}
}  // namespace

const GraphEntry& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end()) {
    if (name == kFullGraph || name == kForecastGraph) throw manifest_error(no_cache_message(folder));
    throw manifest_error(name == "vae_decoder" ? "this export has no VAE decoder (exported with --vae none)"
                                               : "this export has no graph '" + name + "'");
  }
  return it->second;
}

const CacheRecord& Manifest::cache_record() const {
  if (!cache) throw manifest_error(no_cache_message(folder));
  return *cache;
}

size_t CacheRecord::nbytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

size_t Manifest::coef_size() const { return coef_names.size(); }

std::string Manifest::stored_schedules() const {
  std::string out;
  for (const auto& [sampler, by] : schedules) {
    out += (out.empty() ? "" : "; ") + sampler + " ";
    bool first = true;
    for (const auto& kv : by) {
      out += (first ? "" : ",") + std::to_string(kv.first);
      first = false;
    }
  }
  return out.empty() ? "none" : out;
}

namespace {

std::string schedules_add_command(const std::string& folder, const std::string& sampler, const std::string& steps) {
  return "python -m dit_export schedules --engines " + folder + " --add " + sampler + ":" + steps;
}

// sha256 of a table: its timesteps as little-endian int64, then its rows as little-endian float32.
std::string table_digest(const ScheduleTable& t) {
  const uint16_t probe = 1;
  if (*reinterpret_cast<const uint8_t*>(&probe) != 1) throw manifest_error("schedule digests need a little-endian host");
  Sha256 h;
  h.update(t.timesteps.data(), t.timesteps.size() * sizeof(int64_t));
  h.update(t.coefs.data(), t.coefs.size() * sizeof(float));
  return h.hexdigest();
}

// folder/schedules.json: tables (and sampler records) that `schedules --add` stored, checked like the
// Python reader (dit_export.export.schedule_tables.read_sidecar): schema, the sha256 of this
// manifest.json, the coef layout, each table's sha256, then the rules of the manifest's tables.
void load_schedule_sidecar(Manifest& m, const std::string& manifest_text) {
  const std::string path = m.folder + "/" + kSchedulesFile;
  if (!file_exists(path)) return;
  const Validator v(path);
  const std::string fix =
      "delete it and add the tables again with `" + schedules_add_command(m.folder, "SAMPLER", "STEPS") + "`";
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const json j = parse_json(v, ss.str(), path);
  if (!j.contains("schema") || !j["schema"].is_string() || j["schema"].get<std::string>() != kSchedulesSchema)
    v.fail("schema is not " + std::string(kSchedulesSchema) + "; " + fix);
  if (!j.contains("manifest_sha256") || !j["manifest_sha256"].is_string() ||
      j["manifest_sha256"].get<std::string>() != sha256_hex(manifest_text.data(), manifest_text.size()))
    throw manifest_error(path + " was written for another manifest.json (the folder was re-exported): " + fix);
  std::vector<std::string> names;
  for (const json& n : *v.get(j, "coef_names", Kind::kArr)) names.push_back(n.is_string() ? n.get<std::string>() : "");
  if (names != m.coef_names) v.fail("field 'coef_names' differs from manifest.json's; " + fix);
  for (auto& [sampler, info] : v.get(j, "samplers", Kind::kObj)->items())
    if (!m.samplers.count(sampler))
      m.samplers[sampler] = parse_sampler_record(v, sampler, info, "samplers." + sampler, m.coef_names);
  const json& tables = *v.get(j, "tables", Kind::kObj);
  std::map<std::string, std::map<int64_t, ScheduleTable>> added;
  parse_table_map(v, tables, "tables.", m, added);
  for (auto& [sampler, by_steps] : added) {
    if (!m.samplers.count(sampler))
      v.fail("the " + sampler + " tables have no sampler record (neither in manifest.json nor here)");
    for (auto& [steps, table] : by_steps) {
      const std::string key = std::to_string(steps);
      const json& t = tables.at(sampler).at(key);
      if (!t.contains("sha256") || !t["sha256"].is_string() || t["sha256"].get<std::string>() != table_digest(table))
        throw manifest_error(path + ": the " + sampler + " table for " + key +
                             " steps does not match its sha256 (edited after `schedules --add`?): delete the file "
                             "and add it again with `" + schedules_add_command(m.folder, sampler, key) + "`");
      for (float c : table.coefs)
        if (!std::isfinite(c)) v.fail("field 'tables." + sampler + "." + key + ".coefs' holds a non-finite value");
      m.schedules[sampler][steps] = std::move(table);
    }
  }
  for (const auto& [sampler, rec] : m.samplers)
    for (const std::string& s : rec.state)
      if (std::find(m.state_names.begin(), m.state_names.end(), s) == m.state_names.end())
        v.fail("field 'samplers." + sampler + ".state' names '" + s + "', not a state input of graphs.dit_step");
}

}  // namespace

const SamplerRecord& Manifest::sampler(const std::string& name) const {
  auto it = samplers.find(name);
  if (it != samplers.end()) return it->second;
  std::string listed;
  for (const auto& [s, _] : samplers) listed += (listed.empty() ? "" : ", ") + s;
  throw argument_error("unknown sampler '" + name + "': " + folder + " records " + (listed.empty() ? "none" : listed) +
                       "; `" + schedules_add_command(folder, name, "STEPS") +
                       "` adds a sampler its dit_step can run (else re-export)");
}

std::string Manifest::describe_samplers() const {
  std::string out;
  for (const auto& [name, r] : samplers) {
    std::string stored;
    if (auto it = schedules.find(name); it != schedules.end())
      for (const auto& kv : it->second) stored += (stored.empty() ? "" : ",") + std::to_string(kv.first);
    out += name + ": " + r.kind + (r.multistep ? ", multistep" : "") +
           (r.draws_noise ? ", draws noise" : ", no step noise") + ", >= " + std::to_string(r.min_steps) +
           " steps; stored steps " + (stored.empty() ? "none" : stored) + "\n";
  }
  return out;
}

const ScheduleTable& Manifest::schedule(const std::string& sampler, int64_t steps) const {
  auto s = schedules.find(sampler);
  if (s != schedules.end()) {
    auto t = s->second.find(steps);
    if (t != s->second.end()) return t->second;
  }
  throw argument_error("no stored " + sampler + " table for " + std::to_string(steps) + " steps in " + folder +
                       " (stored: " + stored_schedules() + "); add it with `" +
                       schedules_add_command(folder, sampler, std::to_string(steps)) + "`");
}

void verify_file(const Manifest& m, const FileEntry& e, const std::string& what, bool hash, const char* recorded_in) {
  const std::string p = m.file_path(e.file);
  struct stat st;
  if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw manifest_error(m.folder + ": " + what + " file " + e.file + " is missing");
  if (uint64_t(st.st_size) != e.bytes)
    throw manifest_error(m.folder + ": " + e.file + " has " + std::to_string(st.st_size) + " bytes, " + recorded_in +
                         " says " + std::to_string(e.bytes) + " (stale or truncated)");
  if (hash && sha256_file(p) != e.sha256)
    throw manifest_error(m.folder + ": sha256 of " + e.file + " does not match " + recorded_in + " (file changed)");
}

bool is_inside_path(const std::string& rel) {
  if (rel.empty() || rel.size() > 4096 || rel.find_first_of(std::string("\\:\0", 3)) != std::string::npos) return false;
  size_t start = 0;
  for (;;) {
    const size_t end = rel.find('/', start);
    const std::string part = rel.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part[0] == '.') return false;  // "", ".", "..", hidden names, a leading '/'
    if (end == std::string::npos) return true;
    start = end + 1;
  }
}

namespace {

// Reads folder/<rel>.json; nullopt when absent.
std::optional<json> read_record_json(const Manifest& m, const std::string& rel, std::string* path) {
  *path = m.file_path(rel + ".json");
  if (!file_exists(*path)) return std::nullopt;
  std::ifstream f(*path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    json j = json::parse(ss.str());
    if (!j.is_object()) throw manifest_error(*path + ": not a record (a JSON object was expected)");
    return j;
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    throw manifest_error("cannot read " + *path + ": " + what.substr(0, what.find('\n')));
  }
}

void check_record_head(const Validator& v, const json& r, const char* schema, const std::string& graph,
                       const std::string& rel, FileEntry* file) {
  const std::string s = v.str(r, "schema");
  if (s != schema)
    v.fail("record schema '" + s + "' is not supported (this runtime reads " + schema + "); compile it again");
  const std::string g = v.str(r, "graph");
  if (!graph.empty() && g != graph) v.fail("the record is for graph '" + g + "', not " + graph);
  *file = parse_file_entry(v, r, "record");
  if (file->file != rel) v.fail("field 'file' is '" + file->file + "', the record sits beside " + rel);
}

}  // namespace

std::string aoti_package_file(const std::string& graph) { return "aoti/" + graph + ".pt2"; }

std::optional<AotiEntry> read_aoti_record(const Manifest& m, const std::string& graph) {
  const std::string rel = aoti_package_file(graph);
  std::string path;
  const std::optional<json> r = read_record_json(m, rel, &path);
  if (!r) return std::nullopt;
  const Validator v(path);
  AotiEntry e;
  check_record_head(v, *r, kAotiSchema, graph, rel, &e.file);
  e.graph = graph;
  e.onnx_file = v.str(*r, "onnx_file");
  e.onnx_sha256 = v.str(*r, "onnx_sha256");
  e.inputs = parse_specs(v, *r, "record", "inputs");
  e.outputs = parse_specs(v, *r, "record", "outputs");
  e.torch = v.str(*r, "torch");
  e.device = v.str(*r, "device");
  if (const json* isa = v.get(*r, "cpu_isa", Kind::kStr, "", true)) e.cpu_isa = isa->get<std::string>();
  if (const json* pr = v.get(*r, "precision", Kind::kStr, "", true)) e.precision = pr->get<std::string>();
  return e;
}

std::optional<PlanRecord> read_plan_record(const Manifest& m, const std::string& rel) {
  std::string path;
  const std::optional<json> r = read_record_json(m, rel, &path);
  if (!r) return std::nullopt;
  const Validator v(path);
  PlanRecord p;
  check_record_head(v, *r, kPlanSchema, "", rel, &p.file);
  p.graph = v.str(*r, "graph");
  p.onnx_file = v.str(*r, "onnx_file");
  p.onnx_sha256 = v.str(*r, "onnx_sha256");
  p.tensorrt = v.str(*r, "tensorrt");
  p.gpu = v.str(*r, "gpu");
  p.compute_capability = v.str(*r, "compute_capability");
  if (const json* pr = v.get(*r, "precision", Kind::kStr, "", true)) p.precision = pr->get<std::string>();
  return p;
}

std::vector<std::string> recorded_plans(const Manifest& m, const std::string& graph) {
  std::vector<std::string> out;
  DIR* d = ::opendir(m.file_path("plans").c_str());
  if (!d) return out;
  const std::string prefix = graph + ".", suffix = ".plan.json";
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > prefix.size() + suffix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back("plans/" + name.substr(0, name.size() - 5));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace dit
