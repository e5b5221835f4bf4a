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
  // 3. The consolidated model (collective gathers), written by rank 0.
  GPT full(config.model_options().single_process());
  if (model.groups()) {
    model.gather_full(*full);
  } else {
    torch::NoGradGuard ng;
    auto src = model.named_parameters();
    for (auto& kv : full->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  if (rank == 0) {
    const std::string model_path = (fs::path(tmp_dir) / "model.pt").string();
    torch::save(full, model_path);
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
    meta << "model = " << digest_text(file_digest(model_path)) << "\n";
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
  // 1. The same checks on every rank: metadata, layout, model shape keys.
  auto meta = read_meta(dir);
  const std::string layout = config.layout().to_string();
  TORCH_CHECK(meta["layout"] == layout && meta["world_size"] == std::to_string(W), "checkpoint ",
              dir, " was written with layout ", meta["layout"], " on ", meta["world_size"],
              " ranks; this run uses ", layout, " on ", W,
              " ranks. Loading into a different layout is not supported: resume with the "
              "checkpoint's layout");
  TrainConfig saved = read_checkpoint_config(dir);
  for (const auto& key : model_keys())
    TORCH_CHECK(get_config_value(saved, key) == get_config_value(config, key), "checkpoint ", dir,
                ": config key `", key, "` is ", get_config_value(saved, key),
                " in the checkpoint but ", get_config_value(config, key), " in this run");
  // 2. This rank's shard: present, with the recorded checksum; any rank's failure stops all.
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
  // 3. Load.
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
  torch::load(model, path);
  return model;
}

}  // namespace hybridmoe
