// npy.h — NumPy's .npy format (version 1.0: magic, header dict, C-order little-endian data),
// written here so that any other implementation can read what hmoe computed (`hmoe logits`).
#pragma once

#include <string>

#include <torch/torch.h>

namespace hybridmoe::npy {

/// The .npy bytes of a CPU tensor of dtype float32, float64, int64 or int32 (any shape, copied
/// to C order).
std::string serialize(const torch::Tensor& t);

/// Writes serialize(t) to `path` atomically (temporary name, fsync, rename).
///
/// Example:
///   npy::save("logits.npy", logits);  // numpy.load("logits.npy") -> array of logits' shape
void save(const std::string& path, const torch::Tensor& t);

}  // namespace hybridmoe::npy
