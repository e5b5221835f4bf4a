// safetensors_test.cpp — the .safetensors reader and writer: a file written by hand from the
// format's description read back, round trips of every dtype (mapped and in memory), each
// malformed header refused by name, a fuzz of mutated and truncated headers (no crash, no read
// outside the file: run it under `make asan` too), and the writer's atomicity and refusals.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hybridmoe/safetensors.h"
#include "support/compare.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
using testing::throws_with;

// A file's bytes from a header text and data bytes: the 8-byte little-endian length first.
std::string file_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string floats(std::initializer_list<float> values) {
  std::string out(values.size() * 4, '\0');
  size_t i = 0;
  for (float v : values) std::memcpy(out.data() + 4 * i++, &v, 4);
  return out;
}

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("hmoe_st_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(Safetensors, ReadsAFileWrittenFromTheFormatsDescription) {
  const std::string header =
      R"({"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}})";
  int64_t seven = 7;
  std::string data = floats({1.5f, -2.0f}) + std::string(reinterpret_cast<char*>(&seven), 8);
  auto f = st::File::from_bytes(file_bytes(header, data), "hand.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "a");  // in the order of their data
  EXPECT_EQ(f.metadata().at("format"), "pt");
  auto a = f.get("a");
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(a[0].item<float>(), 1.5f);
  EXPECT_EQ(a[1].item<float>(), -2.0f);
  auto b = f.get("b");
  EXPECT_EQ(b.dim(), 0);
  EXPECT_EQ(b.item<int64_t>(), 7);
  EXPECT_TRUE(throws_with([&] { f.get("c"); }, "holds no tensor \"c\""));
}

std::vector<std::pair<std::string, torch::Tensor>> every_dtype() {
  torch::manual_seed(3);
  return {{"f32", torch::randn({3, 5})},
          {"f16", torch::randn({4}).to(torch::kFloat16)},
          {"bf16", torch::randn({2, 3}).to(torch::kBFloat16)},
          {"f64", torch::randn({2, 2, 2}, torch::kFloat64)},
          {"i64", torch::arange(-3, 4, torch::kInt64)},
          {"i32", torch::arange(5, torch::kInt32).view({5, 1})},
          {"u8", torch::arange(250, 256, torch::kUInt8)},
          {"bool", torch::tensor({true, false, true})},
          {"scalar", torch::tensor(2.5)},
          {"empty", torch::zeros({0, 4})},
          {"strided", torch::randn({4, 6}).t()}};
}

TEST(Safetensors, EveryDtypeRoundTripsMappedAndInMemory) {
  const auto tensors = every_dtype();
  const auto dir = temp_dir("round");
  const auto path = (dir / "m.safetensors").string();
  st::save(path, tensors, {{"note", "hmoe"}});
  for (const auto& f :
       {st::File::open(path),
        st::File::from_bytes(st::serialize(tensors, {{"note", "hmoe"}}), "memory")}) {
    EXPECT_EQ(f.metadata().at("note"), "hmoe");
    ASSERT_EQ(f.tensors().size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      auto got = f.get(name);
      EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
      EXPECT_EQ(got.sizes(), t.sizes()) << name;
      EXPECT_TRUE(torch::equal(got, t)) << name;  // bit-exact
    }
  }
  // A mapped tensor is a view of the file, not a copy: two gets share their storage.
  auto f = st::File::open(path);
  EXPECT_EQ(f.get("f64").data_ptr(), f.get("f64").data_ptr());
  fs::remove_all(dir);
}

TEST(Safetensors, UnalignedDataAreCopiedCorrectly) {
  // A header of 3 + 8k bytes puts the F32 data at an address that is not a multiple of 4.
  const std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}  )";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  auto f = st::File::from_bytes(file_bytes(header, floats({1, 2, 3})), "unaligned");
  EXPECT_TRUE(torch::equal(f.get("x"), torch::tensor({1.0f, 2.0f, 3.0f})));
}

TEST(Safetensors, MalformedFilesAreRefusedByName) {
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data = floats({1, 2});
  struct Case {
    std::string what, bytes, expected;
  };
  std::string long_length(8, '\0');
  const uint64_t big = 1000;
  std::memcpy(long_length.data(), &big, 8);
  const std::vector<Case> cases = {
      {"shorter than the length", "abc", "too short"},
      {"length past the end", long_length + "{}", "runs past the end"},
      {"not an object", file_bytes("[1,2]", ""), "starting with '{'"},
      {"bad JSON", file_bytes("{\"w\":", ""), "not valid JSON"},
      {"no dtype", file_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", data),
       "tensor \"w\": dtype"},
      {"unknown dtype",
       file_bytes(R"({"w":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})", data),
       "unknown dtype \"F8\""},
      {"negative shape",
       file_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
       "not a non-negative integer"},
      {"shape vs bytes",
       file_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
       "shape holds 3 elements"},
      {"offsets out of range",
       file_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data),
       "out of the data's 8 bytes"},
      {"overlap",
       file_bytes("{" + ok_entry + R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  data),
       "(overlap)"},
      {"hole", file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
       "(a hole)"},
      {"trailing bytes", file_bytes("{" + ok_entry + "}", data + "xx"), "the file holds 10"},
      {"repeated name", file_bytes("{" + ok_entry + "," + ok_entry + "}", data),
       "tensor \"w\" appears twice"},
      {"metadata not strings", file_bytes(R"({"__metadata__":{"a":1}})", ""), "not a string"},
  };
  for (const auto& c : cases)
    EXPECT_TRUE(throws_with([&] { st::File::from_bytes(c.bytes, "bad.safetensors"); }, c.expected))
        << c.what;
  // The file's name is in the error.
  EXPECT_TRUE(throws_with([&] { st::File::from_bytes("abc", "shard-3.safetensors"); },
                          "shard-3.safetensors"));
}

TEST(Safetensors, FuzzedHeadersAreRefusedOrReadWithinTheFile) {
  // Mutations of a valid file: random bytes in the length and header, random header lengths,
  // and truncations. Each either parses — then every tensor is read whole — or raises c10::Error.
  const std::string valid = st::serialize(every_dtype(), {{"k", "v"}});
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  std::mt19937_64 rng(20261126);
  int parsed = 0, refused = 0;
  for (int i = 0; i < 4000; ++i) {
    std::string b = valid;
    switch (i % 4) {
      case 0:  // a few bytes of the header changed
        for (int j = 0, n = 1 + static_cast<int>(rng() % 4); j < n; ++j)
          b[8 + rng() % header_len] = static_cast<char>(rng() % 256);
        break;
      case 1: {  // digits of the header changed (offsets and shapes stay numbers)
        for (int j = 0; j < 3; ++j) {
          const size_t at = 8 + rng() % header_len;
          if (b[at] >= '0' && b[at] <= '9') b[at] = static_cast<char>('0' + rng() % 10);
        }
        break;
      }
      case 2: {  // another header length
        const uint64_t n = rng() % 3 == 0 ? rng() : rng() % (valid.size() + 16);
        std::memcpy(b.data(), &n, 8);
        break;
      }
      default:  // truncated
        b.resize(rng() % valid.size());
    }
    try {
      auto f = st::File::from_bytes(b, "fuzz");
      for (const auto& t : f.tensors()) {
        auto x = f.get(t.name);
        if (x.numel() > 0) (void)x.to(torch::kFloat64).sum().item<double>();
      }
      ++parsed;
    } catch (const c10::Error&) {
      ++refused;
    }
  }
  EXPECT_EQ(parsed + refused, 4000);
  EXPECT_GT(refused, 1000);  // most mutations break the file
  EXPECT_GT(parsed, 10);     // some leave it valid (e.g. a digit of the data replaced by itself)
}

TEST(Safetensors, SaveIsAtomicAndRefusesBadTensorsByName) {
  const auto dir = temp_dir("save");
  const auto path = (dir / "x.safetensors").string();
  // Refused before anything is written: a repeated name, a dtype the format lacks.
  EXPECT_TRUE(throws_with(
      [&] {
        st::save(path, {{"a", torch::ones(2)}, {"a", torch::ones(2)}});
      },
      "tensor \"a\" is given twice"));
  EXPECT_TRUE(throws_with(
      [&] {
        st::save(path, {{"c", torch::ones(2, torch::kComplexFloat)}});
      },
      "tensor \"c\" has dtype"));
  EXPECT_TRUE(fs::is_empty(dir));
  // A directory that does not exist: an error, and nothing left behind.
  EXPECT_TRUE(
      throws_with([&] { st::save((dir / "no" / "x.safetensors").string(), {}); }, "cannot create"));
  EXPECT_TRUE(fs::is_empty(dir));
  // Overwriting replaces the whole file; no temporary file is left.
  st::save(path, {{"a", torch::ones(3)}});
  st::save(path, {{"b", torch::zeros(2)}});
  auto f = st::File::open(path);
  EXPECT_FALSE(f.contains("a"));
  EXPECT_TRUE(torch::equal(f.get("b"), torch::zeros(2)));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hybridmoe
