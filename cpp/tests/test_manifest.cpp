// manifest.json parsing and its bad inputs: missing fields, wrong types, bad shapes, hash
// mismatches, stale AOTI records, a missing TensorRT build. The base manifest is the real one of
// an exported folder when DIT_TEST_ENGINES names one (its files are linked, not copied), else a
// small manifest written here with the same schema.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "manifest.hpp"
#include "runtime.hpp"
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

// A small, valid manifest (batch 2, 4x8x8 latents, 64 px images, a ddpm table of 2 steps).
json synthetic(const std::string& dir) {
  for (const char* f : {"dit.onnx", "dit_step.onnx", "vae_decoder.onnx"}) write_text(dir + "/" + f, std::string("graph ") + f);
  auto graph = [&](const std::string& file, json inputs, json outputs) {
    json g = file_entry(dir, file);
    g["external_data"] = json::array();
    g["inputs"] = inputs;
    g["outputs"] = outputs;
    g["precision"] = "fp32";
    return g;
  };
  const std::vector<int64_t> lat = {2, 4, 8, 8};
  json coefs = json::array();
  for (int r = 0; r < 2; ++r) coefs.push_back(std::vector<double>(10, 0.5));
  return {
      {"schema", "dit_export.manifest/1"},
      {"versions", {{"dit_export", "0.1.0"}, {"torch", "2.13.0"}, {"onnx", "1.23.2"}}},
      {"model",
       {{"name", "DiT-S/8"},
        {"config",
         {{"depth", 12}, {"hidden_size", 384}, {"num_heads", 6}, {"patch_size", 8}, {"input_size", 8},
          {"in_channels", 4}, {"num_classes", 1000}, {"learn_sigma", true}}},
        {"flavor", "official"},
        {"cfg_channels", 3},
        {"null_class", 1000},
        {"source", "random weights (seed 0)"}}},
      {"image_size", 64},
      {"latent_size", 8},
      {"latent_channels", 4},
      {"vae", {{"source", "random-tiny (seed 0)"}, {"scaling_factor", 0.18215}, {"factor", 8}}},
      {"batch", 2},
      {"precision", "fp32"},
      {"opset", 18},
      {"graphs",
       {{"dit", graph("dit.onnx", {tensor("x", {4, 4, 8, 8}), tensor("t", {4}, "int64"), tensor("y", {4}, "int64")},
                      {tensor("out", {4, 8, 8, 8})})},
        {"dit_step", graph("dit_step.onnx",
                           {tensor("x", lat), tensor("t", {2}, "int64"), tensor("y", {2}, "int64"), tensor("noise", lat),
                            tensor("guidance", {1}), tensor("coef", {10})},
                           {tensor("x_next", lat)})},
        {"vae_decoder", graph("vae_decoder.onnx", {tensor("latent", lat)}, {tensor("image", {2, 3, 64, 64})})}}},
      {"schedule",
       {{"coef_names", {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}},
        {"num_train_steps", 1000},
        {"rule", "test"},
        {"tables", {{"ddpm", {{"2", {{"timesteps", {999, 0}}, {"coefs", coefs}}}}}}}}},
      {"noise", {{"default", "philox"}, {"doc", "docs/noise.md"}}},
      {"checks", json::object()},
  };
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
  std::vector<std::string> files;
  for (auto& [name, g] : m["graphs"].items())
    if (g.is_object()) files.push_back(g["file"]);
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

}  // namespace

int main() {
  char tmpl[] = "/tmp/dit_manifest_test.XXXXXX";
  if (!mkdtemp(tmpl)) t::skip("cannot create a temporary folder");
  g_dir = tmpl;
  bool real = false;
  const json base = base_manifest(g_dir, &real);
  std::printf("base manifest: %s\n", real ? "a real export (DIT_TEST_ENGINES)" : "synthetic");
  write_text(g_dir + "/manifest.json", base.dump(1));

  // The valid base loads, with its numbers.
  {
    const dit::Manifest m = dit::Manifest::load(g_dir);
    CHECK(m.batch >= 1);
    CHECK(m.coef_size() == 10);
    CHECK(m.has_graph("dit_step"));
    CHECK(m.graph("dit_step").inputs.size() == 6);
    CHECK(m.graph("dit_step").find("coef")->shape == std::vector<int64_t>{10});
    CHECK(!m.schedules.empty());
    const auto& [sampler, by_steps] = *m.schedules.begin();
    const auto& [steps, table] = *by_steps.begin();
    CHECK(int64_t(table.timesteps.size()) == steps);
    CHECK(table.coefs.size() == size_t(steps) * 10);
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

  // Missing fields.
  expect(base, [](json& m) { m.erase("schema"); }, "missing field 'schema'");
  expect(base, [](json& m) { m["versions"].erase("torch"); }, "missing field 'versions.torch'");
  expect(base, [](json& m) { m["model"]["config"].erase("depth"); }, "missing field 'model.config.depth'");
  expect(base, [](json& m) { m.erase("vae"); }, "missing field 'vae' (null when exported with --vae none)");
  expect(base, [](json& m) { m["graphs"].erase("dit_step"); }, "missing field 'graphs.dit_step'");
  expect(base, [](json& m) { m["graphs"]["dit_step"].erase("sha256"); }, "missing field 'graphs.dit_step.sha256'");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["inputs"][0].erase("dtype"); },
         "missing field 'graphs.dit_step.inputs[0].dtype'");
  expect(base, [](json& m) { m["schedule"].erase("tables"); }, "missing field 'schedule.tables'");
  expect(base, [](json& m) { m["noise"].erase("default"); }, "missing field 'noise.default'");

  // Wrong types and values.
  expect(base, [](json& m) { m["schema"] = 1; }, "field 'schema' should be str, got int");
  expect(base, [](json& m) { m["schema"] = "dit_export.manifest/2"; }, "is not supported");
  expect(base, [](json& m) { m["schema"] = "something/1"; }, "not a dit_export manifest");
  expect(base, [](json& m) { m["model"]["config"]["depth"] = "12"; }, "field 'model.config.depth' should be int, got str");
  expect(base, [](json& m) { m["model"]["config"]["learn_sigma"] = 1; }, "'model.config.learn_sigma' should be bool, got int");
  expect(base, [](json& m) { m["batch"] = 2.0; }, "field 'batch' should be int, got float");
  expect(base, [](json& m) { m["batch"] = true; }, "field 'batch' should be int, got bool");
  expect(base, [](json& m) { m["batch"] = 0; }, "field 'batch' must be positive");
  expect(base, [](json& m) { m["precision"] = "int8"; }, "field 'precision' must be fp32 or fp16");
  expect(base, [](json& m) { m["model"]["flavor"] = "mine"; }, "must be official or diffusers");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["file"] = "../dit_step.onnx"; }, "must be a plain file name");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["sha256"] = "abc"; }, "is not a sha256 hex digest");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["inputs"][0]["shape"][2] = -1; }, "non-negative integers (static graph)");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["inputs"][0]["dtype"] = "float64"; }, "is not one of float32");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["outputs"] = json::array(); }, "'graphs.dit_step.outputs' is empty");
  expect(base, [](json& m) { m["graphs"]["dit"] = nullptr; }, "field 'graphs.dit' is null");
  expect(base, [](json& m) { m["graphs"]["vae_decoder"] = nullptr; }, "'vae' is set but 'graphs.vae_decoder' is null");
  expect(base, [](json& m) { m["vae"] = nullptr; }, "'graphs.vae_decoder' is set but 'vae' is null");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["file"] = "missing.onnx"; }, "file missing.onnx is missing from");
  expect(base, [](json& m) {
    auto& tables = m["schedule"]["tables"];
    auto& first = tables.begin().value();
    first.begin().value()["timesteps"].erase(0);
  }, "timesteps and coef rows");
  expect(base, [](json& m) {
    auto& first = m["schedule"]["tables"].begin().value();
    first.begin().value()["coefs"][0].erase(0);
  }, "rows should have 10 values");
  expect(base, [](json& m) {
    auto& first = m["schedule"]["tables"].begin().value();
    first.begin().value()["timesteps"][0] = 1000;
  }, "must hold integers in 0..999");
  // This runtime's own contract with the step and VAE graphs.
  expect(base, [](json& m) { m["graphs"]["dit_step"]["inputs"][0]["dtype"] = "float16"; },
         "graphs.dit_step.inputs[0] is x float16");
  expect(base, [](json& m) { m["graphs"]["dit_step"]["inputs"][1]["name"] = "timestep"; }, "this runtime expects t int64");
  expect(base, [](json& m) { m["batch"] = m["batch"].get<int>() + 1; }, "this runtime expects x float32");
  expect(base, [](json& m) { m["image_size"] = m["image_size"].get<int>() * 2; }, "is not latent_size");
  expect(base, [](json& m) { m["model"]["null_class"] = 7; }, "model.null_class 7 should equal");
  expect(base, [](json& m) { m["aoti"] = {{"schema", "dit_export.aoti/9"}, {"torch", "2.13.0"}, {"device", "cpu"}, {"graphs", json::object()}}; },
         "aoti schema 'dit_export.aoti/9' is not supported");

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

  // Backends: the CPU one needs AOTI packages that belong to these graphs; TensorRT needs a build.
  {
    json m = base;
    m.erase("aoti");
    write_text(g_dir + "/manifest.json", m.dump());
    dit_open_options o;
    dit_open_options_init(&o);
    o.backend = DIT_BACKEND_CPU;
#ifdef DIT_TEST_HAVE_AOTI
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "no AOTInductor packages in");
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "python -m dit_export.export.aoti");
    // A stale package record (compiled for another dit_step.onnx).
    write_text(g_dir + "/dit_step.pt2", "not a package");
    write_text(g_dir + "/vae_decoder.pt2", "not a package");
    json a = {{"schema", "dit_export.aoti/1"}, {"torch", "2.13.0"}, {"device", "cpu"}, {"graphs", json::object()}};
    for (const char* g : {"dit_step", "vae_decoder"}) {
      json e = file_entry(g_dir, std::string(g) + ".pt2");
      e["onnx_sha256"] = std::string(64, 'a');
      e["inputs"] = m["graphs"][g]["inputs"];
      e["outputs"] = m["graphs"][g]["outputs"];
      a["graphs"][g] = e;
    }
    m["aoti"] = a;
    write_text(g_dir + "/manifest.json", m.dump());
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "was compiled for another");
    // Right graph hashes, but packages from another torch release.
    for (const char* g : {"dit_step", "vae_decoder"}) m["aoti"]["graphs"][g]["onnx_sha256"] = m["graphs"][g]["sha256"];
    m["aoti"]["torch"] = "1.0.0";
    write_text(g_dir + "/manifest.json", m.dump());
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "compiled with torch 1.0.0");
    // Right release, corrupted package file: the hash check catches it before LibTorch loads it.
    m["aoti"]["torch"] = "2.13.0";
    write_text(g_dir + "/manifest.json", m.dump());
    write_text(g_dir + "/dit_step.pt2", "not a packagf");
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "sha256 of dit_step.pt2 does not match");
#else
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "built without LibTorch");
#endif
    o.backend = DIT_BACKEND_TENSORRT;
#ifndef DIT_TEST_HAVE_TENSORRT
    CHECK_THROWS_WITH(dit::Runtime::open(g_dir, o), "built without TensorRT");
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
