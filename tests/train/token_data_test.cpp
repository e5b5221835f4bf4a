// token_data_test.cpp — training on token ids (data_tokens, token_dtype): token files of uint16
// and uint32 ids written here, their batches exactly the windows at the offsets the byte corpus
// draws (same seed, step and micro-batch), dp shards, every refusal naming the file and the value
// (size, length, an id past the vocabulary, dtype, data and data_tokens together, a byte corpus
// under vocab_size 256), and a short run on token ids with no byte evaluation and generation
// refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "hybridmoe/dist.h"
#include "hybridmoe/train.h"
#include "support/compare.h"
#include "train/train_fixtures.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

using testing::error_of;
using testing::has;
using testing::test_dir;
using testing::throws_with;
using testing::tiny_config;

// Writes `ids` as `width`-byte little-endian integers; returns the path.
std::string write_tokens(const std::string& name, const std::vector<uint32_t>& ids, int width) {
  const auto dir = test_dir("token_data");
  fs::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (uint32_t id : ids)
    for (int b = 0; b < width; ++b) out.put(static_cast<char>((id >> (8 * b)) & 0xFF));
  return path;
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  const auto dir = test_dir("token_data");
  fs::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

// ids[i] = i: a window's first id is its offset.
std::vector<uint32_t> positions(int64_t n) {
  std::vector<uint32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<uint32_t>(i);
  return ids;
}

TEST(TokenData, BatchesAreTheWindowsAtTheByteCorpusOffsets) {
  const int64_t n = 3000, L = 16, B = 6;
  // 1. The offsets: with ids = positions, x[r][0] is row r's offset.
  const Corpus where = Corpus::from_tokens(write_tokens("positions.u32", positions(n), 4),
                                           TokenDType::kUInt32, n, L);
  EXPECT_EQ(where.size(), n);
  // 2. Ids of both widths spread over their whole range (both bytes of uint16 used, uint32 ids
  //    past 2^16 and 2^24), and a byte corpus of the same length.
  std::vector<uint32_t> ids16(n), ids32(n);
  std::string text(n, '\0');
  for (int64_t i = 0; i < n; ++i) {
    ids16[i] = static_cast<uint32_t>((i * 40503) % 65536);
    ids32[i] = static_cast<uint32_t>((i * 2654435761ULL) % 4000000000ULL);
    text[i] = static_cast<char>((i * 7) % 256);
  }
  const Corpus c16 =
      Corpus::from_tokens(write_tokens("spread.u16", ids16, 2), TokenDType::kUInt16, 65536, L);
  const Corpus c32 = Corpus::from_tokens(write_tokens("spread.u32", ids32, 4), TokenDType::kUInt32,
                                         4000000000LL, L);
  const Corpus bytes = Corpus::from_file(write_bytes("bytes.txt", text));
  for (const auto& [seed, step, micro] :
       std::vector<std::tuple<uint64_t, int64_t, int64_t>>{{1, 0, 0}, {1, 5, 1}, {77, 12, 0}}) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " step " + std::to_string(step) + " micro " +
                 std::to_string(micro));
    auto [xw, yw] = where.batch(seed, step, micro, B, L);
    auto [x16, y16] = c16.batch(seed, step, micro, B, L);
    auto [x32, y32] = c32.batch(seed, step, micro, B, L);
    auto [xb, yb] = bytes.batch(seed, step, micro, B, L);
    ASSERT_EQ(x16.sizes(), (std::vector<int64_t>{B, L}));
    ASSERT_EQ(x16.scalar_type(), torch::kInt64);
    for (int64_t r = 0; r < B; ++r) {
      const int64_t start = xw[r][0].item<int64_t>();
      ASSERT_LE(start + L, n - 1);
      for (int64_t t = 0; t < L; ++t) {
        ASSERT_EQ(xw[r][t].item<int64_t>(), start + t);
        ASSERT_EQ(yw[r][t].item<int64_t>(), start + t + 1);
        ASSERT_EQ(x16[r][t].item<int64_t>(), ids16[start + t]) << r << ", " << t;
        ASSERT_EQ(y16[r][t].item<int64_t>(), ids16[start + t + 1]) << r << ", " << t;
        ASSERT_EQ(x32[r][t].item<int64_t>(), ids32[start + t]) << r << ", " << t;
        ASSERT_EQ(y32[r][t].item<int64_t>(), ids32[start + t + 1]) << r << ", " << t;
        // The byte corpus of the same length draws the same offsets.
        ASSERT_EQ(xb[r][t].item<int64_t>(), static_cast<unsigned char>(text[start + t]));
        ASSERT_EQ(yb[r][t].item<int64_t>(), static_cast<unsigned char>(text[start + t + 1]));
      }
    }
    // 3. The dp shards are consecutive rows of the global batch, as for bytes.
    for (int64_t dp : {2, 3}) {
      std::vector<torch::Tensor> parts;
      for (int64_t r = 0; r < dp; ++r) parts.push_back(shard_batch(x16, dp, r));
      EXPECT_TRUE(testing::identical(torch::cat(parts, 0), x16)) << "dp " << dp;
      EXPECT_TRUE(
          testing::identical(shard_batch(y32, dp, dp - 1), y32.narrow(0, B - B / dp, B / dp)));
    }
  }
  // 4. A different step draws different offsets.
  EXPECT_FALSE(
      testing::identical(where.batch(1, 0, 0, B, L).first, where.batch(1, 1, 0, B, L).first));
}

TEST(TokenData, RefusesBadFilesNamingThePathAndValue) {
  const int64_t L = 8;
  // Not a whole number of ids.
  const auto odd = write_bytes("odd.u16", std::string(21, 'a'));
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(odd, TokenDType::kUInt16, 65536, L); },
                          "data_tokens: \"" + odd +
                              "\" has 21 bytes, not a whole number of 2-byte ids (token_dtype "
                              "uint16)"));
  const auto six = write_bytes("six.u32", std::string(66, 'a'));
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(six, TokenDType::kUInt32, 1 << 30, L); },
                          "has 66 bytes, not a whole number of 4-byte ids (token_dtype uint32)"));
  // Fewer than seq_len + 2 ids (and an empty file).
  const auto short_file = write_tokens("short.u16", positions(L + 1), 2);
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(short_file, TokenDType::kUInt16, 100, L); },
                          "data_tokens: \"" + short_file +
                              "\" holds 9 token ids (uint16); seq_len 8 needs at least 10"));
  EXPECT_NO_THROW(Corpus::from_tokens(write_tokens("just.u16", positions(L + 2), 2),
                                      TokenDType::kUInt16, 100, L));
  const auto empty = write_bytes("empty.u32", "");
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(empty, TokenDType::kUInt32, 100, L); },
                          "holds 0 token ids (uint32)"));
  // An id past the vocabulary: the first one, its position, the id and vocab_size.
  auto ids = positions(50);
  ids[17] = 300;
  ids[30] = 70000;
  const auto big = write_tokens("big.u32", ids, 4);
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(big, TokenDType::kUInt32, 256, L); },
                          "data_tokens: \"" + big +
                              "\": token id 300 at position 17 (of 50 uint32 ids) is not below "
                              "vocab_size 256"));
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(big, TokenDType::kUInt32, 70000, L); },
                          "token id 70000 at position 30 (of 50 uint32 ids) is not below "
                          "vocab_size 70000"));
  EXPECT_NO_THROW(Corpus::from_tokens(big, TokenDType::kUInt32, 70001, L));
  // uint16 ids are read unsigned: 0xFFFF is 65535.
  const auto top = write_tokens("top.u16", {1, 2, 65535, 4, 5, 6, 7, 8, 9, 10, 11, 12}, 2);
  EXPECT_TRUE(throws_with([&] { Corpus::from_tokens(top, TokenDType::kUInt16, 65535, L); },
                          "token id 65535 at position 2 (of 12 uint16 ids)"));
  // A missing file, a directory.
  EXPECT_TRUE(throws_with(
      [&] { Corpus::from_tokens(test_dir("token_data") + "/none.bin", TokenDType::kUInt16, 9, L); },
      "none.bin\": cannot open"));
  EXPECT_TRUE(
      throws_with([&] { Corpus::from_tokens(test_dir("token_data"), TokenDType::kUInt16, 9, L); },
                  "\": not a regular file"));
  // The dtype's names.
  EXPECT_EQ(parse_token_dtype("uint32"), TokenDType::kUInt32);
  EXPECT_EQ(to_string(TokenDType::kUInt16), "uint16");
  EXPECT_EQ(token_width(TokenDType::kUInt32), 4);
  EXPECT_TRUE(throws_with([] { parse_token_dtype("int8"); },
                          "token_dtype: expected one of \"uint16\", \"uint32\", got \"int8\""));
}

TEST(TokenData, ConfigKeysAndTheirRefusals) {
  TrainConfig c = tiny_config(test_dir("token_keys"));
  EXPECT_EQ(get_config_value(c, "data_tokens"), "");
  EXPECT_EQ(get_config_value(c, "token_dtype"), "uint16");
  EXPECT_EQ(get_config_value(c, "vocab_size"), "256");
  EXPECT_TRUE(throws_with([&] { set_config_value(c, "token_dtype", "int8"); },
                          "config key `token_dtype`: token_dtype: expected one of \"uint16\", "
                          "\"uint32\", got \"int8\""));
  apply_config_values(
      c, {{"data_tokens", "a.bin"}, {"token_dtype", "uint32"}, {"vocab_size", "1000"}});
  EXPECT_EQ(c.token_dtype, TokenDType::kUInt32);
  EXPECT_EQ(c.model_options().vocab_size(), 1000);
  EXPECT_EQ(check_config(c), "");
  // data and data_tokens together.
  c.data = "corpus.txt";
  EXPECT_TRUE(has(check_config(c),
                  "config keys `data` = \"corpus.txt\" and `data_tokens` = "
                  "\"a.bin\" exclude each other"));
  // Bytes need 256 ids (more are allowed); token ids may use fewer.
  c.data_tokens = "";
  EXPECT_EQ(check_config(c), "");
  c.vocab_size = 100;
  EXPECT_TRUE(has(check_config(c), "config key `vocab_size` = 100 is below 256: byte data"));
  c.data_tokens = "a.bin";
  c.data = "";
  EXPECT_EQ(check_config(c), "");
  c.vocab_size = 0;
  EXPECT_TRUE(has(check_config(c), "config key `vocab_size` must be >= 1, got 0"));
  // In the TOML tables of their groups.
  EXPECT_NO_THROW(
      read_toml_text("[data]\ndata_tokens = \"x.bin\"\ntoken_dtype = \"uint32\"\n"
                     "[model]\nvocab_size = 50304\n",
                     "test"));
}

TEST(TokenData, ShortRunTrainsOnTokenIdsWithoutByteEvaluation) {
  const auto dir = test_dir("token_run");
  fs::remove_all(dir);
  // A repeating sequence of 40 ids in [300, 700): learnable, and not bytes.
  std::vector<uint32_t> ids;
  for (int64_t i = 0; i < 4000; ++i) ids.push_back(static_cast<uint32_t>(300 + (i % 40) * 10));
  auto c = tiny_config(dir);
  c.data_tokens = write_tokens("run.u32", ids, 4);
  c.token_dtype = TokenDType::kUInt32;
  c.vocab_size = 700;
  c.steps = 30;
  c.eval = true;  // asked for, but token data have no held-out tasks
  auto world = dist::init();
  TrainResult r = train(c, *world);
  ASSERT_EQ(r.losses.size(), 30u);
  // From ~ln(700) = 6.55: a period-40 sequence is learnt quickly.
  EXPECT_NEAR(r.losses.front(), std::log(700.0), 0.5);
  EXPECT_LT(r.losses.back(), r.losses.front() - 1.5);
  EXPECT_TRUE(r.task_accuracy.empty());
  EXPECT_TRUE(fs::exists(dir + "/summary.json"));
  // The checkpoint records the keys; generation (bytes) is refused on this model.
  const auto saved = read_checkpoint_config(latest_checkpoint(dir));
  EXPECT_EQ(saved.data_tokens, c.data_tokens);
  EXPECT_EQ(saved.token_dtype, TokenDType::kUInt32);
  EXPECT_EQ(saved.vocab_size, 700);
  GPT model = load_full_model(latest_checkpoint(dir));
  EXPECT_TRUE(throws_with([&] { generate_text(*model, "sort: ", 4); },
                          "generate: the model's vocabulary has 700 token ids, not the 256 bytes"));
  // An id past vocab_size stops the run before any step, naming it.
  auto bad = c;
  bad.vocab_size = 650;
  bad.overwrite = true;
  EXPECT_TRUE(has(error_of([&] { train(bad, *world); }),
                  "token id 650 at position 35 (of 4000 uint32 ids) is not below vocab_size 650"));
}

}  // namespace
}  // namespace hybridmoe
