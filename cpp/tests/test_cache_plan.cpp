// The C++ forecast-cache schedule (runtime.cpp: cache_plan, check_cache) against the shared vectors
// of tests/data/cache_plans.json, written by dit_export/sampling/cache.py (python
// tests/runtime/test_cpp_cache.py regenerates them): full-step masks exactly, coefficient rows as
// float32 bit patterns, and every error line word for word.
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime.hpp"
#include "testutil.hpp"

using json = nlohmann::json;

static uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : DIT_CACHE_PLANS;
  std::ifstream f(path);
  if (!f) t::skip("cache plan vectors not found at " + path);
  const json j = json::parse(f);
  CHECK(j["max_order"].get<int64_t>() == dit::kCacheMaxOrder);
  CHECK(j["first_full"].get<int64_t>() == dit::kCacheFirstFull);
  CHECK(j["full_graph"].get<std::string>() == dit::kFullGraph);
  CHECK(j["forecast_graph"].get<std::string>() == dit::kForecastGraph);

  int plans = 0;
  size_t values = 0;
  for (const json& c : j["plans"]) {
    const int64_t steps = c["steps"], interval = c["interval"], order = c["order"], slots = c["slots"];
    const std::string name = "plan (" + std::to_string(steps) + ", " + std::to_string(interval) + ", " +
                             std::to_string(order) + ", " + std::to_string(slots) + ")";
    const dit::CachePlan p = dit::cache_plan(steps, interval, order, slots);
    CHECK_MSG(p.full.size() == size_t(steps) && p.coefs.size() == size_t(steps * slots), name);
    const std::string& mask = c["full"].get_ref<const std::string&>();
    CHECK_MSG(mask.size() == size_t(steps), name);
    for (int64_t k = 0; k < steps && k < int64_t(mask.size()); ++k)
      CHECK_MSG(p.full[size_t(k)] == (mask[size_t(k)] == '1'), name + " full[" + std::to_string(k) + "]");
    CHECK_MSG(p.num_full() == c["num_full"].get<int64_t>(), name);
    CHECK_MSG(dit::cache_full_steps(steps, interval) == p.full, name);
    const json& rows = c["coefs_f32_bits"];
    CHECK_MSG(rows.size() == size_t(steps), name);
    for (size_t k = 0; k < rows.size() && k < size_t(steps); ++k) {
      std::istringstream words(rows[k].get<std::string>());
      for (int64_t i = 0; i < slots; ++i) {
        std::string w;
        words >> w;
        const uint32_t want = uint32_t(std::stoul(w, nullptr, 16));
        const float got = p.coefs[k * size_t(slots) + size_t(i)];
        CHECK_MSG(bits(got) == want, name + " coefs[" + std::to_string(k) + "][" + std::to_string(i) + "] = " +
                                         std::to_string(got) + ", python's bits " + w);
        ++values;
      }
    }
    ++plans;
  }
  CHECK(plans >= 8);

  int errors = 0;
  for (const json& c : j["errors"]) {
    const int64_t interval = c["interval"], order = c["order"];
    const int64_t max_order = c["max_order"].is_null() ? -1 : c["max_order"].get<int64_t>();
    const std::string want = c["message"];
    std::string got = "(no error)";
    try {
      dit::check_cache(interval, order, max_order);
    } catch (const dit::Error& e) {
      got = e.what();
      CHECK(e.status() == DIT_ERROR_INVALID_ARGUMENT);
    }
    CHECK_MSG(got == want, "check_cache(" + std::to_string(interval) + ", " + std::to_string(order) + ", " +
                               std::to_string(max_order) + "): '" + got + "', python: '" + want + "'");
    ++errors;
  }
  CHECK(errors >= 4);
  CHECK_THROWS_WITH(dit::cache_plan(10, 3, 0, 0), "cache slots 0");
  std::printf("cache plans: %d plans, %zu float32 coefficients bit-exact, %d error lines word for word\n", plans, values,
              errors);
  return t::finish("test_cache_plan");
}
