// eval.cpp — see train.h: the learning-rate schedule, gradient replicas and the global gradient
// norm, greedy/sampled generation and held-out task accuracy.
#include <cmath>
#include <map>
#include <set>

#include "hybridmoe/collectives.h"
#include "hybridmoe/train.h"

namespace hybridmoe {

double learning_rate(const TrainConfig& c, int64_t step) {
  if (step < c.warmup_steps) return c.lr * static_cast<double>(step + 1) / c.warmup_steps;
  const int64_t decay = std::max<int64_t>(1, c.steps - c.warmup_steps - 1);
  const double t = std::min(1.0, static_cast<double>(step - c.warmup_steps) / decay);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * t));
}

std::map<std::string, int64_t> gradient_replicas(GPTImpl& model, const ParallelGroups& groups,
                                                 const GroupedDataParallel& gdp) {
  std::map<std::string, int64_t> out;
  const auto& c = groups.config;
  const bool sharded_model = model.groups() != nullptr;
  // 1. Tensor-parallel shards: the parameters that modules declare split over tp (the dense
  //    layers' column/row parts, and an MoE layer's shared expert, whose experts module lists
  //    its slices); their replicas are the dp copies only.
  std::set<std::string> shards;
  if (sharded_model && c.tp > 1)
    for (const auto& kv : model.named_modules()) {
      const std::string prefix = kv.key().empty() ? "" : kv.key() + ".";
      if (const auto* sharded = dynamic_cast<const TensorParallelShards*>(kv.value().get()))
        for (const auto& name : sharded->tp_shard_names()) shards.insert(prefix + name);
    }
  // 2. Replicas by tag.
  for (const auto& kv : model.named_parameters()) {
    if (!sharded_model) {
      out[kv.key()] = 1;
      continue;
    }
    auto it = gdp.tags().find(kv.key());
    c10::optional<GroupKind> tag = it == gdp.tags().end() ? c10::nullopt : it->second;
    int64_t n = c.tp * c.dp;
    if (!tag) n = 1;  // not synchronized: this rank's copy is the only one
    if (tag && *tag == GroupKind::kEdp) n = c.edp();
    if (tag && *tag == GroupKind::kDp) n = shards.count(kv.key()) ? c.dp : c.tp * c.dp;
    // The tied token embedding has a copy on the first and on the last pipeline stage.
    if (kv.key() == "tok_emb.weight" && model.num_stages() > 1 && model.options.tie_embeddings())
      n *= 2;
    out[kv.key()] = n;
  }
  return out;
}

double clip_global_grad_norm(GPTImpl& model, const std::map<std::string, int64_t>& replicas,
                             double max_norm, const dist::Group& world) {
  torch::NoGradGuard no_grad;
  // 1. This rank's share of the squared norm, each copy weighted by 1 / replicas.
  double local = 0.0;
  std::vector<torch::Tensor> grads;
  for (const auto& kv : model.named_parameters()) {
    const auto& g = kv.value().grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    auto it = replicas.find(kv.key());
    const double n = it == replicas.end() ? 1.0 : static_cast<double>(it->second);
    local += g.to(torch::kFloat64).pow(2).sum().item<double>() / n;
  }
  // 2. Summed over the world.
  const double norm = std::sqrt(dist::sum_over_ranks(local, world));
  // 3. Clip.
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (auto& g : grads) g.mul_(scale);
  }
  return norm;
}

namespace {

// Continues `prompts` (all the same length) by up to max_new bytes each. Every rank calls it
// with the same prompts; the token picked on world rank 0 is used everywhere.
std::vector<std::string> continue_batch(GPTImpl& model, const std::vector<std::string>& prompts,
                                        int64_t max_new, double temperature, uint64_t seed,
                                        bool stop_at_newline) {
  const int64_t n = static_cast<int64_t>(prompts.size()), L = prompts[0].size();
  const int64_t ctx = model.options.context();
  auto seq = torch::empty({n, L}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < L; ++j)
      seq[i][j] = static_cast<int64_t>(static_cast<unsigned char>(prompts[i][j]));
  std::vector<std::string> out(n);
  std::vector<bool> done(n, false);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto* groups = model.groups();
  for (int64_t t = 0; t < max_new; ++t) {
    // 1. Next-token logits on the last `context` bytes.
    auto window =
        seq.narrow(1, std::max<int64_t>(0, seq.size(1) - ctx), std::min(ctx, seq.size(1)));
    auto logits = model.forward(window).logits.select(1, window.size(1) - 1).to(torch::kFloat64);
    // 2. Pick (greedy or sampled), the same on every rank.
    torch::Tensor next;
    if (temperature <= 0) {
      next = logits.argmax(-1);
    } else {
      next = torch::multinomial(torch::softmax(logits / temperature, -1), 1, false, gen).view({n});
    }
    if (groups && groups->world.size() > 1)
      next = dist::all_gather_rows(next.view({1, n}).contiguous(), groups->world)[0];
    seq = torch::cat({seq, next.view({n, 1})}, 1);
    bool all_done = true;
    for (int64_t i = 0; i < n; ++i) {
      const char ch = static_cast<char>(next[i].item<int64_t>());
      if (!done[i] && stop_at_newline && ch == '\n') done[i] = true;
      if (!done[i]) out[i] += ch;
      all_done = all_done && done[i];
    }
    if (all_done) break;
  }
  return out;
}

}  // namespace

std::string generate_text(GPTImpl& model, const std::string& prompt, int64_t max_new,
                          double temperature, uint64_t seed, bool stop_at_newline) {
  TORCH_CHECK(!prompt.empty(), "generate: the prompt must not be empty");
  // Prompts and answers are bytes: a model of another vocabulary was trained on token ids
  // (data_tokens) whose tokenizer hmoe does not have.
  TORCH_CHECK(model.options.vocab_size() == 256, "generate: the model's vocabulary has ",
              model.options.vocab_size(),
              " token ids, not the 256 bytes that prompts are written in (it was trained on token "
              "ids, data_tokens); generation needs a byte-level model");
  TORCH_CHECK(max_new >= 0, "generate: max_new (--max-new) should be >= 0, got ", max_new);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0,
              "generate: temperature should be a finite number >= 0 (0: greedy), got ",
              temperature);
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  auto out = continue_batch(model, {prompt}, max_new, temperature, seed, stop_at_newline);
  model.train(was_training);
  return out[0];
}

std::map<std::string, double> task_accuracy(GPTImpl& model,
                                            const std::vector<TaskSample>& samples) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  // 1. Batches of samples of one task and one prompt length (same order on every rank).
  std::map<std::pair<std::string, size_t>, std::vector<const TaskSample*>> batches;
  std::map<std::string, std::pair<int64_t, int64_t>> score;  // task → (right, total)
  for (const auto& s : samples) {
    batches[{s.task, s.prompt.size()}].push_back(&s);
    score[s.task].second += 1;
  }
  // 2. Greedy continuation up to the longest answer + 1, exact match of the line.
  for (const auto& [key, batch] : batches) {
    std::vector<std::string> prompts;
    size_t longest = 0;
    for (const auto* s : batch) {
      prompts.push_back(s->prompt);
      longest = std::max(longest, s->answer.size());
    }
    auto got = continue_batch(model, prompts, static_cast<int64_t>(longest) + 1, 0.0, 0, true);
    for (size_t i = 0; i < batch.size(); ++i)
      if (got[i] == batch[i]->answer) score[key.first].first += 1;
  }
  model.train(was_training);
  std::map<std::string, double> acc;
  for (const auto& [task, rt] : score)
    acc[task] = rt.second > 0 ? static_cast<double>(rt.first) / rt.second : 0.0;
  return acc;
}

}  // namespace hybridmoe
