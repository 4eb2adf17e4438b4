// SHA-256 (FIPS 180-4), small and dependency-free: the manifest records a digest of every file.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dit {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards
  std::string hexdigest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t used_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t size);
// Hex digest of a whole file; throws dit::Error (DIT_ERROR_MANIFEST) when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace dit
