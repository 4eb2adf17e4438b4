// dit_sample: sample class-conditional images from an exported folder and write a PNG grid,
// the C++ twin of `python -m dit_export sample --engines DIR` (same flags, same files).
//
//   dit_sample --engines engines/s8 --classes 207 360 --steps 25 --seed 0 --out sample.png
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "dit_runtime.hpp"
#include "image_io.hpp"

namespace {

const int64_t kOfficialLabels[] = {207, 360, 387, 974, 88, 979, 417, 279};  // the official sample.py grid

const char* kUsage =
    "usage: dit_sample --engines DIR [--classes C ...] [--steps 250] [--sampler ddpm]\n"
    "                  [--cfg-scale 4] [--seed 0] [--noise philox] [--out sample.png]\n"
    "                  [--save-latents X.npy] [--save-images X.npz] [--backend auto|cpu|tensorrt|trt]\n"
    "                  [--threads N] [--device N] [--no-cuda-graph] [--no-verify] [--no-progress]\n"
    "                  [--cache-interval 1] [--cache-order 2]\n"
    "Samples one image per class id from an exported folder (python -m dit_export export, plus\n"
    "python -m dit_export aoti DIR for the CPU backend or `build --backend trt` for TensorRT) and writes\n"
    "the PNG grid that `python -m dit_export sample --engines DIR` writes for the same request.\n"
    "--sampler: any sampler the folder records, at a step count stored for it (`--engines DIR --help`\n"
    "lists them; `python -m dit_export schedules --engines DIR --add SAMPLER:STEPS` stores more).\n"
    "--threads N: CPU backend threads; default: OMP_NUM_THREADS when set, else one per free CPU\n"
    "(the CPUs this process may use minus the 1-minute load average, at least 1): oversubscribed\n"
    "threads on a busy machine run several times slower than one.\n"
    "--cache-interval N: the forecast step cache (TaylorSeer): steps 0, 1, then every N-th run the whole\n"
    "network, the others forecast its branch outputs (1 = off, the default); --cache-order O: 0 = reuse\n"
    "(FORA), 1-3 = Taylor (default 2). Needs a folder exported with the cached graphs.\n";

// The flags land in the wrapper's own option structs: their defaults are the runtime's.
struct Args {
  std::string engines, out = "sample.png", save_latents, save_images, noise = "philox";
  std::string backend = "auto";
  std::vector<int64_t> classes;
  dit::OpenOptions open;
  dit::SampleOptions sample;
  bool progress = true, help = false;
};

// --help: the usage, then (with --engines DIR) the folder's samplers and stored step counts.
[[noreturn]] void help(const Args& a) {
  std::fputs(kUsage, stdout);
  if (a.engines.empty()) {
    std::fputs("(add --engines DIR to list the samplers and step counts that folder supports)\n", stdout);
    std::exit(0);
  }
  try {
    std::printf("\nsamplers of %s (ddpm when --sampler is not given):\n", a.engines.c_str());
    const std::string text = dit::describe_samplers(a.engines);
    size_t lo = 0;
    while (lo < text.size()) {
      const size_t hi = std::min(text.find('\n', lo), text.size());
      std::printf("  %s\n", text.substr(lo, hi - lo).c_str());
      lo = hi + 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::exit(2);
  }
  std::exit(0);
}

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "%serror: %s\n", kUsage, msg.c_str());
  std::exit(2);
}

template <typename T>
T number(const std::string& flag, const char* text) {
  char* end = nullptr;
  errno = 0;
  T v;
  if constexpr (std::is_same_v<T, float>) v = std::strtof(text, &end);
  else if constexpr (std::is_same_v<T, uint64_t>) v = std::strtoull(text, &end, 10);
  else v = T(std::strtoll(text, &end, 10));
  if (!*text || *end || errno == ERANGE || (std::is_same_v<T, uint64_t> && text[0] == '-'))
    usage_error("argument " + flag + ": invalid value '" + text + "'");
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage_error("argument " + f + ": expected a value");
      return argv[++i];
    };
    if (f == "-h" || f == "--help") {
      a.help = true;
    } else if (f == "--engines") a.engines = value();
    else if (f == "--out") a.out = value();
    else if (f == "--save-latents") a.save_latents = value();
    else if (f == "--save-images") a.save_images = value();
    else if (f == "--sampler") a.sample.sampler = value();
    else if (f == "--noise") a.noise = value();
    else if (f == "--backend") a.backend = value();
    else if (f == "--steps") a.sample.steps = number<int>(f, value());
    else if (f == "--cache-interval") a.sample.cache_interval = number<int>(f, value());  // checked by the runtime
    else if (f == "--cache-order") a.sample.cache_order = number<int>(f, value());
    else if (f == "--threads") a.open.num_threads = number<int>(f, value());
    else if (f == "--device") a.open.device = number<int>(f, value());
    else if (f == "--cfg-scale") a.sample.cfg_scale = number<float>(f, value());
    else if (f == "--seed") a.sample.seed = number<uint64_t>(f, value());
    else if (f == "--no-progress") a.progress = false;
    else if (f == "--no-verify") a.open.verify_hashes = 0;
    else if (f == "--no-cuda-graph") a.open.cuda_graph = 0;
    else if (f == "--classes") {
      while (i + 1 < argc && argv[i + 1][0] != '-') a.classes.push_back(number<int64_t>(f, argv[++i]));
      if (a.classes.empty()) usage_error("argument --classes: expected at least one class id");
    } else usage_error("unrecognized argument " + f);
  }
  if (a.help) help(a);
  if (a.engines.empty()) usage_error("the following argument is required: --engines");
  // --sampler is checked by the runtime against the folder's record (no list here).
  if (a.noise == "torch") usage_error("--noise torch reproduces the official PyTorch stream and exists in Python only");
  if (a.noise != "philox") usage_error("argument --noise: choose philox");
  if (a.backend == "trt") a.backend = "tensorrt";  // the Python CLI's word
  if (a.backend != "auto" && a.backend != "cpu" && a.backend != "tensorrt")
    usage_error("argument --backend: choose auto, cpu or tensorrt (trt)");
  a.open.backend =
      a.backend == "cpu" ? DIT_BACKEND_CPU : a.backend == "tensorrt" ? DIT_BACKEND_TENSORRT : DIT_BACKEND_AUTO;
  if (a.sample.steps <= 0) usage_error("--steps must be >= 1, got " + std::to_string(a.sample.steps));
  return a;
}

struct Progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t last = -1;
};

int on_progress(void* user, int64_t done, int64_t total) {
  auto* p = static_cast<Progress*>(user);
  if (done == p->last) return 0;
  p->last = done;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - p->start).count();
  std::fprintf(stderr, "\r  step %lld/%lld  %.1f s", static_cast<long long>(done), static_cast<long long>(total), s);
  if (done == total) std::fputc('\n', stderr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    dit::Runtime rt(a.engines, a.open);
    const dit_info& info = rt.info();
    if (!info.has_vae && (!a.save_images.empty()))
      throw dit::RuntimeError(DIT_ERROR_INVALID_ARGUMENT, "--save-images needs a VAE, and this export has none");
    std::vector<int64_t> labels = a.classes;
    if (labels.empty()) {
      if (info.num_classes == 1000) labels.assign(std::begin(kOfficialLabels), std::end(kOfficialLabels));
      else
        for (int64_t c = 0; c < info.num_classes; ++c) labels.push_back(c);
    }
    std::printf("sampling %zu image(s) with %s\n", labels.size(), info.description);
    std::fflush(stdout);
    dit::SampleOptions so = a.sample;
    Progress progress;
    if (a.progress && isatty(STDERR_FILENO)) {
      so.progress_fn = on_progress;
      so.progress_user = &progress;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto [latents, images] = rt.generate(labels, so, info.has_vae != 0);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("sampled in %.2f s\n", secs);
    const size_t n = labels.size(), l = size_t(info.latent_size), hw = size_t(info.image_size);
    if (!a.save_latents.empty()) {
      dit_io::write_npy(a.save_latents, latents.data(), {n, size_t(info.latent_channels), l, l});
      std::printf("wrote latents %s (%zu, %d, %zu, %zu)\n", a.save_latents.c_str(), n, info.latent_channels, l, l);
    }
    if (!info.has_vae) {
      std::printf("no VAE in this export: latents only\n");
      return 0;
    }
    if (!a.save_images.empty()) {
      std::vector<uint8_t> u8(n * hw * hw * 3);
      dit::check(dit_images_to_uint8(images.data(), n, info.image_size, info.image_size, u8.data()));
      dit_io::write_npz_uint8(a.save_images, u8.data(), {n, hw, hw, 3});
      std::printf("wrote images %s\n", a.save_images.c_str());
    }
    size_t gh = 0, gw = 0;
    const std::vector<uint8_t> grid = dit_io::to_uint8_grid(images.data(), n, hw, hw, &gh, &gw);
    dit_io::write_png(a.out, grid.data(), gw, gh);
    std::printf("wrote grid %s\n", a.out.c_str());
  } catch (const dit::RuntimeError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.status() == DIT_ERROR_INVALID_ARGUMENT ? 2 : 1;  // a bad request: exit 2, like the Python CLI
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
