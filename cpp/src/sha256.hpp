// SHA-256 through OpenSSL's EVP interface (libcrypto): the manifest records a digest of every
// file, and a multi-GB plan or package is re-hashed on every open unless verify_hashes is off.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dit {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards
  std::string hexdigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string sha256_hex(const void* data, size_t size);
// Hex digest of a whole file; throws dit::Error (DIT_ERROR_MANIFEST) when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace dit
