// checkpoint.cpp — see train.h: sharded checkpoints written atomically (a temporary directory
// renamed once complete), checked on load (layout, model keys, shard checksums) before anything
// is modified, and the consolidated full model for generation.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "hybridmoe/collectives.h"
#include "hybridmoe/train.h"
#include "hybridmoe/zero.h"

namespace hybridmoe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMetaFile = "checkpoint.meta";
constexpr const char* kFormat = "hybridmoe-checkpoint-1";

// The configuration keys that fix the model's shapes: they must match on resume.
const std::vector<std::string>& model_keys() {
  static const std::vector<std::string> keys = {
      "d_model",   "n_layers",    "n_heads",       "d_mlp", "context",
      "moe_every", "num_experts", "expert_hidden", "top_k", "gate"};
  return keys;
}

// FNV-1a 64 of a file's bytes → (hash, size); (0, -1) when it cannot be read.
std::pair<uint64_t, int64_t> file_digest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return {0, -1};
  uint64_t h = 1469598103934665603ULL;
  int64_t n = 0;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof(buf));
    const auto got = in.gcount();
    for (std::streamsize i = 0; i < got; ++i) {
      h ^= static_cast<unsigned char>(buf[i]);
      h *= 1099511628211ULL;
    }
    n += got;
  }
  return {h, n};
}

std::string digest_text(const std::pair<uint64_t, int64_t>& d) {
  std::ostringstream s;
  s << std::hex << d.first << std::dec << " " << d.second;
  return s.str();
}

std::map<std::string, std::string> read_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / kMetaFile).string();
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "checkpoint ", dir, ": cannot read ", kMetaFile,
              " (not a checkpoint, or an incomplete one)");
  std::map<std::string, std::string> meta;
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    meta[line.substr(0, eq)] = line.substr(eq + 3);
  }
  TORCH_CHECK(meta["format"] == kFormat, "checkpoint ", dir, ": unknown format \"", meta["format"],
              "\"");
  return meta;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    TORCH_CHECK(out.good(), "checkpoint: cannot write ", tmp);
    out << text;
  }
  fs::rename(tmp, path);
}

std::string shard_name(int64_t rank) {
  return "rank_" + std::to_string(rank) + ".pt";
}

// The whole model of a run in one single-process GPT (collective; valid on every rank).
GPT consolidate_model(GPTImpl& model, const TrainConfig& config) {
  GPT full(config.model_options().single_process());
  full->to(model.parameters().front().scalar_type());
  if (model.groups()) {
    model.gather_full(*full);
  } else {
    torch::NoGradGuard ng;
    auto src = model.named_parameters();
    for (auto& kv : full->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  return full;
}

// The optimizer state of every parameter of the whole model, named "<full-model parameter>.
// exp_avg" etc., plus "step": each kind of moment is put into a copy of this rank's model and
// gathered like the parameters themselves (collective; valid on every rank).
std::vector<std::pair<std::string, torch::Tensor>> consolidate_optimizer(
    GPTImpl& model, ZeroAdamW& optimizer, const TrainConfig& config) {
  torch::NoGradGuard ng;
  auto moments = optimizer.gather_moments();
  std::map<std::string, torch::Tensor> by_name(moments.begin(), moments.end());
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const auto opts = config.model_options();
  for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
    GPT holder(model.groups() ? opts : opts.single_process(), model.groups_ptr());
    holder->to(by_name.begin()->second.scalar_type());
    for (auto& kv : holder->named_parameters()) {
      auto it = by_name.find(kv.key() + "." + kind);
      TORCH_CHECK(it != by_name.end(), "checkpoint: the optimizer has no ", kind, " of ", kv.key());
      kv.value().copy_(it->second);
    }
    GPT full = consolidate_model(*holder, config);
    for (auto& kv : full->named_parameters())
      out.emplace_back(kv.key() + "." + kind, kv.value().detach().clone());
  }
  out.emplace_back("step", by_name.at("step"));
  return out;
}

// Loads a checkpoint of another layout: its model.pt and optimizer.pt (checked against the
// metadata first) sharded for this rank.
void load_converted(const std::string& dir, std::map<std::string, std::string>& meta,
                    const TrainConfig& config, GPTImpl& model, ZeroAdamW& optimizer) {
  const std::string model_path = (fs::path(dir) / "model.pt").string();
  const std::string optim_path = (fs::path(dir) / "optimizer.pt").string();
  for (const auto& [path, key] : {std::make_pair(model_path, std::string("model")),
                                  std::make_pair(optim_path, std::string("optimizer"))}) {
    TORCH_CHECK(fs::exists(path), "checkpoint ", dir, ": ", fs::path(path).filename().string(),
                " is missing; it is needed to load the checkpoint into another layout; nothing "
                "was loaded or overwritten");
    TORCH_CHECK(meta.count(key) && digest_text(file_digest(path)) == meta[key], "checkpoint ", dir,
                ": ", fs::path(path).filename().string(),
                " is corrupted (checksum or size differs from ", kMetaFile,
                "); nothing was loaded or overwritten");
  }
  torch::NoGradGuard ng;
  const auto dtype = model.parameters().front().scalar_type();
  const auto opts = config.model_options();
  // 1. The model.
  GPT full(opts.single_process());
  full->to(dtype);
  torch::load(full, model_path);
  // 2. The optimizer state, kind by kind, sharded like the parameters.
  torch::serialize::InputArchive ar;
  ar.load_from(optim_path);
  ZeroAdamW::NamedTensors local;
  for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
    GPT whole(opts.single_process());
    whole->to(dtype);
    for (auto& kv : whole->named_parameters()) {
      torch::Tensor t;
      TORCH_CHECK(ar.try_read(kv.key() + "." + kind, t), "checkpoint ", dir,
                  ": optimizer.pt has no entry `", kv.key(), ".", kind, "`");
      kv.value().copy_(t);
    }
    GPT mine(model.groups() ? opts : opts.single_process(), model.groups_ptr());
    mine->to(dtype);
    mine->load_shard_from(*whole);
    for (auto& kv : mine->named_parameters())
      local.emplace_back(kv.key() + "." + kind, kv.value().detach().clone());
  }
  torch::Tensor step;
  TORCH_CHECK(ar.try_read("step", step), "checkpoint ", dir, ": optimizer.pt has no `step`");
  local.emplace_back("step", step);
  model.load_shard_from(*full);
  optimizer.load_moments(local);
}

}  // namespace

std::string checkpoint_dir(const std::string& out, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%06lld", static_cast<long long>(step));
  return (fs::path(out) / "checkpoints" / name).string();
}

std::string latest_checkpoint(const std::string& out) {
  const fs::path latest = fs::path(out) / "checkpoints" / "latest";
  std::ifstream in(latest);
  if (!in.good()) return "";
  std::string name;
  std::getline(in, name);
  if (name.empty()) return "";
  return (fs::path(out) / "checkpoints" / name).string();
}

void save_checkpoint(const TrainConfig& config, int64_t step, GPTImpl& model, ZeroAdamW& optimizer,
                     const ParallelGroups& groups) {
  const auto& world = groups.world;
  const int64_t rank = world.rank, W = world.size();
  const std::string final_dir = checkpoint_dir(config.out, step);
  const std::string tmp_dir =
      (fs::path(final_dir).parent_path() / (".tmp_" + fs::path(final_dir).filename().string()))
          .string();
  // 1. A fresh temporary directory (rank 0), then every rank writes its shard into it.
  if (rank == 0) {
    fs::remove_all(tmp_dir);
    fs::create_directories(tmp_dir);
  }
  if (W > 1) dist::barrier(world);
  {
    torch::serialize::OutputArchive archive, model_ar, optim_ar;
    model.save(model_ar);
    for (const auto& [name, t] : optimizer.state()) optim_ar.write(name, t);
    archive.write("model", model_ar);
    archive.write("optimizer", optim_ar);
    archive.save_to((fs::path(tmp_dir) / shard_name(rank)).string());
  }
  // 2. Checksums of every shard to rank 0.
  const auto mine = file_digest((fs::path(tmp_dir) / shard_name(rank)).string());
  auto d =
      torch::tensor({static_cast<int64_t>(mine.first), mine.second}, torch::kInt64).view({1, 2});
  auto all = W > 1 ? dist::all_gather_rows(d, world) : d;
  // 3. The consolidated model and optimizer state (collective gathers), written by rank 0: what
  //    loading into another layout starts from.
  GPT full = consolidate_model(model, config);
  auto full_state = consolidate_optimizer(model, optimizer, config);
  if (rank == 0) {
    const std::string model_path = (fs::path(tmp_dir) / "model.pt").string();
    const std::string optim_path = (fs::path(tmp_dir) / "optimizer.pt").string();
    torch::save(full, model_path);
    {
      torch::serialize::OutputArchive ar;
      for (const auto& [name, t] : full_state) ar.write(name, t);
      ar.save_to(optim_path);
    }
    // 4. Metadata last, then the rename that makes the checkpoint visible.
    std::ostringstream meta;
    meta << "format = " << kFormat << "\n"
         << "step = " << step << "\n"
         << "world_size = " << W << "\n"
         << "layout = " << config.layout().to_string() << "\n";
    for (int64_t r = 0; r < W; ++r)
      meta << "shard." << r << " = "
           << digest_text(
                  {static_cast<uint64_t>(all[r][0].item<int64_t>()), all[r][1].item<int64_t>()})
           << "\n";
    meta << "model = " << digest_text(file_digest(model_path)) << "\n"
         << "optimizer = " << digest_text(file_digest(optim_path)) << "\n";
    for (const auto& k : train_config_keys())
      meta << "config." << k.name << " = " << get_config_value(config, k.name) << "\n";
    write_file_atomic((fs::path(tmp_dir) / kMetaFile).string(), meta.str());
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(tmp_dir, final_dir);
    write_file_atomic((fs::path(config.out) / "checkpoints" / "latest").string(),
                      fs::path(final_dir).filename().string() + "\n");
  }
  if (W > 1) dist::barrier(world);
}

TrainConfig read_checkpoint_config(const std::string& dir) {
  auto meta = read_meta(dir);
  TrainConfig c;
  for (const auto& [key, value] : meta)
    if (key.rfind("config.", 0) == 0) set_config_value(c, key.substr(7), value);
  return c;
}

int64_t load_checkpoint(const std::string& dir, const TrainConfig& config, GPTImpl& model,
                        ZeroAdamW& optimizer, const ParallelGroups& groups) {
  const auto& world = groups.world;
  const int64_t rank = world.rank, W = world.size();
  // 1. The same checks on every rank: metadata and model shape keys.
  auto meta = read_meta(dir);
  TrainConfig saved = read_checkpoint_config(dir);
  for (const auto& key : model_keys())
    TORCH_CHECK(get_config_value(saved, key) == get_config_value(config, key), "checkpoint ", dir,
                ": config key `", key, "` is ", get_config_value(saved, key),
                " in the checkpoint but ", get_config_value(config, key), " in this run");
  // 2. Another layout (or optimizer sharding): start from the consolidated model and optimizer
  //    state and shard them for this layout.
  const std::string layout = config.layout().to_string();
  if (meta["layout"] != layout || meta["world_size"] != std::to_string(W) ||
      saved.zero_stage != config.zero_stage || saved.expert_layout != config.expert_layout) {
    load_converted(dir, meta, config, model, optimizer);
    if (rank == 0 && config.progress)
      std::printf(
          "checkpoint %s: converted from layout %s (zero_stage %lld, %s experts) to %s "
          "(zero_stage %lld, %s experts)\n",
          dir.c_str(), meta["layout"].c_str(), static_cast<long long>(saved.zero_stage),
          saved.expert_layout.c_str(), layout.c_str(), static_cast<long long>(config.zero_stage),
          config.expert_layout.c_str());
    return std::stoll(meta["step"]);
  }
  // 3. This rank's shard: present, with the recorded checksum; any rank's failure stops all.
  const std::string path = (fs::path(dir) / shard_name(rank)).string();
  std::string problem;
  const std::string key = "shard." + std::to_string(rank);
  if (!meta.count(key)) {
    problem = "no checksum of " + shard_name(rank) + " in " + kMetaFile;
  } else if (!fs::exists(path)) {
    problem = "shard " + path + " is missing";
  } else if (digest_text(file_digest(path)) != meta[key]) {
    problem = "shard " + path + " is corrupted (checksum or size differs from " + kMetaFile + ")";
  }
  std::vector<int64_t> bad = W > 1 ? dist::all_gather_counts(problem.empty() ? 0 : 1, world)
                                   : std::vector<int64_t>{problem.empty() ? 0 : 1};
  std::ostringstream ranks;
  for (int64_t r = 0; r < W; ++r)
    if (bad[r]) ranks << (ranks.tellp() > 0 ? ", " : "") << r;
  TORCH_CHECK(ranks.tellp() == 0, "checkpoint ", dir, " refused (rank(s) ", ranks.str(),
              " failed its check)", problem.empty() ? "" : ": " + problem,
              "; nothing was loaded or overwritten");
  // 4. Load.
  torch::serialize::InputArchive archive, model_ar, optim_ar;
  archive.load_from(path);
  archive.read("model", model_ar);
  archive.read("optimizer", optim_ar);
  // The optimizer's entries, named as this run's optimizer names them (load_state checks them).
  ZeroAdamW::NamedTensors state;
  for (const auto& [name, like] : optimizer.state()) {
    torch::Tensor t;
    TORCH_CHECK(optim_ar.try_read(name, t), "checkpoint ", dir, ": shard ", path,
                " has no optimizer entry `", name, "` (written with another optimizer setting?)");
    state.emplace_back(name, t);
  }
  model.load(model_ar);
  optimizer.load_state(state);
  return std::stoll(meta["step"]);
}

GPT load_full_model(const std::string& dir) {
  auto meta = read_meta(dir);
  const std::string path = (fs::path(dir) / "model.pt").string();
  TORCH_CHECK(fs::exists(path), "checkpoint ", dir, ": model.pt is missing");
  TORCH_CHECK(digest_text(file_digest(path)) == meta["model"], "checkpoint ", dir,
              ": model.pt is corrupted (checksum differs from ", kMetaFile, ")");
  TrainConfig c = read_checkpoint_config(dir);
  GPT model(c.model_options().single_process());
  model->to(c.dtype == "float64" ? torch::kFloat64 : torch::kFloat32);
  torch::load(model, path);
  return model;
}

}  // namespace hybridmoe
