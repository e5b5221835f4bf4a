// config.cpp — see train.h: TOML input for the configuration keys of `hmoe train` (the keys
// themselves, set/get and the printout are config_keys.cpp's; the model options and presets
// config_model.cpp's), the layout and expert placement a configuration describes, and
// validation.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "hybridmoe/train.h"
#include "train/config_keys.h"

#ifdef HMOE_HAVE_TOML
#include <toml++/toml.h>
#endif

namespace hybridmoe {

ParallelConfig TrainConfig::layout() const {
  ParallelConfig c;
  c.tp = tp;
  c.dp = dp;
  c.pp = pp;
  c.ep = ep;
  c.etp = etp;
  return c;
}

ExpertPlacement TrainConfig::placement() const {
  return expert_placement(expert_layout, tp * dp, num_experts, ep, etp);
}

#ifdef HMOE_HAVE_TOML
namespace {

// One TOML node as the text form of key `key`, checked against the key's kind and parsed (on a
// scratch configuration) so that a bad value is refused naming the file and the key.
std::string node_text(const std::string& key, const toml::node& node, const std::string& origin) {
  const auto& k = detail::find_config_key(key, origin);
  const ConfigKind kind = k.key.kind;
  std::string text;
  if (auto v = node.value_exact<int64_t>()) {
    text = std::to_string(*v);
  } else if (auto d = node.value_exact<double>()) {
    text = detail::format_config_double(*d);
  } else if (auto b = node.value_exact<bool>()) {
    text = *b ? "true" : "false";
  } else if (auto s = node.value_exact<std::string>()) {
    text = *s;
  } else if (const auto* array = node.as_array();
             array != nullptr && kind == ConfigKind::kIntList) {
    text = "[";
    for (const auto& item : *array) {
      auto v = item.value_exact<int64_t>();
      TORCH_CHECK(v.has_value(), origin, ": config key `", key, "` expects an array of integers");
      text += (text.size() > 1 ? ", " : "") + std::to_string(*v);
    }
    text += "]";
  } else {
    TORCH_CHECK(false, origin, ": config key `", key, "` has an unsupported value type");
  }
  const bool ok = (kind == ConfigKind::kInt && node.is_integer()) ||
                  (kind == ConfigKind::kFloat && (node.is_floating_point() || node.is_integer())) ||
                  (kind == ConfigKind::kBool && node.is_boolean()) ||
                  (kind == ConfigKind::kString && node.is_string()) ||
                  (kind == ConfigKind::kIntList && node.is_array());
  const std::string kind_name = to_string(kind);
  TORCH_CHECK(ok, origin, ": config key `", key, "` expects ",
              kind == ConfigKind::kIntList
                  ? "an array of integers"
                  : (kind_name[0] == 'i' ? "an " : "a ") + kind_name + " value");
  try {
    TrainConfig scratch;
    k.set(scratch, text);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
  return text;
}

// Top-level keys, or keys inside the table of their group ([model], [optim], ...): a key in
// another table is refused, naming the table it belongs in.
void read_table(ConfigValues& out, const toml::table& tbl, const std::string& origin,
                const std::string& table_name = "") {
  for (const auto& [name, node] : tbl) {
    const std::string key(name.str());
    if (const auto* sub = node.as_table()) {
      TORCH_CHECK(table_name.empty(), origin, ": table [", table_name, ".", key,
                  "]: configuration tables do not nest; expected keys at the top level or in one "
                  "of the group tables [model], [moe], [optim], [data], [layout], [memory], "
                  "[output]");
      read_table(out, *sub, origin, key);
    } else {
      const auto& k = detail::find_config_key(key, origin);
      TORCH_CHECK(table_name.empty() || k.key.group == table_name, origin, ": config key `", key,
                  "` belongs in table [", k.key.group, "] (or at the top level), found in [",
                  table_name, "]");
      out.emplace_back(key, node_text(key, node, origin));
    }
  }
}

}  // namespace

ConfigValues read_toml_text(const std::string& text, const std::string& origin) {
  toml::table tbl;
  try {
    tbl = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream s;
    s << e.description() << " (line " << e.source().begin.line << ")";
    TORCH_CHECK(false, origin, ": TOML parse error: ", s.str());
  }
  ConfigValues out;
  read_table(out, tbl, origin);
  return out;
}
#else
ConfigValues read_toml_text(const std::string&, const std::string& origin) {
  TORCH_CHECK(false, origin, ": this build has no TOML support (toml++ was not found)");
}
#endif

ConfigValues read_toml_file(const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(!std::filesystem::is_directory(path, ec), "--config: \"", path,
              "\" is a directory; expected a TOML file");
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "--config: cannot read \"", path, "\"");
  std::ostringstream ss;
  ss << in.rdbuf();
  return read_toml_text(ss.str(), path);
}

void apply_toml_text(TrainConfig& config, const std::string& text, const std::string& origin) {
  apply_config_values(config, read_toml_text(text, origin));
}

void apply_toml_file(TrainConfig& config, const std::string& path) {
  apply_config_values(config, read_toml_file(path));
}

std::string check_config(const TrainConfig& c) {
  // Every problem is reported, one per line; the relations between keys (divisibility, the
  // layout) are checked only once the sizes they divide by are valid.
  std::vector<std::string> problems;
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) problems.push_back(msg);
  };
  auto joined = [&] {
    std::string out;
    for (const auto& p : problems) out += (out.empty() ? "" : "\n") + p;
    return out;
  };
  auto s = [](auto v) {
    std::ostringstream o;
    o << v;
    return o.str();
  };
  for (const auto& [name, v] :
       std::vector<std::pair<std::string, int64_t>>{{"d_model", c.d_model},
                                                    {"n_layers", c.n_layers},
                                                    {"n_heads", c.n_heads},
                                                    {"context", c.context},
                                                    {"vocab_size", c.vocab_size},
                                                    {"num_experts", c.num_experts},
                                                    {"top_k", c.top_k},
                                                    {"steps", c.steps},
                                                    {"batch_size", c.batch_size},
                                                    {"micro_batches", c.micro_batches},
                                                    {"seq_len", c.seq_len},
                                                    {"nproc", c.nproc},
                                                    {"tp", c.tp},
                                                    {"dp", c.dp},
                                                    {"pp", c.pp},
                                                    {"ep", c.ep},
                                                    {"etp", c.etp},
                                                    {"log_every", c.log_every},
                                                    {"stats_every", c.stats_every}})
    need(v >= 1, "config key `" + name + "` must be >= 1, got " + s(v));
  need(c.max_nonfinite_steps >= 1,
       "config key `max_nonfinite_steps` must be >= 1, got " + s(c.max_nonfinite_steps));
  need(c.checkpoint_keep >= 0,
       "config key `checkpoint_keep` must be >= 0 (0: keep all), got " + s(c.checkpoint_keep));
  need(!(c.resume && c.overwrite),
       "config keys `resume` and `overwrite` exclude each other: resume continues the run in "
       "`out`, overwrite moves it aside");
  if (!problems.empty()) return joined();
  need(c.d_mlp >= 0 && c.expert_hidden >= 0 && c.moe_every >= 0 && c.warmup_steps >= 0 &&
           c.checkpoint_every >= 0 && c.stop_after >= 0,
       "config keys `d_mlp`, `expert_hidden`, `moe_every`, `warmup_steps`, `checkpoint_every`, "
       "`stop_after` must be >= 0");
  for (const auto& [name, v] : std::vector<std::pair<std::string, int64_t>>{
           {"rotary_dim", c.rotary_dim},
           {"n_kv_heads", c.n_kv_heads},
           {"head_dim", c.head_dim},
           {"rope_original_max_positions", c.rope_original_max_positions}})
    need(v >= 0, "config key `" + name + "` must be >= 0 (0: the default), got " + s(v));
  // The data: bytes (a text file or the synthetic corpus) or token ids, each with its vocabulary.
  need(c.data.empty() || c.data_tokens.empty(),
       "config keys `data` = \"" + c.data + "\" and `data_tokens` = \"" + c.data_tokens +
           "\" exclude each other: train on bytes or on token ids");
  need(!c.data_tokens.empty() || c.vocab_size >= 256,
       "config key `vocab_size` = " + s(c.vocab_size) +
           " is below 256: byte data (`data` or the synthetic corpus) has 256 token ids; set "
           "`data_tokens` to train on token ids");
  need(c.pp <= c.n_layers, "config key `pp` = " + s(c.pp) + " exceeds `n_layers` = " +
                               s(c.n_layers) + " (every stage needs a block)");
  need(c.zero_stage == 0 || c.zero_stage == 1,
       "config key `zero_stage` = " + s(c.zero_stage) + ": expected 0 or 1");
  need(c.a2a_overlap_degree >= 1,
       "config key `a2a_overlap_degree` = " + s(c.a2a_overlap_degree) + " must be >= 1");
  need(c.a2a_overlap_degree == 1 || c.ep > 1 || c.expert_layout == ExpertLayout::kAdaptive,
       "config key `a2a_overlap_degree` = " + s(c.a2a_overlap_degree) +
           " overlaps the expert all-to-all: it needs `ep` > 1 or the adaptive expert layout");
  need(c.a2a_algorithm == A2AAlgorithm::kFlat || c.a2a_overlap_degree == 1,
       "config keys `a2a_algorithm` = \"hierarchical\" and `a2a_overlap_degree` = " +
           s(c.a2a_overlap_degree) +
           " exclude each other: the chunked overlap pipelines flat all-to-alls");
  need(c.a2a_algorithm == A2AAlgorithm::kFlat || c.replicate == "off",
       "config keys `a2a_algorithm` = \"hierarchical\" and `replicate` = \"" + c.replicate +
           "\" exclude each other: the replicating dispatcher exchanges its rows flat");
  need(c.adaptive_recheck_every >= 1, "config key `adaptive_recheck_every` must be >= 1");
  bool replicate_ok = true;
  try {
    parse_replicate(c.replicate);
  } catch (const c10::Error&) {
    replicate_ok = false;
  }
  need(replicate_ok, "config key `replicate` = \"" + c.replicate +
                         "\": expected off, auto or a positive number of experts");
  need(c.replicate == "off" || (c.ep > 1 && c.expert_layout == ExpertLayout::kFixed),
       "config key `replicate` = \"" + c.replicate +
           "\" replicates hot experts over the ep ranks: it needs `ep` > 1 and "
           "`expert_layout` = \"fixed\"");
  const std::string r_text = c.adaptive_r.to_string();
  const bool auto_r = c.adaptive_r.kind() == AdaptiveR::Kind::kAuto;
  if (c.expert_layout == ExpertLayout::kAdaptive) {
    need(c.ep == 1 && c.etp == 1 && c.nproc > 1,
         "config key `expert_layout` = \"adaptive\" places the experts itself over the tp * dp "
         "ranks of a stage: it needs `ep` = 1, `etp` = 1 and more than one rank");
    // S ranks hold the slices of one expert; r may be 0 or a divisor of S (placement.h).
    const ExpertPlacement p = c.placement();
    const bool ok = auto_r || (c.adaptive_r.is_value() && p.is_valid_r(c.adaptive_r.value()));
    need(ok, "config key `adaptive_r` = \"" + r_text + "\": expected auto or one of " +
                 p.valid_r_text() + " (S = " + s(p.shards) + " ranks per expert)");
    // auto times one step with each valid r at the start of every period, then runs the fastest:
    // a period of no more steps than there are r would never run the choice.
    const int64_t count = static_cast<int64_t>(p.valid_r.size());
    need(!auto_r || c.adaptive_recheck_every > count,
         "config key `adaptive_recheck_every` = " + s(c.adaptive_recheck_every) +
             " must exceed the number of valid r (" + s(count) + ": " + p.valid_r_text() +
             ") with adaptive_r = auto: each period times every r once, then runs the fastest");
  } else {
    need(c.adaptive_r == AdaptiveR(),
         "config key `adaptive_r` = \"" + r_text + "\" needs `expert_layout` = \"adaptive\"");
  }
  need(c.tp * c.dp * c.pp == c.nproc, "config keys `tp` * `dp` * `pp` = " + s(c.tp * c.dp * c.pp) +
                                          " must equal `nproc` = " + s(c.nproc));
  // Heads of d_model / n_heads wide (multi-head attention without head_dim); the rest of the
  // architecture is its own check's, below.
  const bool heads_divide =
      c.head_dim > 0 || c.attention != AttentionType::kMultiHead || c.d_model % c.n_heads == 0;
  need(heads_divide, "config key `n_heads` = " + s(c.n_heads) +
                         " must divide `d_model` = " + s(c.d_model) + " (or give `head_dim`)");
  need(c.n_heads % c.tp == 0,
       "config key `tp` = " + s(c.tp) + " must divide `n_heads` = " + s(c.n_heads));
  const int64_t mlp = c.d_mlp > 0 ? c.d_mlp : 4 * c.d_model;
  const int64_t hidden = c.expert_hidden > 0 ? c.expert_hidden : mlp;
  need(mlp % c.tp == 0,
       "config key `tp` = " + s(c.tp) + " must divide the MLP width " + s(mlp) + " (`d_mlp`)");
  need(c.num_experts % c.ep == 0,
       "config key `ep` = " + s(c.ep) + " must divide `num_experts` = " + s(c.num_experts));
  need(c.etp == 1 || c.etp == c.tp,
       "config key `etp` = " + s(c.etp) + " must be 1 or `tp` = " + s(c.tp));
  need(hidden % c.etp == 0, "config key `etp` = " + s(c.etp) + " must divide the expert width " +
                                s(hidden) + " (`expert_hidden`)");
  need((c.tp * c.dp) % (c.ep * c.etp) == 0, "config keys `ep` * `etp` = " + s(c.ep * c.etp) +
                                                " must divide `tp` * `dp` = " + s(c.tp * c.dp));
  need(c.top_k <= c.num_experts,
       "config key `top_k` = " + s(c.top_k) + " exceeds `num_experts` = " + s(c.num_experts));
  need(c.batch_size % (c.dp * c.micro_batches) == 0,
       "config key `batch_size` = " + s(c.batch_size) +
           " must be divisible by `dp` * `micro_batches` = " + s(c.dp * c.micro_batches));
  need(c.seq_len <= c.context,
       "config key `seq_len` = " + s(c.seq_len) + " exceeds `context` = " + s(c.context));
  need(c.lr > 0 && c.min_lr >= 0 && c.min_lr <= c.lr,
       "config keys `lr` > 0 and 0 <= `min_lr` <= "
       "`lr` expected, got lr " +
           s(c.lr) + ", min_lr " + s(c.min_lr));
  for (const auto& k : detail::config_key_table())
    if (k.key.kind == ConfigKind::kFloat)
      need(std::isfinite(std::stod(k.get(c))),
           "config key `" + k.key.name + "` must be a finite number, got " + k.get(c));
  need(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
       "config keys `beta1`, `beta2` must be in [0, 1)");
  need(c.train_lines >= 1, "config key `train_lines` must be >= 1");
  need(c.out != "", "config key `out` must not be empty");
  bool known_gate = false;
  for (const auto& g : known_gate_names()) known_gate = known_gate || g == c.gate;
  need(known_gate, "config key `gate` = \"" + c.gate + "\" is not a registered gate");
  // The architecture as the model checks it (heads, kv heads and tp, head and latent sizes,
  // rotary dims, mlp_only_layers): the option names of GPTOptions are the keys'.
  auto first_line = [](const std::exception& e) {
    const std::string what = e.what();
    return what.substr(0, what.find('\n'));
  };
  // A convention that does not parse is the gate's problem, below (model_options reads it).
  bool known_convention = true;
  try {
    parse_convention(c.convention);
  } catch (const std::exception&) {
    known_convention = false;
  }
  try {
    if (heads_divide && known_convention) c.model_options().check(c.tp);
  } catch (const std::exception& e) {
    need(false, "config keys of the architecture (`tp` = " + s(c.tp) + "): " + first_line(e));
  }
  if (known_gate && c.top_k >= 1 && c.top_k <= c.num_experts) {
    // The gate as the model builds it: options (groups, k within the kept groups, family options
    // on another gate, a convention) that this gate cannot follow are a problem naming the key.
    // Building it draws its initial weights: the global generator is left as it was.
    auto generator = at::detail::getDefaultCPUGenerator();
    at::Tensor state;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      state = generator.get_state();
    }
    try {
      make_gate(c.d_model, c.num_experts, c.model_options().gate());
    } catch (const std::exception& e) {
      need(false, "config keys `gate` = \"" + c.gate + "\", `convention` = \"" + c.convention +
                      "\", `top_k` = " + s(c.top_k) + ": " + first_line(e));
    }
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state);
  }
  if (problems.empty()) {
    const std::string layout = c.layout().check(c.tp * c.dp * c.pp);
    need(layout.empty(), "config keys `tp`/`dp`/`pp`/`ep`/`etp`: " + layout);
  }
  return joined();
}

void validate_config(const TrainConfig& config) {
  const std::string why = check_config(config);
  TORCH_CHECK(why.empty(), why);
}

}  // namespace hybridmoe
