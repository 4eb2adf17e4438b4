// A minimal test harness for ctest: CHECK macros count failures; exit 77 = skipped (with a reason).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace t {

inline int& failures() {
  static int n = 0;
  return n;
}

inline void fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
  ++failures();
}

[[noreturn]] inline void skip(const std::string& reason) {
  std::printf("SKIP: %s\n", reason.c_str());
  std::fflush(stdout);
  std::exit(77);
}

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace t

#define CHECK(cond)                                  \
  do {                                               \
    if (!(cond)) t::fail(__FILE__, __LINE__, #cond); \
  } while (0)

#define CHECK_MSG(cond, msg)                                                   \
  do {                                                                         \
    if (!(cond)) t::fail(__FILE__, __LINE__, std::string(#cond) + ": " + (msg)); \
  } while (0)

// Runs `expr`, expects a dit::Error whose message contains `needle`.
#define CHECK_THROWS_WITH(expr, needle)                                                                    \
  do {                                                                                                     \
    bool _threw = false;                                                                                   \
    try {                                                                                                  \
      expr;                                                                                                \
    } catch (const std::exception& _e) {                                                                   \
      _threw = true;                                                                                       \
      if (std::string(_e.what()).find(needle) == std::string::npos)                                         \
        t::fail(__FILE__, __LINE__, std::string("error '") + _e.what() + "' lacks '" + (needle) + "'");    \
    }                                                                                                      \
    if (!_threw) t::fail(__FILE__, __LINE__, std::string(#expr) + " did not throw (wanted '" + (needle) + "')"); \
  } while (0)
