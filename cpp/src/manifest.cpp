#include "manifest.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
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

bool is_kind(const json& v, Kind k) {
  switch (k) {
    case Kind::kStr: return v.is_string();
    case Kind::kInt: return v.is_number_integer();
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
    return get(o, p, Kind::kInt, pre)->get<int64_t>();
  }

  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// `subfolders`: a record's path relative to the folder (aoti/x.pt2); else a plain file name.
FileEntry parse_file_entry(const Validator& v, const json& e, const std::string& label, bool subfolders = false) {
  FileEntry f;
  f.file = v.str(e, "file", label + ".");
  if (!is_inside_path(f.file, subfolders))
    v.fail("field '" + label + ".file' must be " +
           (subfolders ? "a relative path inside the folder" : "a plain file name") + ", got '" + f.file + "'");
  f.sha256 = v.str(e, "sha256", label + ".");
  if (f.sha256.size() != 64 ||
      !std::all_of(f.sha256.begin(), f.sha256.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }))
    v.fail("field '" + label + ".sha256' is not a sha256 hex digest (64 lowercase hex digits)");
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
    for (const json& d : shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        v.fail("field '" + lab + "shape' must be a list of non-negative integers (static graph)");
      s.shape.push_back(d.get<int64_t>());
    }
    const std::string dt = v.str(t, "dtype", lab);
    try {
      s.dtype = parse_dtype(dt);
    } catch (const std::invalid_argument&) {
      v.fail("field '" + lab + "dtype' '" + dt + "' is not one of float32, float16, int64, int32, uint8, bool");
    }
    out.push_back(std::move(s));
  }
  return out;
}

GraphEntry parse_graph(const Validator& v, const json& g, const std::string& label, const std::string& folder,
                       bool check_files) {
  if (!g.is_object()) v.fail("field '" + label + "' should be an object");
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
  if (const json* p = v.get(g, "precision", Kind::kStr, label + ".", true)) {
    e.precision = p->get<std::string>();
    if (e.precision != "fp32" && e.precision != "fp16") v.fail("field '" + label + ".precision' must be fp32 or fp16");
  }
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
              const std::vector<TensorSpec>& want, const char* side) {
  if (have.size() != want.size()) {
    std::string names;
    for (const auto& t : want) names += (names.empty() ? "" : ", ") + t.name;
    v.fail("graphs." + graph + " has " + std::to_string(have.size()) + " " + side + ", this runtime feeds " +
           std::to_string(want.size()) + " (" + names + ")");
  }
  for (size_t i = 0; i < want.size(); ++i)
    if (!(have[i] == want[i]))
      v.fail("graphs." + graph + "." + side + "[" + std::to_string(i) + "] is " + have[i].describe() +
             ", this runtime expects " + want[i].describe());
}

}  // namespace

const TensorSpec* GraphEntry::find(const std::string& name) const {
  for (const auto* side : {&inputs, &outputs})
    for (const TensorSpec& t : *side)
      if (t.name == name) return &t;
  return nullptr;
}

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
  return parse(ss.str(), folder, true);
}

Manifest Manifest::parse(const std::string& text, const std::string& folder, bool check_files) {
  Manifest m;
  m.folder = folder;
  m.path = folder + "/" + kManifestFile;
  const Validator v(m.path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    throw manifest_error("cannot read " + m.path + ": " + what.substr(0, what.find('\n')));
  }
  if (!j.is_object()) v.fail("not a JSON object");

  m.schema = v.str(j, "schema");
  if (m.schema.substr(0, m.schema.find('/')) != "dit_export.manifest")
    v.fail("field 'schema' is '" + m.schema + "', not a dit_export manifest");
  if (m.schema != kManifestSchema)
    v.fail("schema '" + m.schema + "' is not supported (this runtime reads " + kManifestSchema + "); re-export");
  for (const char* key : {"dit_export", "torch", "onnx"}) m.versions[key] = v.str(j, std::string("versions.") + key);
  for (auto& [k, val] : v.get(j, "versions", Kind::kObj)->items())
    if (val.is_string()) m.versions[k] = val.get<std::string>();

  m.model_name = v.str(j, "model.name");
  if (m.model_name.empty()) v.fail("field 'model.name' is empty");
  const json& cfg = *v.get(j, "model.config", Kind::kObj);
  for (const char* key : {"depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_classes"})
    if (v.integer(cfg, key, "model.config.") < 1) v.fail(std::string("field 'model.config.") + key + "' must be positive");
  v.get(cfg, "learn_sigma", Kind::kBool, "model.config.");
  m.num_classes = v.integer(cfg, "num_classes", "model.config.");
  m.flavor = v.str(j, "model.flavor");
  if (m.flavor != "official" && m.flavor != "diffusers") v.fail("field 'model.flavor' must be official or diffusers");
  m.cfg_channels = v.integer(j, "model.cfg_channels");
  if (m.cfg_channels < 1) v.fail("field 'model.cfg_channels' must be positive");
  m.null_class = v.integer(j, "model.null_class");
  m.source = v.str(j, "model.source");
  v.get(j, "model.spec", Kind::kObj);  // the ModelSpec as data (the Python side reloads weights from it)
  int64_t* sizes[] = {&m.image_size, &m.latent_size, &m.latent_channels, &m.batch, &m.opset};
  const char* size_keys[] = {"image_size", "latent_size", "latent_channels", "batch", "opset"};
  for (int i = 0; i < 5; ++i) {
    *sizes[i] = v.integer(j, size_keys[i]);
    if (*sizes[i] <= 0) v.fail(std::string("field '") + size_keys[i] + "' must be positive");
  }
  m.precision = v.str(j, "precision");
  if (m.precision != "fp32" && m.precision != "fp16") v.fail("field 'precision' must be fp32 or fp16");
  if (!j.contains("vae")) v.fail("missing field 'vae' (null when exported with --vae none)");
  const json* vae = v.get(j, "vae", Kind::kObj, "", true);
  m.has_vae = vae != nullptr;
  if (vae) {
    v.str(j, "vae.source");
    m.vae_scaling_factor = v.get(j, "vae.scaling_factor", Kind::kNum)->get<double>();
    if (!(m.vae_scaling_factor > 0)) v.fail("field 'vae.scaling_factor' must be positive");
    m.vae_factor = v.integer(j, "vae.factor");
    if (m.vae_factor < 1) v.fail("field 'vae.factor' must be positive");
  }

  const json& graphs = *v.get(j, "graphs", Kind::kObj);
  for (auto& [name, g] : graphs.items())
    if (name != "dit" && name != "dit_step" && name != "vae_decoder")
      v.fail("unknown graph 'graphs." + name + "' (an export has dit, dit_step and vae_decoder)");
  for (const char* name : {"dit", "dit_step", "vae_decoder"}) {
    const std::string label = std::string("graphs.") + name;
    if (!graphs.contains(name)) v.fail("missing field '" + label + "'");
    const json& g = graphs[name];
    if (g.is_null()) {
      if (std::string(name) != "vae_decoder") v.fail("field '" + label + "' is null");
      if (m.has_vae) v.fail("'vae' is set but 'graphs.vae_decoder' is null");
      continue;
    }
    m.graphs[name] = parse_graph(v, g, label, folder, check_files);
  }
  if (!m.has_vae && m.graphs.count("vae_decoder")) v.fail("'graphs.vae_decoder' is set but 'vae' is null");

  const json& sched = *v.get(j, "schedule", Kind::kObj);
  if (v.get(sched, "coef_names", Kind::kArr, "schedule.")->empty()) v.fail("field 'schedule.coef_names' is empty");
  for (const json& n : *v.get(sched, "coef_names", Kind::kArr, "schedule.")) {
    if (!n.is_string()) v.fail("field 'schedule.coef_names' should hold strings");
    m.coef_names.push_back(n.get<std::string>());
  }
  m.num_train_steps = v.integer(sched, "num_train_steps", "schedule.");
  if (m.num_train_steps < 1) v.fail("field 'schedule.num_train_steps' must be positive");
  v.str(sched, "rule", "schedule.");
  if (const json* samplers = v.get(sched, "samplers", Kind::kObj, "schedule.", true)) {
    for (auto& [sampler, info] : samplers->items()) {
      const std::string lab = "schedule.samplers." + sampler;
      if (!info.is_object()) v.fail("field '" + lab + "' should be an object");
      for (auto& [key, _] : info.items())
        if (key != "kind" && key != "spacing" && key != "min_steps" && key != "state")
          v.fail("unknown field '" + lab + "." + key + "'");
      const std::string kind = v.str(info, "kind", lab + ".");
      if (kind != "ancestral" && kind != "ode") v.fail("field '" + lab + ".kind' must be ancestral or ode");
      v.str(info, "spacing", lab + ".");
      if (v.integer(info, "min_steps", lab + ".") < 1) v.fail("field '" + lab + ".min_steps' must be >= 1");
      std::vector<std::string>& names = m.sampler_state[sampler];
      for (const json& pair : *v.get(info, "state", Kind::kArr, lab + ".")) {
        if (!pair.is_object()) v.fail("field '" + lab + ".state' should hold objects");
        for (auto& [key, _] : pair.items())
          if (key != "input" && key != "output") v.fail("unknown field '" + lab + ".state[]." + key + "'");
        const std::string in = v.str(pair, "input", lab + ".state[].");
        if (v.str(pair, "output", lab + ".state[].") != in + "_next")
          v.fail("field '" + lab + ".state[].output' must be the input's name + '_next'");
        names.push_back(in);
      }
    }
  }
  const json& tables = *v.get(sched, "tables", Kind::kObj, "schedule.");
  const size_t k = m.coef_names.size();
  for (auto& [sampler, by_steps] : tables.items()) {
    if (!by_steps.is_object()) v.fail("field 'schedule.tables." + sampler + "' should be an object");
    for (auto& [steps, t] : by_steps.items()) {
      const std::string label = "schedule.tables." + sampler + "." + steps;
      if (!t.is_object()) v.fail("field '" + label + "' should be an object");
      const json& ts = *v.get(t, "timesteps", Kind::kArr, label + ".");
      const json& coefs = *v.get(t, "coefs", Kind::kArr, label + ".");
      const bool digits = !steps.empty() && steps.size() < 10 && steps[0] != '0' &&
                          std::all_of(steps.begin(), steps.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits) v.fail("field 'schedule.tables." + sampler + "' has key '" + steps + "', not a step count >= 1");
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
      m.schedules[sampler][s] = std::move(table);
    }
  }
  m.noise_default = v.str(j, "noise.default");
  if (m.noise_default != "philox" && m.noise_default != "torch") v.fail("field 'noise.default' must be philox or torch");
  v.get(j, "checks", Kind::kObj);

  // --- what this runtime relies on beyond the shared schema ---
  const int64_t n = m.batch, c = m.latent_channels, l = m.latent_size;
  const TensorSpec* coef = m.graphs["dit_step"].find("coef");
  const int64_t kk = coef && coef->shape.size() == 1 ? coef->shape[0] : int64_t(k);
  const std::vector<int64_t> lat = {n, c, l, l};
  using D = DType;
  std::vector<TensorSpec> step_in = {{"x", lat, D::kFloat32},     {"t", {n}, D::kInt64},
                                     {"y", {n}, D::kInt64},         {"noise", lat, D::kFloat32},
                                     {"guidance", {1}, D::kFloat32}, {"coef", {kk}, D::kFloat32}};
  std::vector<TensorSpec> step_out = {{"x_next", lat, D::kFloat32}};
  if (m.graphs["dit_step"].inputs.size() > step_in.size())  // the multistep solvers' history (issue 11)
    for (const char* s : {"hist_x0", "hist_x0_prev", "hist_x"}) {
      step_in.push_back({s, lat, D::kFloat32});
      step_out.push_back({std::string(s) + "_next", lat, D::kFloat32});
      m.state_names.push_back(s);
    }
  check_io(v, "dit_step", m.graphs["dit_step"].inputs, step_in, "inputs");
  check_io(v, "dit_step", m.graphs["dit_step"].outputs, step_out, "outputs");
  for (const auto& [sampler, names] : m.sampler_state)
    for (const std::string& s : names)
      if (std::find(m.state_names.begin(), m.state_names.end(), s) == m.state_names.end())
        v.fail("field 'schedule.samplers." + sampler + ".state' names '" + s + "', not a state input of graphs.dit_step");
  if (size_t(kk) != k)
    v.fail("dit_step takes coef of " + std::to_string(kk) + " values but schedule.coef_names has " + std::to_string(k));
  if (m.has_vae) {
    if (m.image_size != l * m.vae_factor)
      v.fail("image_size " + std::to_string(m.image_size) + " is not latent_size " + std::to_string(l) +
             " x vae.factor " + std::to_string(m.vae_factor));
    check_io(v, "vae_decoder", m.graphs["vae_decoder"].inputs, {{"latent", lat, D::kFloat32}}, "inputs");
    check_io(v, "vae_decoder", m.graphs["vae_decoder"].outputs,
             {{"image", {n, 3, m.image_size, m.image_size}, D::kFloat32}}, "outputs");
  }
  if (m.null_class != m.num_classes)
    v.fail("model.null_class " + std::to_string(m.null_class) + " should equal model.config.num_classes " +
           std::to_string(m.num_classes));

  return m;
}

const GraphEntry& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end())
    throw manifest_error(name == "vae_decoder" ? "this export has no VAE decoder (exported with --vae none)"
                                               : "this export has no graph '" + name + "'");
  return it->second;
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

const ScheduleTable& Manifest::schedule(const std::string& sampler, int64_t steps) const {
  auto s = schedules.find(sampler);
  if (s != schedules.end()) {
    auto t = s->second.find(steps);
    if (t != s->second.end()) return t->second;
  }
  throw argument_error("no stored " + sampler + " table for " + std::to_string(steps) + " steps in " + path +
                       " (stored: " + stored_schedules() +
                       "); pass your own schedule (dit_export.sampling.schedule.make_schedule)");
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

bool is_inside_path(const std::string& rel, bool allow_subfolders) {
  if (rel.empty() || rel.size() > 4096 || rel.find('\\') != std::string::npos || rel.find('\0') != std::string::npos)
    return false;
  size_t start = 0, parts = 0;
  for (;;) {
    const size_t end = rel.find('/', start);
    const std::string part = rel.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part[0] == '.') return false;  // "", ".", "..", hidden names, a leading '/'
    ++parts;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return allow_subfolders || parts == 1;
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
  *file = parse_file_entry(v, r, "record", true);
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
