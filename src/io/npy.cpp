// npy.cpp — see npy.h: the .npy v1.0 writer.
#include "hybridmoe/npy.h"

#include "train/checkpoint_files.h"

namespace hybridmoe::npy {

std::string serialize(const torch::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "npy: expected a CPU tensor, got one on ", t.device());
  std::string descr;
  switch (t.scalar_type()) {
    case torch::kFloat32:
      descr = "<f4";
      break;
    case torch::kFloat64:
      descr = "<f8";
      break;
    case torch::kInt64:
      descr = "<i8";
      break;
    case torch::kInt32:
      descr = "<i4";
      break;
    default:
      C10_THROW_ERROR(
          Error, c10::str("npy: expected float32, float64, int64 or int32, got ", t.scalar_type()));
  }
  // "()", "(n,)" or "(a, b, ...)", as Python writes a tuple.
  std::string shape = "(";
  for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? ", " : "") + std::to_string(t.size(d));
  shape += t.dim() == 1 ? ",)" : ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64 and
  // ended by a newline.
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string out = std::string("\x93NUMPY", 6) + std::string("\x01\x00", 2);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>((header.size() >> 8) & 0xff));
  out += header;
  const auto c = t.contiguous();
  out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

void save(const std::string& path, const torch::Tensor& t) {
  detail::write_file_durable(path, serialize(t));
}

}  // namespace hybridmoe::npy
