// checkpoint.cpp — see train.h: sharded checkpoints written durably and atomically (files fsynced
// into a temporary directory renamed once complete; checkpoint_files.h), checked on load (layout,
// model keys, shard checksums) before anything is modified, and the consolidated full model for
// generation.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "checkpoint_files.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/train.h"
#include "hybridmoe/zero.h"
#include "model/copy_parameters.h"

namespace hybridmoe {

namespace fs = std::filesystem;

namespace {

using detail::digest_of_bytes;
using detail::digest_of_file;
using detail::digest_text;
using detail::kMetaFile;
using detail::read_meta;

// The configuration keys that fix the model's shapes: they must match on resume.
const std::vector<std::string>& model_keys() {
  // Every [model] key (sizes and architecture), and the [moe] keys that shape the parameters or
  // the routing; the losses' coefficients, capacity and balancing rate may change on resume.
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> out;
    const std::set<std::string> moe = {"num_experts",
                                       "expert_hidden",
                                       "expert_activation",
                                       "expert_bias",
                                       "shared_expert_hidden",
                                       "shared_expert_gate",
                                       "top_k",
                                       "gate",
                                       "score_function",
                                       "selection_bias",
                                       "n_group",
                                       "topk_group",
                                       "routed_scaling_factor",
                                       "normalize_top_k_weights"};
    for (const auto& k : train_config_keys())
      if (k.group == "model" || moe.count(k.name)) out.push_back(k.name);
    return out;
  }();
  return keys;
}

// Runs one phase of a checkpoint write on this rank; returns "" or what went wrong (file errors
// and serializer errors alike, never an abort).
template <typename Fn>
std::string attempt(Fn&& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Every rank learns whether any rank's phase failed (one gather of a flag); on failure every
// rank raises the same error, naming the failing ranks and, on each of them, its own cause.
// `cleanup` runs first (rank 0 removes the temporary directory).
void agree_or_fail(const std::string& problem, const std::string& what,
                   const ParallelGroups& groups, const std::function<void()>& cleanup) {
  const auto& world = groups.world;
  const int64_t W = world.size();
  std::vector<int64_t> bad = W > 1 ? dist::all_gather_counts(problem.empty() ? 0 : 1, world)
                                   : std::vector<int64_t>{problem.empty() ? 0 : 1};
  std::ostringstream ranks;
  for (int64_t r = 0; r < W; ++r)
    if (bad[r]) ranks << (ranks.tellp() > 0 ? ", " : "") << r;
  if (ranks.tellp() == 0) return;
  cleanup();
  TORCH_CHECK(false, what, " failed on rank(s) ", ranks.str(),
              problem.empty() ? std::string(" (this rank's part succeeded)") : ": " + problem,
              "; the temporary files were removed and `latest` still names the previous "
              "checkpoint");
}

// The bytes of a serialized archive (the serializer writes to memory; the file is then written
// durably, so a full disk is an error, not an abort inside the serializer).
std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::ostringstream out(std::ios::binary);
  archive.save_to(out);
  return out.str();
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
    detail::copy_state(*full, model);
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
    TORCH_CHECK(meta.count(key) && digest_text(digest_of_file(path)) == meta[key], "checkpoint ",
                dir, ": ", fs::path(path).filename().string(),
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
  const fs::path parent = fs::path(final_dir).parent_path();
  const std::string tmp_dir =
      (parent / (".tmp_" + fs::path(final_dir).filename().string())).string();
  const std::string what = "checkpoint of step " + std::to_string(step) + " (" + final_dir + ")";
  auto cleanup = [&] {
    std::error_code ec;
    if (rank == 0) fs::remove_all(tmp_dir, ec);
  };
  // 1. Nothing non-finite is saved; rank 0 prepares a fresh temporary directory.
  std::string problem = attempt([&] {
    torch::NoGradGuard ng;
    for (const auto& kv : model.named_parameters())
      TORCH_CHECK(torch::isfinite(kv.value()).all().item<bool>(), "parameter ", kv.key(),
                  " holds NaN or infinite values; a checkpoint never stores them");
    if (rank == 0) {
      fs::remove_all(tmp_dir);
      fs::create_directories(tmp_dir);
    }
  });
  agree_or_fail(problem, what, groups, cleanup);
  // 2. Every rank writes its shard (serialized in memory, then written durably), and sends its
  //    checksum to rank 0.
  detail::Digest mine;
  problem = attempt([&] {
    torch::serialize::OutputArchive archive, model_ar, optim_ar;
    model.save(model_ar);
    for (const auto& [name, t] : optimizer.state()) optim_ar.write(name, t);
    archive.write("model", model_ar);
    archive.write("optimizer", optim_ar);
    const std::string bytes = archive_bytes(archive);
    mine = digest_of_bytes(bytes);
    detail::write_file_durable((fs::path(tmp_dir) / shard_name(rank)).string(), bytes);
  });
  agree_or_fail(problem, what, groups, cleanup);
  auto d = torch::tensor({static_cast<int64_t>(mine.hash), mine.size}, torch::kInt64).view({1, 2});
  auto all = W > 1 ? dist::all_gather_rows(d, world) : d;
  // 3. The consolidated model and optimizer state (collective gathers), written by rank 0: what
  //    loading into another layout starts from.
  GPT full = consolidate_model(model, config);
  auto full_state = consolidate_optimizer(model, optimizer, config);
  problem = "";
  if (rank == 0)
    problem = attempt([&] {
      std::ostringstream model_out(std::ios::binary);
      torch::save(full, model_out);
      const std::string model_bytes = model_out.str();
      torch::serialize::OutputArchive ar;
      for (const auto& [name, t] : full_state) ar.write(name, t);
      const std::string optim_bytes = archive_bytes(ar);
      detail::write_file_durable((fs::path(tmp_dir) / "model.pt").string(), model_bytes);
      detail::write_file_durable((fs::path(tmp_dir) / "optimizer.pt").string(), optim_bytes);
      // 4. Metadata last, then the rename that makes the checkpoint visible, then `latest`.
      std::ostringstream meta;
      meta << "format = " << detail::kCheckpointFormat << "\n"
           << "step = " << step << "\n"
           << "world_size = " << W << "\n"
           << "layout = " << config.layout().to_string() << "\n";
      for (int64_t r = 0; r < W; ++r)
        meta << "shard." << r << " = "
             << digest_text(
                    {static_cast<uint64_t>(all[r][0].item<int64_t>()), all[r][1].item<int64_t>()})
             << "\n";
      meta << "model = " << digest_text(digest_of_bytes(model_bytes)) << "\n"
           << "optimizer = " << digest_text(digest_of_bytes(optim_bytes)) << "\n";
      for (const auto& k : train_config_keys())
        meta << "config." << k.name << " = " << get_config_value(config, k.name) << "\n";
      detail::write_file_durable((fs::path(tmp_dir) / kMetaFile).string(), meta.str());
      detail::fsync_directory(tmp_dir);
      // A checkpoint of the same step (a re-run after resume) is moved aside, not lost, until
      // the new one is in place.
      const std::string aside = final_dir + ".replaced";
      if (fs::exists(final_dir)) {
        fs::remove_all(aside);
        detail::rename_durable(final_dir, aside);
      }
      detail::rename_durable(tmp_dir, final_dir);
      fs::remove_all(aside);
      detail::write_file_durable((parent / "latest").string(),
                                 fs::path(final_dir).filename().string() + "\n");
      // 5. Retention: the newest checkpoint_keep step directories.
      prune_checkpoints(config.out, config.checkpoint_keep);
    });
  agree_or_fail(problem, what, groups, cleanup);
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
          to_string(saved.expert_layout).c_str(), layout.c_str(),
          static_cast<long long>(config.zero_stage), to_string(config.expert_layout).c_str());
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
  } else if (digest_text(digest_of_file(path)) != meta[key]) {
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
  TORCH_CHECK(digest_text(digest_of_file(path)) == meta["model"], "checkpoint ", dir,
              ": model.pt is corrupted (checksum differs from ", kMetaFile, ")");
  TrainConfig c = read_checkpoint_config(dir);
  GPT model(c.model_options().single_process());
  model->to(scalar_type(c.dtype));
  torch::load(model, path);
  return model;
}

}  // namespace hybridmoe
