// hf_checkpoint.cpp — see hf.h: a Hugging Face model directory's tensors (one file or an index
// and its shards), loaded into a model of any layout with each rank reading only its elements,
// and a whole model written back. Loading finds which source elements each local parameter holds
// without knowing the layout: a float64 copy of the single-process model holds every element's
// global index, and the model's own load_shard_from (the one sharding rule of every layout) moves
// those indices where the values would go.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/enum_names.h"
#include "io/hf_names.h"
#include "train/checkpoint_files.h"

namespace fs = std::filesystem;

namespace hybridmoe::hf {

namespace {

using json = nlohmann::json;
using detail::NameMap;
using detail::Piece;
using detail::Target;

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

const hybridmoe::detail::EnumNames<ExpertLayout> kLayoutNames{
    "expert layout", {{ExpertLayout::kPerExpert, "per-expert"}, {ExpertLayout::kFused, "fused"}}};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "hf: cannot read ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string listed(const std::vector<std::string>& names, size_t most = 20) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size() && i < most; ++i) out << "\n  " << names[i];
  if (names.size() > most) out << "\n  ... and " << names.size() - most << " more";
  return out.str();
}

// Positions in `base.reshape(-1)` (base contiguous) of the elements of `view` (a view of base)
// at logical flat offsets `flat` [n].
torch::Tensor storage_positions(const torch::Tensor& view, const torch::Tensor& base,
                                torch::Tensor flat) {
  auto pos = torch::full_like(flat, view.storage_offset() - base.storage_offset());
  for (int64_t d = view.dim() - 1; d >= 0; --d) {
    pos += (flat % view.size(d)) * view.stride(d);
    flat = torch::div(flat, view.size(d), "floor");
  }
  return pos;
}

// The values of target `t` at its flat offsets `flat` [n] (int64), in the source's dtype; the
// source tensors it reads are added to `touched`, their bytes to `bytes`.
torch::Tensor gather(const Target& t, const Checkpoint& ckpt, const torch::Tensor& flat,
                     int64_t& bytes, std::set<std::string>& touched) {
  auto read = [&](const Piece& p, const torch::Tensor& offsets) {
    touched.insert(p.tensor);
    torch::Tensor source = ckpt.get(p.tensor).contiguous();
    auto positions = storage_positions(p.view(source), source, offsets);
    bytes += offsets.numel() * source.element_size();
    return source.reshape(-1).index_select(0, positions);
  };
  if (!t.stacked) return read(t.pieces[0], flat);
  const auto inner = ckpt.info(t.pieces[0].tensor).shape;
  int64_t per = 1;
  for (auto s : inner) per *= s;
  auto which = torch::div(flat, per, "floor");
  auto out = torch::empty({flat.numel()}, torch::dtype(ckpt.info(t.pieces[0].tensor).dtype));
  auto present = std::get<0>(torch::_unique(which));
  auto acc = present.accessor<int64_t, 1>();
  for (int64_t i = 0; i < present.numel(); ++i) {
    auto sel = (which == acc[i]).nonzero().squeeze(1);
    out.index_put_({sel}, read(t.pieces[acc[i]], flat.index_select(0, sel) - acc[i] * per));
  }
  return out;
}

// The name map of `model`'s options, built on a single-process model.
NameMap map_for(const GPTOptions& options, ModelFamily family, const detail::Naming& naming,
                GPT& full) {
  full = GPT(options.single_process());
  return detail::name_map(*full, options, family, naming);
}

}  // namespace

ExpertLayout parse_expert_layout(const std::string& name) {
  return kLayoutNames.parse(name);
}
std::string to_string(ExpertLayout layout) {
  return kLayoutNames.name_of(layout);
}

std::string Coverage::text() const {
  std::ostringstream out;
  out << tensors << " tensors, " << bytes << " bytes, " << parameters << " parameters (" << elements
      << " elements)";
  if (files > 0) out << ", " << files << " files";
  if (!unused.empty()) out << ", " << unused.size() << " unused by --allow-unused";
  return out.str();
}

// ---- reading ------------------------------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const fs::path index = fs::path(dir) / kIndexFile, single = fs::path(dir) / kSingleFile;
  std::map<std::string, std::string> weight_map;  // tensor -> file name
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text(index.string()));
    } catch (const json::exception& e) {
      C10_THROW_ERROR(Error,
                      c10::str("hf: ", index.string(), " is not valid JSON (", e.what(), ")"));
    }
    TORCH_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                "hf: ", index.string(), " has no `weight_map` object");
    for (const auto& [name, file] : j["weight_map"].items()) {
      TORCH_CHECK(file.is_string(), "hf: ", index.string(), ": the file of tensor ", name,
                  " must be a string, got ", file.dump());
      const std::string f = file.get<std::string>();
      TORCH_CHECK(f.find('/') == std::string::npos && f != ".." && !f.empty(),
                  "hf: ", index.string(), ": tensor ", name, " names the file \"", f,
                  "\" outside the directory");
      weight_map[name] = f;
    }
  } else {
    TORCH_CHECK(fs::exists(single), "hf: ", dir, " has neither ", kSingleFile, " nor ", kIndexFile);
  }
  // 1. The files, each opened (and its header checked) once.
  std::set<std::string> file_names;
  for (const auto& kv : weight_map) file_names.insert(kv.second);
  if (weight_map.empty()) file_names.insert(kSingleFile);
  std::map<std::string, size_t> file_index;
  for (const auto& f : file_names) {
    const std::string path = (fs::path(dir) / f).string();
    TORCH_CHECK(fs::exists(path), "hf: ", path, " is missing (named by ",
                weight_map.empty() ? std::string("nobody") : index.string(), ")");
    file_index[f] = c.files_.size();
    c.paths_.push_back(path);
    c.files_.push_back(std::make_shared<safetensors::File>(safetensors::File::open(path)));
  }
  // 2. Each tensor where the index says, and each file's tensors all in the index.
  for (size_t i = 0; i < c.files_.size(); ++i)
    for (const auto& t : c.files_[i]->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(t.name);
        TORCH_CHECK(it != weight_map.end(), "hf: ", c.paths_[i], " holds tensor ", t.name,
                    " which ", index.string(), " does not name");
        TORCH_CHECK(file_index.at(it->second) == i, "hf: ", index.string(), " puts tensor ", t.name,
                    " in ", it->second, " but it is in ", c.paths_[i]);
      }
      TORCH_CHECK(!c.where_.count(t.name), "hf: tensor ", t.name, " is in both ",
                  c.paths_[c.where_[t.name]], " and ", c.paths_[i]);
      c.where_[t.name] = i;
    }
  for (const auto& [name, f] : weight_map)
    TORCH_CHECK(c.where_.count(name), "hf: ", index.string(), " names tensor ", name, " in ", f,
                ", which does not hold it");
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const safetensors::TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "hf: ", dir_, " has no tensor ", name);
  return files_[it->second]->info(name);
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "hf: ", dir_, " has no tensor ", name);
  return files_[it->second]->get(name);
}

const std::string& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "hf: ", dir_, " has no tensor ", name);
  return paths_[it->second];
}

// ---- loading ------------------------------------------------------------------------------------

Coverage load(GPTImpl& model, ModelFamily family, const Checkpoint& ckpt,
              const std::string& allow_unused) {
  torch::NoGradGuard no_grad;
  const std::vector<std::string> names = ckpt.names();
  GPT full = nullptr;
  const NameMap map = map_for(model.options, family, detail::detect_naming(names, family), full);
  // 1. Accounting, before anything is modified: every needed tensor present with its shape, every
  //    present tensor needed (or allowed unused). A tied head may come with lm_head.weight equal
  //    to the embedding (some exporters write both); it is then checked and consumed.
  Coverage cov;
  std::vector<std::string> missing, extra, wrong;
  for (const auto& name : map.order) {
    if (!ckpt.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const auto& have = ckpt.info(name).shape;
    if (have != map.shapes.at(name))
      wrong.push_back(c10::str(name, " (", ckpt.file_of(name), "): expected shape ",
                               c10::IntArrayRef(map.shapes.at(name)), ", got ",
                               c10::IntArrayRef(have)));
  }
  const bool tied_copy = model.options.tie_embeddings() && ckpt.contains("lm_head.weight");
  std::regex allowed;
  if (!allow_unused.empty()) {
    try {
      allowed = std::regex(allow_unused, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      C10_THROW_ERROR(Error, c10::str("hf: --allow-unused \"", allow_unused,
                                      "\" is not a valid regular expression (", e.what(), ")"));
    }
  }
  for (const auto& name : names) {
    if (map.shapes.count(name) || (tied_copy && name == "lm_head.weight")) continue;
    if (!allow_unused.empty() && std::regex_match(name, allowed)) {
      cov.unused.push_back(name);
      continue;
    }
    extra.push_back(name);
  }
  TORCH_CHECK(missing.empty(), "hf: ", ckpt.dir(), " lacks ", missing.size(), " tensor(s) the ",
              to_string(family), " model needs; nothing was loaded:", listed(missing));
  TORCH_CHECK(extra.empty(), "hf: ", ckpt.dir(), " holds ", extra.size(),
              " tensor(s) the model does not use; nothing was loaded (pass --allow-unused REGEX "
              "to leave them deliberately):",
              listed(extra));
  TORCH_CHECK(wrong.empty(), "hf: ", ckpt.dir(), ": ", wrong.size(),
              " tensor(s) have another shape than the config describes; nothing was loaded:",
              listed(wrong));
  if (tied_copy)
    TORCH_CHECK(torch::equal(ckpt.get("lm_head.weight"), ckpt.get("model.embed_tokens.weight")),
                "hf: ", ckpt.dir(),
                ": tie_word_embeddings is true but lm_head.weight differs from "
                "model.embed_tokens.weight");
  // 2. Every element of the single-process model gets its global index (exact in float64).
  full->to(torch::kFloat64);
  auto full_params = full->named_parameters();
  auto full_buffers = full->named_buffers();
  std::vector<int64_t> bases;
  int64_t next = 0;
  for (const auto& t : map.targets) {
    auto p = t.buffer ? full_buffers[t.name] : full_params[t.name];
    bases.push_back(next);
    p.copy_(torch::arange(next, next + p.numel(), torch::kFloat64).view(p.sizes()));
    next += p.numel();
  }
  TORCH_CHECK(next < (int64_t{1} << 53), "hf: the model has ", next,
              " elements, more than float64 indexes exactly");
  // 3. A copy of this rank's model takes its shard of the indices, by the layout's own rule.
  GPT where(model.options, model.groups_ptr());
  where->to(torch::kFloat64);
  for (auto& p : where->parameters()) p.fill_(-1);
  for (auto& b : where->buffers())
    if (b.is_floating_point()) b.fill_(-1);
  where->load_shard_from(*full);
  // 4. Each local tensor reads the source elements its indices name.
  auto bases_t = torch::tensor(bases, torch::kInt64).to(torch::kFloat64);
  std::set<std::string> touched;
  auto fill = [&](const std::string& name, torch::Tensor dst, const torch::Tensor& idx) {
    auto flat = idx.reshape(-1);
    TORCH_CHECK(flat.numel() == 0 || flat.min().item<double>() >= 0, "hf: parameter ", name,
                " of this rank is not fully written by the checkpoint");
    auto target = (torch::searchsorted(bases_t, flat, /*out_int32=*/false, /*right=*/true) - 1);
    auto out = torch::empty({flat.numel()}, dst.options());
    auto present = std::get<0>(torch::_unique(target));
    auto acc = present.accessor<int64_t, 1>();
    for (int64_t i = 0; i < present.numel(); ++i) {
      const Target& t = map.targets[acc[i]];
      auto sel = (target == acc[i]).nonzero().squeeze(1);
      auto offsets = (flat.index_select(0, sel) - bases[acc[i]]).to(torch::kInt64);
      out.index_put_({sel}, gather(t, ckpt, offsets, cov.bytes, touched).to(dst.scalar_type()));
    }
    dst.copy_(out.view(dst.sizes()));
    cov.parameters += 1;
    cov.elements += dst.numel();
  };
  auto idx_params = where->named_parameters();
  for (auto& kv : model.named_parameters()) fill(kv.key(), kv.value(), idx_params[kv.key()]);
  auto idx_buffers = where->named_buffers();
  const std::string bias = "moe.gate.expert_bias";  // the selection bias, where routing uses it
  for (auto& kv : model.named_buffers()) {
    const auto& n = kv.key();
    if (model.options.gate().selection_bias() && n.size() >= bias.size() &&
        n.compare(n.size() - bias.size(), bias.size(), bias) == 0)
      fill(n, kv.value(), idx_buffers[n]);
  }
  cov.tensors = static_cast<int64_t>(touched.size());
  return cov;
}

// ---- writing ------------------------------------------------------------------------------------

Coverage save(GPTImpl& model, ModelFamily family, const std::string& dir,
              const SaveOptions& options) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(model.groups_ptr() == nullptr,
              "hf::save: expected a single-process model (gather a distributed one first)");
  TORCH_CHECK(options.max_shard_bytes >= 0, "hf::save: max_shard_bytes must be >= 0, got ",
              options.max_shard_bytes);
  TORCH_CHECK(!fs::exists(dir), "hf::save: ", dir,
              " exists; the export writes a new directory (remove it or choose another)");
  const std::string config = config_json(family, model.options, options.dtype);
  detail::Naming naming;
  naming.layout = options.layout;
  naming.mixtral_block_sparse = options.layout == ExpertLayout::kPerExpert;
  const NameMap map = detail::name_map(model, model.options, family, naming);
  // 1. The tensors, each filled piece by piece, every element exactly once.
  std::map<std::string, torch::Tensor> out;
  std::map<std::string, int64_t> filled;
  for (const auto& name : map.order)
    out[name] = torch::zeros(map.shapes.at(name), torch::dtype(options.dtype));
  auto params = model.named_parameters();
  auto buffers = model.named_buffers();
  Coverage cov;
  for (const auto& t : map.targets) {
    const torch::Tensor src = t.buffer ? buffers[t.name] : params[t.name];
    for (size_t i = 0; i < t.pieces.size(); ++i) {
      const Piece& p = t.pieces[i];
      auto region = p.view(out.at(p.tensor));
      const auto part = t.stacked ? src[static_cast<int64_t>(i)] : src;
      TORCH_CHECK(region.sizes() == part.sizes(), "hf::save: ", t.name, " does not fit ", p.tensor,
                  " (", part.sizes(), " vs ", region.sizes(), ")");
      region.copy_(part);
      filled[p.tensor] += part.numel();
    }
    cov.parameters += 1;
    cov.elements += src.numel();
  }
  for (const auto& name : map.order)
    TORCH_CHECK(filled[name] == out.at(name).numel(), "hf::save: ", name, " was filled with ",
                filled[name], " of its ", out.at(name).numel(), " elements");
  // 2. Shards of at most max_shard_bytes, in the model's order.
  std::vector<std::vector<std::string>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (const auto& name : map.order) {
    const int64_t b = out.at(name).numel() * out.at(name).element_size();
    if (options.max_shard_bytes > 0 && shard_bytes > 0 &&
        shard_bytes + b > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(name);
    shard_bytes += b;
    total += b;
  }
  // 3. Written under a temporary name, renamed when complete.
  const std::string tmp = dir + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  try {
    fs::create_directories(tmp);
    hybridmoe::detail::write_file_durable((fs::path(tmp) / "config.json").string(), config);
    json weight_map = json::object();
    const bool sharded = options.max_shard_bytes > 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      char file[64];
      std::snprintf(file, sizeof(file), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      const std::string name = sharded ? file : kSingleFile;
      std::vector<std::pair<std::string, torch::Tensor>> tensors;
      for (const auto& t : shards[s]) {
        tensors.emplace_back(t, out.at(t));
        weight_map[t] = name;
      }
      safetensors::save((fs::path(tmp) / name).string(), tensors, {{"format", "pt"}});
      cov.files += 1;
    }
    if (sharded) {
      json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      hybridmoe::detail::write_file_durable((fs::path(tmp) / kIndexFile).string(),
                                            index.dump(2) + "\n");
      cov.files += 1;
    }
    hybridmoe::detail::fsync_directory(tmp);
    hybridmoe::detail::rename_durable(tmp, dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  cov.tensors = static_cast<int64_t>(map.order.size());
  cov.bytes = total;
  return cov;
}

}  // namespace hybridmoe::hf
