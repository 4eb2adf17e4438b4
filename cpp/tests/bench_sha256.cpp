// Not a test: the hashing speed of dit::sha256_file (OpenSSL EVP) on one file, in MB/s
// (10^6 bytes per second), best of RUNS (the file is in the page cache after the first run).
//
//   head -c 500000000 /dev/urandom > /tmp/big.bin && cpp/build/tests/bench_sha256 /tmp/big.bin 3
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sha256.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_sha256 FILE [RUNS]\n");
    return 2;
  }
  const int runs = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  struct stat st;
  if (::stat(argv[1], &st) != 0) {
    std::perror(argv[1]);
    return 1;
  }
  double best = 1e30;
  std::string digest;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    digest = dit::sha256_file(argv[1]);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("%s  %.0f MB in %.3f s = %.0f MB/s (best of %d)\n", digest.c_str(), double(st.st_size) / 1e6, best,
              double(st.st_size) / 1e6 / best, runs);
  return 0;
}
