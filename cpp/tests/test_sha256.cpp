// SHA-256 against the FIPS 180-4 / NIST example digests, across block and chunk boundaries.
#include <cstdio>
#include <string>
#include <vector>

#include "sha256.hpp"
#include "testutil.hpp"

int main() {
  CHECK(dit::sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(dit::sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 56 bytes: padding spills
  CHECK(dit::sha256_hex(two.data(), two.size()) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(dit::sha256_hex(million.data(), million.size()) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Streaming in odd pieces gives the same digest as one call.
  dit::Sha256 h;
  for (size_t i = 0; i < million.size();) {
    const size_t n = std::min<size_t>(1 + (i * 7) % 131, million.size() - i);
    h.update(million.data() + i, n);
    i += n;
  }
  CHECK(h.hexdigest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // A file, and a missing one.
  const std::string path = "sha256_test.bin";
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite("abc", 1, 3, f);
  std::fclose(f);
  CHECK(dit::sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::remove(path.c_str());
  CHECK_THROWS_WITH(dit::sha256_file("no/such/file.bin"), "cannot read no/such/file.bin");
  return t::finish("test_sha256");
}
