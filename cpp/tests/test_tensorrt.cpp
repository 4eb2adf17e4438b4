// The TensorRT backend end to end: opens DIT_TEST_TRT_ENGINES (an exported folder with plans built
// by `python -m dit_export build --backend trt` for this GPU), samples, and compares with the
// reference images of DIT_TEST_REFERENCE when it names the same folder. Skipped (exit 77) with the
// reason where TensorRT, a GPU or the folder is missing.
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dit_runtime.h"
#include "npy.hpp"
#include "testutil.hpp"

int main() {
#ifndef DIT_TEST_HAVE_TENSORRT
  t::skip("dit_runtime was built without TensorRT (CMake found no TensorRT + CUDA); configure with "
          "-DDIT_WITH_TENSORRT=ON -DTENSORRT_ROOT=... on a machine with both");
#endif
  const std::string engines = t::env("DIT_TEST_TRT_ENGINES");
  if (engines.empty())
    t::skip("DIT_TEST_TRT_ENGINES is not set (an exported folder with TensorRT plans for this GPU: "
            "python -m dit_export build --backend trt ...)");
  dit_open_options o;
  dit_open_options_init(&o);
  o.backend = DIT_BACKEND_TENSORRT;
  dit_runtime* rt = dit_open(engines.c_str(), &o);
  if (!rt) {
    const std::string err = dit_last_error();
    if (err.find("no CUDA GPU") != std::string::npos) t::skip(err);
    std::fprintf(stderr, "dit_open: %s\n", err.c_str());
    return 1;
  }
  dit_info info;
  CHECK(dit_get_info(rt, &info) == DIT_OK);
  std::printf("%s\n", info.description);
  CHECK(info.backend == DIT_BACKEND_TENSORRT);
  const int64_t labels[3] = {1, 2, 3};
  dit_sample_params p;
  dit_sample_params_init(&p);
  p.labels = labels;
  p.num_images = 3;
  p.steps = 25;
  const size_t hw = size_t(info.image_size);
  std::vector<uint8_t> a(3 * hw * hw * 3), b(a.size());
  CHECK_MSG(dit_sample(rt, &p, a.data()) == DIT_OK, dit_last_error());
  CHECK_MSG(dit_sample(rt, &p, b.data()) == DIT_OK, dit_last_error());
  CHECK(a == b);  // CUDA-graph replays are deterministic
  // Optional: compare with the Python runtime's images for the same folder and request.
  const std::string ref_path = t::env("DIT_TEST_REFERENCE");
  std::ifstream f(ref_path);
  if (f) {
    const nlohmann::json ref = nlohmann::json::parse(f);
    if (ref["engines"].get<std::string>() == engines) {
      const std::string base = ref_path.substr(0, ref_path.rfind('/') + 1);
      for (const auto& r : ref["requests"]) {
        const auto lab = r["labels"].get<std::vector<int64_t>>();
        const Npy want = read_npy(base + r["images"].get<std::string>());
        dit_sample_params q;
        dit_sample_params_init(&q);
        q.labels = lab.data();
        q.num_images = lab.size();
        q.seed = r["seed"].get<uint64_t>();
        q.cfg_scale = r["cfg_scale"].get<float>();
        q.steps = r["steps"].get<int>();
        const std::string sampler = r["sampler"].get<std::string>();
        q.sampler = sampler.c_str();
        std::vector<uint8_t> got(want.numel());
        CHECK(dit_sample(rt, &q, got.data()) == DIT_OK);
        int worst = 0;
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(int(got[i]) - int(want.as<uint8_t>()[i])));
        std::printf("TensorRT vs Python reference: max uint8 |delta| %d\n", worst);
        CHECK(worst <= 8);  // TF32/fp16 kernels: close, not bit-equal
      }
    }
  }
  dit_close(rt);
  return t::finish("test_tensorrt");
}
