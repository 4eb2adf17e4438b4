// manifest.json parsing and its bad inputs: missing fields, wrong types, bad shapes, hash
// mismatches, paths outside the folder, the artifact records (aoti/, plans/), stale AOTI packages,
// a missing TensorRT build. The C++ reader is held to the committed schema
// (dit_export/export/manifest/manifest.schema.json, DIT_MANIFEST_SCHEMA): every field it requires is
// required there and vice versa, and edited manifests are accepted or refused by both alike.
// The base manifest is the real one of an exported folder when DIT_TEST_ENGINES names one (its
// files are linked, not copied), else a small manifest written here with the same schema.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "manifest.hpp"
#include "runtime.hpp"
#include "schema.hpp"
#include "sha256.hpp"
#include "testutil.hpp"

using json = nlohmann::json;

namespace {

std::string g_dir;

// Replaces the file (never writes through a symlink to a real export's file).
void write_text(const std::string& path, const std::string& text) {
  ::unlink(path.c_str());
  std::ofstream f(path, std::ios::binary);
  f << text;
}

json file_entry(const std::string& dir, const std::string& name) {
  std::ifstream f(dir + "/" + name, std::ios::binary | std::ios::ate);
  return {{"file", name}, {"sha256", dit::sha256_file(dir + "/" + name)}, {"bytes", int64_t(f.tellg())}};
}

json tensor(const std::string& name, std::vector<int64_t> shape, const std::string& dtype = "float32") {
  return {{"name", name}, {"shape", shape}, {"dtype", dtype}};
}

// The corpus base (tests/data/bad_manifests/base.json: batch 2, 4x8x8 latents, 64 px images, a
// ddpm table of 2 steps) with its three graph files written here, so the files and hashes agree.
json synthetic(const std::string& dir) {
  std::ifstream f(std::string(DIT_BAD_MANIFESTS) + "/base.json");
  json m = json::parse(f);
  for (const char* g : {"dit", "dit_step", "vae_decoder"}) {
    const std::string file = std::string(g) + ".onnx";
    write_text(dir + "/" + file, std::string("graph ") + file);
    const json entry = file_entry(dir, file);
    for (auto& [key, value] : entry.items()) m["graphs"][g][key] = value;
  }
  return m;
}

// The base: a real export's manifest with its files linked in, or the synthetic one.
json base_manifest(const std::string& dir, bool* real) {
  const std::string engines = t::env("DIT_TEST_ENGINES");
  *real = false;
  if (engines.empty()) return synthetic(dir);
  std::ifstream f(engines + "/manifest.json");
  if (!f) return synthetic(dir);
  json m = json::parse(f);
  m.erase("aoti");  // the packages are not linked in: the AOTI cases below write their own files
  std::set<std::string> files;  // a set: one external-data file may hold the weights of several graphs
  for (auto& [name, g] : m["graphs"].items())
    if (g.is_object()) {
      files.insert(g["file"].get<std::string>());
      for (const json& x : g["external_data"]) files.insert(x["file"].get<std::string>());
    }
  for (const std::string& file : files) {
    const std::string src = engines + "/" + file;
    char resolved[4096];
    if (!realpath(src.c_str(), resolved) || symlink(resolved, (dir + "/" + file).c_str()) != 0) return synthetic(dir);
  }
  *real = true;
  return m;
}

std::string parse_error(const json& m, bool check_files = true) {
  try {
    dit::Manifest::parse(m.dump(), g_dir, check_files);
  } catch (const dit::Error& e) {
    CHECK(e.status() == DIT_ERROR_MANIFEST || e.status() == DIT_ERROR_INVALID_ARGUMENT);
    return e.what();
  }
  return "";
}

void expect(const json& base, const std::function<void(json&)>& edit, const std::string& needle) {
  json m = base;
  edit(m);
  const std::string err = parse_error(m);
  CHECK_MSG(!err.empty() && err.find(needle) != std::string::npos,
            "wanted an error with '" + needle + "', got '" + err + "'");
  if (!err.empty()) CHECK_MSG(err.find('\n') == std::string::npos, "one line: " + err);
}

json g_schema;

// Like expect(), and the committed schema refuses the edit too (a schema-level rule).
void expect_both(const json& base, const std::function<void(json&)>& edit, const std::string& needle) {
  expect(base, edit, needle);
  json m = base;
  edit(m);
  CHECK_MSG(!schema::check(g_schema, m).empty(), "the schema accepts what the C++ reader refuses ('" + needle + "')");
}

// Every member of an object, recursively (array elements that are objects included), as JSON pointers.
void member_paths(const json& v, const json::json_pointer& at, std::vector<json::json_pointer>* out) {
  if (v.is_object()) {
    for (auto& [k, x] : v.items()) {
      out->push_back(at / k);
      member_paths(x, at / k, out);
    }
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i].is_object()) {
        out->push_back(at / i);
        member_paths(v[i], at / i, out);
      }
  }
}

json wrong_type(const json& v) {
  if (v.is_string() || v.is_null()) return 7;
  return "x";
}

// The base with one stored table per sampler, its shortest. The agreement below removes and retypes
// every field, each case a copy of the whole manifest written out and read back, and the ~25 tables
// of a real export repeat one layout: all of them took ~19 s, one per sampler well under 1 s.
json one_table_per_sampler(json m) {
  if (!m.contains("schedule") || !m["schedule"].contains("tables") || !m["schedule"]["tables"].is_object()) return m;
  for (auto& [sampler, by_steps] : m["schedule"]["tables"].items()) {
    if (!by_steps.is_object() || by_steps.size() < 2) continue;
    std::string keep;
    long fewest = 0;
    for (auto& [steps, table] : by_steps.items()) {
      const long n = std::strtol(steps.c_str(), nullptr, 10);
      if (keep.empty() || n < fewest) {
        keep = steps;
        fewest = n;
      }
    }
    json one = json::object();
    one[keep] = by_steps[keep];
    by_steps = std::move(one);
  }
  return m;
}

// The C++ reader and the committed schema agree: on the base, on every field removed (the
// reader requires exactly what the schema requires) and on every field given a wrong type.
void schema_agreement(const json& base) {
  const std::string base_err = schema::check(g_schema, base);
  CHECK_MSG(base_err.empty(), "the schema refuses the base manifest: " + base_err);
  CHECK(parse_error(base).empty());
  std::vector<json::json_pointer> paths;
  member_paths(base, json::json_pointer(), &paths);
  std::set<std::string> required;  // by the C++ reader
  size_t removed = 0, retyped = 0;
  for (const auto& p : paths) {
    if (!base.at(p.parent_pointer()).is_object()) continue;  // array elements are not removable fields
    json m = base;
    m.at(p.parent_pointer()).erase(p.back());
    const std::string serr = schema::check(g_schema, m), cerr = parse_error(m);
    ++removed;
    if (!cerr.empty()) required.insert(p.to_string());
    CHECK_MSG(serr.empty() == cerr.empty(), "without " + p.to_string() + ": the schema " +
                                                (serr.empty() ? "accepts" : "refuses (" + serr + ")") + ", the C++ reader " +
                                                (cerr.empty() ? "accepts" : "refuses (" + cerr + ")"));
  }
  for (const auto& p : paths) {
    json m = base;
    m.at(p) = wrong_type(m.at(p));
    const std::string serr = schema::check(g_schema, m), cerr = parse_error(m);
    ++retyped;
    // Never stricter than the schema; as strict on every field it requires (and their elements).
    if (serr.empty()) CHECK_MSG(cerr.empty(), p.to_string() + " retyped: the schema accepts, the C++ reader refuses (" + cerr + ")");
    const json::json_pointer parent = p.parent_pointer();
    const bool needed = required.count(p.to_string()) ||
                        (base.at(parent).is_array() && required.count(parent.to_string()));
    if (!serr.empty() && needed)
      CHECK_MSG(!cerr.empty(), p.to_string() + " retyped: the schema refuses (" + serr + "), the C++ reader accepts");
  }
  std::printf("schema agreement: %zu fields removed, %zu retyped; the C++ reader requires %zu of them\n", removed, retyped,
              required.size());
}

// Every case of the shared corpus (tests/data/bad_manifests/, also run by tests/export/test_manifest.py):
// the base with the case's JSON Patch applied is refused with exactly its one line (or its needles),
// or accepted when its error is null. Files are not checked: the corpus is about the manifest itself.
void run_corpus() {
  const std::string dir = DIT_BAD_MANIFESTS;
  std::ifstream bf(dir + "/base.json");
  const json base = json::parse(bf);
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0 && name != "base.json") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  CHECK_MSG(names.size() >= 40, "the corpus has " + std::to_string(names.size()) + " cases");
  const std::string prefix = g_dir + "/manifest.json: ";
  for (const std::string& name : names) {
    std::ifstream cf(dir + "/" + name);
    const json spec = json::parse(cf);
    const json m = base.patch(spec["patch"]);
    std::string err;
    try {
      dit::Manifest::parse(m.dump(), g_dir, false);
    } catch (const dit::Error& e) {
      err = e.what();
    }
    if (spec.contains("error") && spec["error"].is_null()) {
      CHECK_MSG(err.empty(), name + ": refused (" + err + "), the corpus says it loads");
      continue;
    }
    CHECK_MSG(err.rfind(prefix, 0) == 0 && err.find('\n') == std::string::npos, name + ": '" + err + "'");
    const std::string text = err.rfind(prefix, 0) == 0 ? err.substr(prefix.size()) : err;
    if (spec.contains("error"))
      CHECK_MSG(text == spec["error"].get<std::string>(), name + ": got '" + text + "', the corpus says '" +
                                                               spec["error"].get<std::string>() + "'");
    for (const json& needle : spec.value("needles", json::array()))
      CHECK_MSG(text.find(needle.get<std::string>()) != std::string::npos,
                name + ": got '" + text + "', wanted '" + needle.get<std::string>() + "'");
  }
  std::printf("bad-manifest corpus: %zu cases\n", names.size());
}

}  // namespace

int main() {
  char tmpl[] = "/tmp/dit_manifest_test.XXXXXX";
  if (!mkdtemp(tmpl)) t::skip("cannot create a temporary folder");
  g_dir = tmpl;
  bool real = false;
  const json base = base_manifest(g_dir, &real);
  std::printf("base manifest: %s\n", real ? "a real export (DIT_TEST_ENGINES)" : "synthetic");
  write_text(g_dir + "/manifest.json", base.dump(1));
  {
    std::ifstream sf(DIT_MANIFEST_SCHEMA);
    if (!sf) {
      std::fprintf(stderr, "cannot read the committed schema %s\n", DIT_MANIFEST_SCHEMA);
      return 1;
    }
    g_schema = json::parse(sf);
    CHECK(g_schema["title"] == dit::kManifestSchema);  // the schema version this reader reads
  }
  schema_agreement(one_table_per_sampler(base));
  run_corpus();
  const size_t k = base["schedule"]["coef_names"].size();  // the coef input length (grows with the step graph)

  // The valid base loads, with its numbers.
  {
    const dit::Manifest m = dit::Manifest::load(g_dir);
    CHECK(m.batch >= 1);
    CHECK(k >= 1 && m.coef_size() == k);
    CHECK(m.has_graph("dit_step"));
    // 6 step inputs, then the multistep solvers' state (issue 11) when the export has it
    CHECK(m.graph("dit_step").inputs.size() == 6 + m.state_names.size());
    CHECK(m.state_names.empty() || m.state_names == (std::vector<std::string>{"hist_x0", "hist_x0_prev", "hist_x"}));
    CHECK(m.graph("dit_step").outputs.size() == 1 + m.state_names.size());
    CHECK(m.graph("dit_step").find("coef")->shape == std::vector<int64_t>{int64_t(k)});
    CHECK(!m.schedules.empty());
    const auto& [sampler, by_steps] = *m.schedules.begin();
    const auto& [steps, table] = *by_steps.begin();
    CHECK(int64_t(table.timesteps.size()) == steps);
    CHECK(table.coefs.size() == size_t(steps) * k);
    CHECK(&m.schedule(sampler, steps) == &table);
    CHECK_THROWS_WITH(m.schedule("ddpm", 7), "no stored ddpm table for 7 steps");
    CHECK_THROWS_WITH(m.schedule("ddpm", 7), "(stored: ");
    for (const auto& [g, e] : m.graphs) dit::verify_file(m, e.file, "graph");  // hashes agree
  }

  // Folder-level errors.
  CHECK_THROWS_WITH(dit::Manifest::load(g_dir + "/nope"), "is not a folder");
  {
    const std::string empty = g_dir + "/empty";
    mkdir(empty.c_str(), 0700);
    CHECK_THROWS_WITH(dit::Manifest::load(empty), "has no manifest.json");
  }
  CHECK_THROWS_WITH(dit::Manifest::parse("{\"schema\": ", g_dir), "cannot read");
  CHECK_THROWS_WITH(dit::Manifest::parse("[1, 2]", g_dir), "not a JSON object");
  CHECK_THROWS_WITH(dit::Manifest::parse("{\"a\": NaN}", g_dir), "cannot read");

  // The faults of the shared corpus ran above (run_corpus, without files). Here: the files, and the
  // committed schema refusing what the reader refuses on a few schema-level faults.
  expect(base, [](json& m) { m["graphs"]["dit_step"]["file"] = "missing.onnx"; }, "file missing.onnx is missing from");
  // subfolders are inside the folder (the one path rule): this one is merely missing
  expect(base, [](json& m) { m["graphs"]["dit_step"]["file"] = "sub/dit_step.onnx"; }, "file sub/dit_step.onnx is missing from");
  expect_both(base, [](json& m) { m.erase("schema"); }, "missing field 'schema'");
  expect_both(base, [](json& m) { m["graphs"]["dit_step"]["file"] = "../dit_step.onnx"; },
              "field 'graphs.dit_step.file' must be a relative path inside the folder, got '../dit_step.onnx'");
  expect_both(base, [](json& m) { m["graphs"]["dit"]["inputs"][0]["extra"] = 1; }, "unknown field 'graphs.dit.inputs[0].extra'");
  expect_both(base, [](json& m) { m["batch"] = 2.5; }, "field 'batch' should be int, got float");
  expect_both(base, [](json& m) { m["precision"] = "int4"; }, "field 'precision' is 'int4', not one of fp32, fp16, int8, fp8");

  // Hash and size mismatches of a graph file (same size, one byte changed; then truncated).
  {
    const dit::Manifest m = dit::Manifest::load(g_dir);
    const std::string victim = g_dir + "/corrupt.bin";
    write_text(victim, "0123456789");
    dit::FileEntry e{"corrupt.bin", dit::sha256_file(victim), 10};
    dit::verify_file(m, e, "graph");
    write_text(victim, "0123456780");
    CHECK_THROWS_WITH(dit::verify_file(m, e, "graph"), "sha256 of corrupt.bin does not match the manifest");
    dit::verify_file(m, e, "graph", false);  // size only
    write_text(victim, "01234");
    CHECK_THROWS_WITH(dit::verify_file(m, e, "graph"), "has 5 bytes, the manifest says 10");
    std::remove(victim.c_str());
    CHECK_THROWS_WITH(dit::verify_file(m, e, "graph"), "graph file corrupt.bin is missing");
  }

  // The CPU backend's default thread count: one per free CPU, OMP_NUM_THREADS when set.
  CHECK(dit::free_cpus(2, 1.9) == 1 && dit::free_cpus(2, 0.4) == 2 && dit::free_cpus(2, 7.0) == 1);
  CHECK(dit::free_cpus(16, 3.5) == 12 && dit::free_cpus(4, -1.0) == 4 && dit::free_cpus(0, 0.0) == 1);
  {
    const char* omp = std::getenv("OMP_NUM_THREADS");
    const std::string saved = omp ? omp : "";
    ::unsetenv("OMP_NUM_THREADS");
    const int d = dit::default_threads();
    std::printf("default threads here: %d of %d usable CPUs\n", d, dit::usable_cpus());
    CHECK(d >= 1 && d <= dit::usable_cpus());
    ::setenv("OMP_NUM_THREADS", "3", 1);
    CHECK(dit::default_threads() == 3);
    ::setenv("OMP_NUM_THREADS", "zero", 1);
    CHECK(dit::default_threads() >= 1 && dit::default_threads() <= dit::usable_cpus());
    if (omp) ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
    else ::unsetenv("OMP_NUM_THREADS");
  }

  // Paths a manifest or record may name: the one rule (tests/data/bad_manifests/path-*.json too).
  for (const char* ok : {"dit.onnx", "aoti/dit_step.pt2", "plans/dit_step.trt10.13.sm90.plan", "a b.onnx"})
    CHECK_MSG(dit::is_inside_path(ok), ok);
  for (const char* bad : {"", "/etc/passwd", "../x", "aoti/../../x", "a//b", "./a", "a/", "a\\b", ".hidden", "aoti/.x", "C:x"})
    CHECK_MSG(!dit::is_inside_path(bad), bad);
  CHECK(!dit::is_inside_path(std::string("a\0b", 3)));
  CHECK(!dit::is_inside_path(std::string(5000, 'a')));

  // Artifact records: aoti/<graph>.pt2.json and plans/<plan>.json beside their files.
  json m = base;
  write_text(g_dir + "/manifest.json", m.dump());
  mkdir((g_dir + "/aoti").c_str(), 0700);
  mkdir((g_dir + "/plans").c_str(), 0700);
  const dit::Manifest loaded = dit::Manifest::load(g_dir);
  auto aoti_record = [&](const std::string& g) {
    json e = file_entry(g_dir, "aoti/" + g + ".pt2");
    e["schema"] = "dit_export.aoti/2";
    e["graph"] = g;
    e["onnx_file"] = m["graphs"][g]["file"];
    e["onnx_sha256"] = m["graphs"][g]["sha256"];
    e["inputs"] = m["graphs"][g]["inputs"];
    e["outputs"] = m["graphs"][g]["outputs"];
    e["torch"] = "2.13.0";
    e["device"] = "cpu";
    e["precision"] = "fp32";
    e["cpu_isa"] = "avx2";
    return e;
  };
  auto write_record = [&](const std::string& rel, const json& r) { write_text(g_dir + "/" + rel + ".json", r.dump()); };
  for (const char* g : {"dit_step", "vae_decoder"}) write_text(g_dir + "/aoti/" + g + ".pt2", "not a package");
  CHECK(!dit::read_aoti_record(loaded, "dit_step"));  // no record yet
  write_record("aoti/dit_step.pt2", aoti_record("dit_step"));
  {
    const auto r = dit::read_aoti_record(loaded, "dit_step");
    CHECK(r && r->file.file == "aoti/dit_step.pt2" && r->torch == "2.13.0" && r->device == "cpu" && r->cpu_isa == "avx2");
    CHECK(r && r->inputs == loaded.graph("dit_step").inputs);
    if (r) dit::verify_file(loaded, r->file, "AOTI package", true, "its record");
  }
  auto record_error = [&](const std::function<void(json&)>& edit, const std::string& needle) {
    json r = aoti_record("dit_step");
    edit(r);
    write_record("aoti/dit_step.pt2", r);
    CHECK_THROWS_WITH(dit::read_aoti_record(loaded, "dit_step"), needle);
  };
  record_error([](json& r) { r["schema"] = "dit_export.aoti/1"; }, "record schema 'dit_export.aoti/1' is not supported");
  record_error([](json& r) { r["file"] = "aoti/vae_decoder.pt2"; }, "the record sits beside aoti/dit_step.pt2");
  record_error([](json& r) { r["file"] = "../../etc/passwd"; }, "must be a relative path inside the folder");
  record_error([](json& r) { r["file"] = "/etc/passwd"; }, "must be a relative path inside the folder");
  record_error([](json& r) { r["graph"] = "vae_decoder"; }, "the record is for graph 'vae_decoder'");
  record_error([](json& r) { r.erase("onnx_sha256"); }, "missing field 'onnx_sha256'");
  record_error([](json& r) { r["inputs"][0]["shape"] = "x"; }, "should be list, got str");
  write_text(g_dir + "/aoti/dit_step.pt2.json", "{\"schema\": ");
  CHECK_THROWS_WITH(dit::read_aoti_record(loaded, "dit_step"), "cannot read");
  write_text(g_dir + "/aoti/dit_step.pt2.json", "[]");
  CHECK_THROWS_WITH(dit::read_aoti_record(loaded, "dit_step"), "not a record");
  // Plans: the record of the one for this TensorRT and GPU; the others are listed in messages.
  for (const char* name : {"dit_step.trt10.13.sm90.plan", "dit_step.trt11.1.sm90.plan", "vae_decoder.trt10.13.sm90.plan"}) {
    const std::string rel = std::string("plans/") + name;
    write_text(g_dir + "/" + rel, "plan bytes");
    json r = file_entry(g_dir, rel);
    r["schema"] = "dit_export.plan/1";
    r["graph"] = std::string(name).substr(0, std::string(name).find('.'));
    r["onnx_file"] = m["graphs"][r["graph"].get<std::string>()]["file"];
    r["onnx_sha256"] = m["graphs"][r["graph"].get<std::string>()]["sha256"];
    r["tensorrt"] = "10.13.0.35";
    r["gpu"] = "NVIDIA H100 80GB HBM3";
    r["compute_capability"] = "9.0";
    r["precision"] = "fp32";
    write_record(rel, r);
  }
  CHECK((dit::recorded_plans(loaded, "dit_step") ==
         std::vector<std::string>{"plans/dit_step.trt10.13.sm90.plan", "plans/dit_step.trt11.1.sm90.plan"}));
  {
    const auto r = dit::read_plan_record(loaded, "plans/dit_step.trt10.13.sm90.plan");
    CHECK(r && r->graph == "dit_step" && r->compute_capability == "9.0" && r->tensorrt == "10.13.0.35");
    if (r) dit::verify_file(loaded, r->file, "TensorRT plan", true, "its record");
    CHECK(!dit::read_plan_record(loaded, "plans/dit_step.trt10.13.sm80.plan"));
    write_text(g_dir + "/plans/dit_step.trt10.13.sm90.plan", "plan bytez");
    CHECK_THROWS_WITH(dit::verify_file(loaded, r->file, "TensorRT plan", true, "its record"),
                      "sha256 of plans/dit_step.trt10.13.sm90.plan does not match its record");
  }

  // Backends: the CPU one needs AOTI packages (with records) that belong to these graphs; TensorRT needs a build.
  {
    write_text(g_dir + "/manifest.json", m.dump());
    ::unlink((g_dir + "/aoti/dit_step.pt2.json").c_str());
    dit_open_options o;
    dit_open_options_init(&o);
    o.backend = DIT_BACKEND_CPU;
#ifdef DIT_TEST_HAVE_AOTI
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "no AOTInductor package aoti/dit_step.pt2");
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "python -m dit_export aoti");
    // A stale package record (compiled for another dit_step.onnx).
    for (const char* g : {"dit_step", "vae_decoder"}) {
      json r = aoti_record(g);
      r["onnx_sha256"] = std::string(64, 'a');
      write_record(std::string("aoti/") + g + ".pt2", r);
    }
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "was compiled for another");
    // Right graph hashes, but packages from another torch release, or for another device.
    for (const char* g : {"dit_step", "vae_decoder"}) {
      json r = aoti_record(g);
      r["torch"] = "1.0.0";
      write_record(std::string("aoti/") + g + ".pt2", r);
    }
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "compiled with torch 1.0.0");
    {
      json r = aoti_record("dit_step");
      r["device"] = "cuda";
      write_record("aoti/dit_step.pt2", r);
      CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "was compiled for 'cuda'");
    }
    // Right release, corrupted package file: the hash check catches it before LibTorch loads it.
    for (const char* g : {"dit_step", "vae_decoder"}) write_record(std::string("aoti/") + g + ".pt2", aoti_record(g));
    write_text(g_dir + "/aoti/dit_step.pt2", "not a packagf");
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "sha256 of aoti/dit_step.pt2 does not match its record");
#else
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "built without LibTorch");
#endif
    o.backend = DIT_BACKEND_TENSORRT;
#ifndef DIT_TEST_HAVE_TENSORRT
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "built without TensorRT");
#else
    // Built with TensorRT: this folder's plans are for another GPU (or there is no GPU): one line.
    try {
      dit::Runtime::open(g_dir, o);
      CHECK_MSG(false, "a TensorRT open of a folder without plans for this GPU succeeded");
    } catch (const dit::Error& e) {
      const std::string what = e.what();
      std::printf("TensorRT open without a plan: %s\n", what.c_str());
      CHECK_MSG(what.find("no CUDA GPU") != std::string::npos || what.find("no dit_step engine for") != std::string::npos ||
                    what.find("CUDA device") != std::string::npos,
                what);
      CHECK(what.find('\n') == std::string::npos);
    }
#endif
    // Through the C API: NULL handle, a status, a one-line message.
    dit_open_options c;
    dit_open_options_init(&c);
    c.backend = DIT_BACKEND_TENSORRT;
    CHECK(dit_open((g_dir + "/nope").c_str(), &c) == nullptr);
    CHECK(dit_last_status() == DIT_ERROR_MANIFEST);
    CHECK(std::string(dit_last_error()).find("is not a folder") != std::string::npos);
  }

  std::string cmd = "rm -rf '" + g_dir + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", g_dir.c_str());
  return t::finish("test_manifest");
}
