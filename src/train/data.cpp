// data.cpp — see data.h: the synthetic task corpus, text-file corpora, token files (mapped) and
// batches.
#include "hybridmoe/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "core/enum_names.h"

namespace hybridmoe {

namespace detail {

// A token file mapped read-only; unmapped with the last Corpus that holds it.
struct MappedTokens {
  const unsigned char* data = nullptr;
  size_t bytes = 0;
  int64_t count = 0;  // ids
  int64_t width = 2;  // bytes per id

  MappedTokens() = default;
  MappedTokens(const MappedTokens&) = delete;
  MappedTokens& operator=(const MappedTokens&) = delete;
  ~MappedTokens() {
    if (data != nullptr) munmap(const_cast<unsigned char*>(data), bytes);
  }
  // Id i, little-endian whatever the host's byte order.
  int64_t at(int64_t i) const {
    const unsigned char* p = data + i * width;
    uint32_t v = 0;
    for (int64_t b = width - 1; b >= 0; --b) v = (v << 8) | p[b];
    return static_cast<int64_t>(v);
  }
};

}  // namespace detail

namespace {

const detail::EnumNames<TokenDType> kTokenDTypeNames{
    "token_dtype", {{TokenDType::kUInt16, "uint16"}, {TokenDType::kUInt32, "uint32"}}};

using Rng = std::mt19937_64;

int64_t uniform(Rng& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

std::string random_word(Rng& rng, int64_t min_len, int64_t max_len) {
  std::string w(static_cast<size_t>(uniform(rng, min_len, max_len)), 'a');
  for (auto& ch : w) ch = static_cast<char>('a' + uniform(rng, 0, 25));
  return w;
}

std::string random_digits(Rng& rng, int64_t min_len, int64_t max_len) {
  std::string w(static_cast<size_t>(uniform(rng, min_len, max_len)), '0');
  for (auto& ch : w) ch = static_cast<char>('0' + uniform(rng, 0, 9));
  return w;
}

// One sample of a task with an answer.
TaskSample make_sample(const std::string& task, Rng& rng) {
  TaskSample s;
  s.task = task;
  std::string input;
  if (task == "sort") {
    input = random_digits(rng, 3, 6);
    s.answer = input;
    std::sort(s.answer.begin(), s.answer.end());
  } else if (task == "reverse") {
    input = random_word(rng, 3, 6);
    s.answer = std::string(input.rbegin(), input.rend());
  } else if (task == "add") {
    const int64_t a = uniform(rng, 0, 99), b = uniform(rng, 0, 99);
    input = std::to_string(a) + "+" + std::to_string(b);
    s.answer = std::to_string(a + b);
  } else {
    TORCH_CHECK(task == "copy", "synthetic corpus: unknown task \"", task, "\"");
    input = random_word(rng, 3, 7);
    s.answer = input;
  }
  s.prompt = task + ": " + input + " -> ";
  return s;
}

// A simple English-like sentence from a small grammar.
std::string make_sentence(Rng& rng) {
  static const std::vector<std::string> det = {"the", "a", "every", "one"};
  static const std::vector<std::string> adj = {"small", "red", "quiet", "old", "happy", "bright"};
  static const std::vector<std::string> noun = {"cat",    "dog",   "bird",  "child",
                                                "farmer", "robot", "river", "tree"};
  static const std::vector<std::string> verb = {"sees",  "likes", "follows",
                                                "finds", "helps", "watches"};
  auto pick = [&](const std::vector<std::string>& v) {
    return v[static_cast<size_t>(uniform(rng, 0, static_cast<int64_t>(v.size()) - 1))];
  };
  std::string s = pick(det) + " " + pick(adj) + " " + pick(noun) + " " + pick(verb) + " " +
                  pick(det) + " " + pick(noun) + ".";
  return s;
}

}  // namespace

TokenDType parse_token_dtype(const std::string& text) {
  return kTokenDTypeNames.parse(text);
}
std::string to_string(TokenDType dtype) {
  return kTokenDTypeNames.name_of(dtype);
}
int64_t token_width(TokenDType dtype) {
  return dtype == TokenDType::kUInt32 ? 4 : 2;
}

const std::vector<std::string>& synthetic_task_names() {
  static const std::vector<std::string> names = {"sort", "reverse", "add", "copy"};
  return names;
}

Corpus Corpus::synthetic(uint64_t seed, int64_t train_lines, int64_t eval_per_task) {
  TORCH_CHECK(train_lines > 0 && eval_per_task >= 0,
              "synthetic corpus: expected train_lines > 0 "
              "and eval_per_task >= 0, got ",
              train_lines, ", ", eval_per_task);
  Corpus c;
  c.source_ = "synthetic(seed=" + std::to_string(seed) + ")";
  // 1. Held-out samples first, from their own stream; their lines are banned from training.
  Rng eval_rng(seed * 7919 + 17);
  std::set<std::string> banned;
  for (const auto& task : synthetic_task_names())
    for (int64_t i = 0; i < eval_per_task; ++i) {
      TaskSample s = make_sample(task, eval_rng);
      if (!banned.insert(s.prompt + s.answer).second) {
        --i;  // a repeat: draw another
        continue;
      }
      c.held_out_.push_back(s);
    }
  // 2. Training lines: each line one of the four tasks or a sentence, uniformly.
  Rng rng(seed);
  std::ostringstream text;
  const auto& tasks = synthetic_task_names();
  for (int64_t i = 0; i < train_lines; ++i) {
    const int64_t kind = uniform(rng, 0, static_cast<int64_t>(tasks.size()));
    if (kind == static_cast<int64_t>(tasks.size())) {
      text << make_sentence(rng) << "\n";
      continue;
    }
    TaskSample s = make_sample(tasks[static_cast<size_t>(kind)], rng);
    if (banned.count(s.prompt + s.answer)) continue;
    text << s.prompt << s.answer << "\n";
  }
  c.text_ = text.str();
  c.bytes_ = torch::from_blob(c.text_.data(), {static_cast<int64_t>(c.text_.size())}, torch::kUInt8)
                 .to(torch::kInt64);
  return c;
}

Corpus Corpus::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "--data: cannot read \"", path, "\"");
  std::ostringstream ss;
  ss << in.rdbuf();
  Corpus c;
  c.text_ = ss.str();
  TORCH_CHECK(c.text_.size() >= 2, "--data: \"", path, "\" has ", c.text_.size(),
              " bytes; expected at least 2");
  c.source_ = path;
  c.bytes_ = torch::from_blob(c.text_.data(), {static_cast<int64_t>(c.text_.size())}, torch::kUInt8)
                 .to(torch::kInt64);
  return c;
}

Corpus Corpus::from_tokens(const std::string& path, TokenDType dtype, int64_t vocab_size,
                           int64_t seq_len) {
  const int64_t width = token_width(dtype);
  const std::string what = "data_tokens: \"" + path + "\"";
  TORCH_CHECK(vocab_size > 0 && seq_len > 0, what, ": expected vocab_size and seq_len > 0, got ",
              vocab_size, ", ", seq_len);
  // 1. The file: a whole number of ids, enough of them for two windows.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, what, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_errno = errno;
  auto refuse = [&](const std::string& why) {
    ::close(fd);
    C10_THROW_ERROR(Error, what + why);
  };
  if (!stat_ok) refuse(std::string(": cannot stat: ") + std::strerror(stat_errno));
  if (!S_ISREG(st.st_mode)) refuse(": not a regular file");
  const auto bytes = static_cast<int64_t>(st.st_size);
  if (bytes % width != 0)
    refuse(c10::str(" has ", bytes, " bytes, not a whole number of ", width,
                    "-byte ids (token_dtype ", to_string(dtype), ")"));
  const int64_t count = bytes / width;
  if (count < seq_len + 2)
    refuse(c10::str(" holds ", count, " token ids (", to_string(dtype), "); seq_len ", seq_len,
                    " needs at least ", seq_len + 2));
  // 2. Mapped, not read: every rank shares the page cache.
  void* mapped = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  TORCH_CHECK(mapped != MAP_FAILED, what, ": cannot map: ", std::strerror(map_errno));
  auto tokens = std::make_shared<detail::MappedTokens>();
  tokens->data = static_cast<const unsigned char*>(mapped);
  tokens->bytes = static_cast<size_t>(bytes);
  tokens->count = count;
  tokens->width = width;
  // 3. Every id within the vocabulary (uint16 ids always are for vocab_size >= 65536).
  if (vocab_size < (int64_t{1} << (8 * width)))
    for (int64_t i = 0; i < count; ++i) {
      const int64_t id = tokens->at(i);
      TORCH_CHECK(id < vocab_size, what, ": token id ", id, " at position ", i, " (of ", count, " ",
                  to_string(dtype), " ids) is not below vocab_size ", vocab_size);
    }
  Corpus c;
  c.tokens_ = std::move(tokens);
  c.source_ = path;
  return c;
}

int64_t Corpus::size() const {
  return tokens_ ? tokens_->count : bytes_.size(0);
}

std::pair<torch::Tensor, torch::Tensor> Corpus::batch(uint64_t seed, int64_t step, int64_t micro,
                                                      int64_t batch, int64_t seq_len) const {
  const int64_t n = size();
  TORCH_CHECK(batch > 0 && seq_len > 0, "batch: expected positive sizes, got ", batch, ", ",
              seq_len);
  TORCH_CHECK(n > seq_len, "batch: the corpus has ", n, " tokens; seq_len ", seq_len,
              " needs more than that");
  // Offsets from a generator keyed by (seed, step, micro): a resumed run sees the same batches.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(
      seed * 1000003ULL + static_cast<uint64_t>(step) * 131ULL + static_cast<uint64_t>(micro));
  auto starts = torch::randint(0, n - seq_len, {batch, 1}, gen, torch::kInt64);
  torch::Tensor windows;
  if (tokens_) {
    // Token ids: each window read from the mapped file.
    windows = torch::empty({batch, seq_len + 1}, torch::kInt64);
    int64_t* w = windows.data_ptr<int64_t>();
    const int64_t* s = starts.data_ptr<int64_t>();
    for (int64_t r = 0; r < batch; ++r)
      for (int64_t t = 0; t <= seq_len; ++t) w[r * (seq_len + 1) + t] = tokens_->at(s[r] + t);
  } else {
    auto idx = starts + torch::arange(seq_len + 1, torch::kInt64).unsqueeze(0);
    windows = bytes_.index_select(0, idx.reshape({-1})).view({batch, seq_len + 1});
  }
  return {windows.narrow(1, 0, seq_len).contiguous(), windows.narrow(1, 1, seq_len).contiguous()};
}

torch::Tensor shard_batch(const torch::Tensor& x, int64_t dp, int64_t dp_rank) {
  TORCH_CHECK(dp >= 1 && x.size(0) % dp == 0, "shard_batch: ", x.size(0),
              " rows cannot be split over dp=", dp);
  const int64_t per = x.size(0) / dp;
  return x.narrow(0, dp_rank * per, per);
}

}  // namespace hybridmoe
