// compare.h — dtype-keyed tolerances and tensor comparison helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hybridmoe/verify.h"

#include <string>

namespace hybridmoe::testing {

/// Relative tolerance used when comparing a computation with its reference in a dtype.
inline double tolerance(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat64:
      return 1e-10;
    case torch::kFloat32:
      return 2e-5;
    case torch::kBFloat16:
      return 2e-2;
    case torch::kFloat16:
      return 5e-3;
    default:
      return 0.0;
  }
}

/// The error measure of every float comparison (verify.h's relative_error).
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return relative_error(a, b);
}

/// Asserts same shape and rel_err(a, b) <= tol (default: the dtype's tolerance).
inline ::testing::AssertionResult close(const torch::Tensor& a, const torch::Tensor& b,
                                        double tol = -1) {
  if (!a.defined() || !b.defined())
    return ::testing::AssertionFailure()
           << "undefined tensor (a " << a.defined() << ", b " << b.defined() << ")";
  if (a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  if (tol < 0) tol = tolerance(b.scalar_type());
  const double err = rel_err(a, b);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "relative error " << err << " > " << tol;
}

/// Asserts exact equality (integer outputs: routing maps, indices, counts).
inline ::testing::AssertionResult identical(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  if (a.scalar_type() != b.scalar_type())
    return ::testing::AssertionFailure()
           << "dtype " << a.scalar_type() << " vs " << b.scalar_type();
  if (torch::equal(a, b)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "tensors differ:\n" << a << "\nvs\n" << b;
}

/// Runs fn and asserts it throws a c10::Error whose message contains `needle`.
template <typename Fn>
::testing::AssertionResult throws_with(Fn&& fn, const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << needle << "\"";
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-c10 exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw (expected \"" << needle << "\")";
}

}  // namespace hybridmoe::testing
