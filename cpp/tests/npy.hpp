// Reads a C-order little-endian .npy (format 1.x/2.x) of float32 or uint8: enough for references.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

struct Npy {
  std::string descr;
  std::vector<size_t> shape;
  std::vector<uint8_t> data;
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
  size_t numel() const {
    size_t n = 1;
    for (size_t d : shape) n *= d;
    return n;
  }
};

inline Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  std::string header(hlen, ' ');
  f.read(&header[0], hlen);
  Npy n;
  const size_t d = header.find("'descr': '");
  n.descr = header.substr(d + 10, header.find('\'', d + 10) - d - 10);
  if (header.find("'fortran_order': False") == std::string::npos) throw std::runtime_error(path + ": Fortran order");
  const size_t s = header.find('(', header.find("'shape'")), e = header.find(')', s);
  std::string dims = header.substr(s + 1, e - s - 1);
  size_t pos = 0;
  while (pos < dims.size()) {
    size_t next = dims.find(',', pos);
    if (next == std::string::npos) next = dims.size();
    const std::string tok = dims.substr(pos, next - pos);
    if (tok.find_first_of("0123456789") != std::string::npos) n.shape.push_back(std::stoull(tok));
    pos = next + 1;
  }
  const size_t item = n.descr == "<f4" ? 4 : n.descr == "|u1" ? 1 : 0;
  if (!item) throw std::runtime_error(path + ": dtype " + n.descr + " (want <f4 or |u1)");
  n.data.resize(n.numel() * item);
  f.read(reinterpret_cast<char*>(n.data.data()), std::streamsize(n.data.size()));
  if (!f) throw std::runtime_error(path + ": truncated");
  return n;
}
