// hf_command.cpp — Hugging Face checkpoints from the command line:
//   hmoe convert --from-hf DIR --to-layout tp,dp,pp,ep,etp --out OUT   a checkpoint of that layout
//   hmoe convert CKPT --to-hf DIR [--fused] [--max-shard-mb N]          config.json + safetensors
//   hmoe logits (--hf DIR | --checkpoint CKPT) --ids 1,2,3 --out F.npy  one sequence's logits
// Each conversion prints its coverage (tensors, bytes, parameters per rank) and writes it as JSON
// beside its output.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/files.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/hf.h"
#include "hybridmoe/npy.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

namespace fs = std::filesystem;

std::vector<int64_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      TORCH_CHECK(used == item.size(), "");
    } catch (const std::exception&) {
      C10_THROW_ERROR(Error,
                      c10::str(flag, ": expected comma-separated integers, got \"", text, "\""));
    }
  }
  TORCH_CHECK(!out.empty(), flag, ": expected at least one id");
  return out;
}

GPT load_model_for_inference(const std::string& hf_dir, const std::string& checkpoint,
                             torch::ScalarType dtype, const std::string& allow_unused) {
  TORCH_CHECK(hf_dir.empty() != checkpoint.empty(),
              "expected exactly one of --hf and --checkpoint");
  if (!checkpoint.empty()) {
    GPT model = load_full_model(checkpoint);
    model->to(dtype);
    return model;
  }
  const hf::Config c = hf::read_config(hf_dir);
  GPT model(c.options);
  model->to(dtype);
  hf::load(*model, c.family, hf::Checkpoint::open(hf_dir), allow_unused);
  return model;
}

namespace {

struct ConvertArgs {
  std::string source, from_hf, to_hf, to_layout, out, allow_unused, dtype = "float32";
  bool fused = false;
  double max_shard_mb = 0;
};

void write_json(const std::string& path, const nlohmann::json& j) {
  hybridmoe::detail::write_file_durable(path, j.dump(2) + "\n");
}

nlohmann::json coverage_json(const hf::Coverage& c) {
  return {{"tensors", c.tensors},   {"bytes", c.bytes}, {"parameters", c.parameters},
          {"elements", c.elements}, {"files", c.files}, {"unused", c.unused}};
}

// Hugging Face directory -> a checkpoint of the requested layout, written by its ranks.
int convert_from_hf(const ConvertArgs& a) {
  TORCH_CHECK(!fs::exists(fs::path(a.out) / "checkpoints"), "convert --from-hf: ", a.out,
              " already holds checkpoints; choose a new --out");
  TrainConfig c;
  apply_hf_model(c, a.from_hf);
  set_layout_from_list(c, a.to_layout);
  c.init_from_hf = a.from_hf;
  c.allow_unused = a.allow_unused;
  c.dtype = parse_dtype(a.dtype);
  c.out = a.out;
  c.resume = false;
  c.progress = false;
  validate_config(c);
  return run_here_or_on_local_ranks(c.nproc, [&] {
    auto world = dist::init();
    at::set_num_threads(1);
    const hf::Coverage mine = import_hf_checkpoint(c, *world);
    // Every rank's coverage, reported by rank 0.
    auto row =
        torch::tensor({mine.tensors, mine.bytes, mine.parameters, mine.elements}).view({1, 4});
    auto all = world->size() > 1 ? dist::all_gather_rows(row, world->group()) : row;
    if (world->rank() == 0) {
      nlohmann::json ranks = nlohmann::json::array();
      for (int64_t r = 0; r < all.size(0); ++r) {
        hf::Coverage x;
        x.tensors = all[r][0].item<int64_t>();
        x.bytes = all[r][1].item<int64_t>();
        x.parameters = all[r][2].item<int64_t>();
        x.elements = all[r][3].item<int64_t>();
        std::printf("rank %lld: read %s\n", static_cast<long long>(r), x.text().c_str());
        ranks.push_back(coverage_json(x));
      }
      for (const auto& n : mine.unused) std::printf("unused (--allow-unused): %s\n", n.c_str());
      const std::string ckpt = latest_checkpoint(c.out);
      write_json((fs::path(c.out) / "conversion_report.json").string(),
                 {{"from_hf", a.from_hf},
                  {"layout", c.layout().to_string()},
                  {"checkpoint", ckpt},
                  {"unused", mine.unused},
                  {"ranks", ranks}});
      std::printf("wrote %s (layout %s, %s)\n", ckpt.c_str(), c.layout().to_string().c_str(),
                  to_string(c.model).c_str());
    }
    world->finalize();
    return 0;
  });
}

// A checkpoint of any layout (its consolidated model) -> a Hugging Face directory.
int convert_to_hf(const ConvertArgs& a) {
  const std::string dir = resolve_checkpoint(a.source, "convert");
  const TrainConfig c = read_checkpoint_config(dir);
  GPT model = load_full_model(dir);
  hf::SaveOptions o;
  o.layout = a.fused ? hf::ExpertLayout::kFused : hf::ExpertLayout::kPerExpert;
  TORCH_CHECK(a.max_shard_mb >= 0, "--max-shard-mb: expected >= 0, got ", a.max_shard_mb);
  o.max_shard_bytes = static_cast<int64_t>(a.max_shard_mb * 1024 * 1024);
  const std::string dtype = !a.dtype.empty()      ? a.dtype
                            : !c.hf_dtype.empty() ? c.hf_dtype
                                                  : to_string(c.dtype);
  o.dtype = hf::parse_dtype(dtype, "--dtype");
  const hf::Coverage cov = hf::save(*model, c.model, a.to_hf, o);
  std::printf("wrote %s from %s (layout %s): %s, %s experts, %s\n", a.to_hf.c_str(), dir.c_str(),
              c.layout().to_string().c_str(), cov.text().c_str(), hf::to_string(o.layout).c_str(),
              dtype.c_str());
  write_json((fs::path(a.to_hf) / "hmoe_conversion.json").string(),
             {{"checkpoint", dir},
              {"layout", c.layout().to_string()},
              {"expert_layout", hf::to_string(o.layout)},
              {"dtype", dtype},
              {"written", coverage_json(cov)}});
  return 0;
}

}  // namespace

void add_hf_commands(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  auto* conv = app.add_subcommand(
      "convert",
      "Hugging Face checkpoints in and out: --from-hf DIR --to-layout L --out OUT, or CKPT "
      "--to-hf DIR");
  conv->add_option("checkpoint", a->source,
                   "With --to-hf: a checkpoint directory, or a run directory (its newest)");
  conv->add_option("--from-hf", a->from_hf, "A Hugging Face model directory to import");
  conv->add_option("--to-layout", a->to_layout, "With --from-hf: the layout tp,dp,pp,ep,etp");
  conv->add_option("--out", a->out, "With --from-hf: the output (its checkpoints/ receives it)");
  conv->add_option("--allow-unused", a->allow_unused,
                   "With --from-hf: regex of tensors deliberately left unused (listed)");
  conv->add_option("--to-hf", a->to_hf, "Export the checkpoint as a Hugging Face directory");
  conv->add_flag("--fused", a->fused,
                 "With --to-hf: experts as fused gate_up_proj / down_proj (Transformers v5)");
  conv->add_option("--max-shard-mb", a->max_shard_mb,
                   "With --to-hf: shards of at most this size with an index (0: one file)");
  conv->add_option("--dtype", a->dtype,
                   "--from-hf: the checkpoint's dtype (float32 | float64); --to-hf: the tensors' "
                   "dtype on disk (default: the imported model's, else the run's)");
  add_node_flags(conv);
  conv->callback([a, conv] {
    const bool from = !a->from_hf.empty(), to = !a->to_hf.empty();
    TORCH_CHECK(from != to, "convert: expected exactly one of --from-hf and --to-hf");
    int code = 0;
    if (from) {
      TORCH_CHECK(!a->to_layout.empty() && !a->out.empty() && a->source.empty(),
                  "convert --from-hf: expected --to-layout and --out (and no checkpoint argument)");
      if (conv->count("--dtype") == 0) a->dtype = "float32";
      code = convert_from_hf(*a);
    } else {
      TORCH_CHECK(!a->source.empty(), "convert --to-hf: expected the checkpoint to export");
      if (conv->count("--dtype") == 0) a->dtype = "";
      code = convert_to_hf(*a);
    }
    if (code != 0) throw CLI::RuntimeError(code);
  });

  struct LogitsArgs {
    std::string hf, checkpoint, ids, out, dtype = "float64", allow_unused;
  };
  auto l = std::make_shared<LogitsArgs>();
  auto* lg = app.add_subcommand("logits", "The logits [T, vocab] of one sequence as a .npy file");
  lg->add_option("--hf", l->hf, "A Hugging Face model directory");
  lg->add_option("--checkpoint", l->checkpoint, "A hybridmoe checkpoint directory");
  lg->add_option("--ids", l->ids, "Token ids, comma-separated")->required();
  lg->add_option("--out", l->out, "Output .npy file")->required();
  lg->add_option("--dtype", l->dtype, "Compute in float32 or float64 (from the stored weights)")
      ->capture_default_str();
  lg->add_option("--allow-unused", l->allow_unused, "Regex of tensors deliberately left unused");
  lg->callback([l] {
    torch::NoGradGuard ng;
    const auto ids = parse_id_list(l->ids, "--ids");
    GPT model = load_model_for_inference(l->hf, l->checkpoint, scalar_type(parse_dtype(l->dtype)),
                                         l->allow_unused);
    model->eval();
    for (int64_t id : ids)
      TORCH_CHECK(id >= 0 && id < model->options.vocab_size(), "--ids: id ", id,
                  " is outside the vocabulary [0, ", model->options.vocab_size(), ")");
    auto logits = model->forward(torch::tensor(ids).view({1, -1})).logits[0];
    npy::save(l->out, logits.contiguous());
    std::printf("wrote %s: logits [%lld, %lld] %s\n", l->out.c_str(),
                static_cast<long long>(logits.size(0)), static_cast<long long>(logits.size(1)),
                l->dtype.c_str());
  });
}

}  // namespace hybridmoe::cli
