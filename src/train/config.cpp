// config.cpp — see train.h: the configuration keys of `hmoe train`, TOML input, validation and
// the effective-configuration printout.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "hybridmoe/train.h"

#ifdef HMOE_HAVE_TOML
#include <toml++/toml.h>
#endif

namespace hybridmoe {

namespace {

// One key: its description and how to read and write it on a TrainConfig.
struct KeyAccess {
  ConfigKey key;
  std::function<void(TrainConfig&, const std::string&)> set;
  std::function<std::string(const TrainConfig&)> get;
};

std::string format_double(double v) {
  std::ostringstream s;
  s.precision(10);
  s << v;
  std::string t = s.str();
  if (t.find_first_of(".eEn") == std::string::npos) t += ".0";
  return t;
}

template <typename T>
KeyAccess make_key(const char* name, const char* group, const char* help, T TrainConfig::*field) {
  KeyAccess k;
  std::string kind;
  if constexpr (std::is_same_v<T, int64_t>) kind = "int";
  if constexpr (std::is_same_v<T, double>) kind = "float";
  if constexpr (std::is_same_v<T, bool>) kind = "bool";
  if constexpr (std::is_same_v<T, std::string>) kind = "string";
  k.key = ConfigKey{name, kind, group, help};
  const std::string key = name;
  k.set = [field, key, kind](TrainConfig& c, const std::string& v) {
    try {
      size_t used = 0;
      if constexpr (std::is_same_v<T, int64_t>) {
        c.*field = std::stoll(v, &used);
      } else if constexpr (std::is_same_v<T, double>) {
        c.*field = std::stod(v, &used);
      } else if constexpr (std::is_same_v<T, bool>) {
        TORCH_CHECK(v == "true" || v == "false" || v == "1" || v == "0", "config key `", key,
                    "`: expected true or false, got \"", v, "\"");
        c.*field = v == "true" || v == "1";
        used = v.size();
      } else {
        c.*field = v;
        used = v.size();
      }
      TORCH_CHECK(used == v.size(), "config key `", key, "`: trailing characters in \"", v, "\"");
    } catch (const std::invalid_argument&) {
      TORCH_CHECK(false, "config key `", key, "`: \"", v, "\" is not a valid ", kind);
    } catch (const std::out_of_range&) {
      TORCH_CHECK(false, "config key `", key, "`: \"", v, "\" is out of range");
    }
  };
  k.get = [field](const TrainConfig& c) {
    if constexpr (std::is_same_v<T, int64_t>) return std::to_string(c.*field);
    if constexpr (std::is_same_v<T, double>) return format_double(c.*field);
    if constexpr (std::is_same_v<T, bool>) return std::string(c.*field ? "true" : "false");
    if constexpr (std::is_same_v<T, std::string>) return c.*field;
  };
  return k;
}

#define HMOE_KEY(name, group, help) make_key(#name, group, help, &TrainConfig::name)

const std::vector<KeyAccess>& table() {
  static const std::vector<KeyAccess> keys = {
      HMOE_KEY(d_model, "model", "model width"),
      HMOE_KEY(n_layers, "model", "transformer blocks"),
      HMOE_KEY(n_heads, "model", "attention heads"),
      HMOE_KEY(d_mlp, "model", "dense MLP width (0: 4 * d_model)"),
      HMOE_KEY(context, "model", "longest sequence"),
      HMOE_KEY(moe_every, "model", "an MoE layer every N blocks (0: dense)"),
      HMOE_KEY(num_experts, "moe", "experts per MoE layer"),
      HMOE_KEY(expert_hidden, "moe", "expert hidden width (0: the MLP's)"),
      HMOE_KEY(top_k, "moe", "experts per token"),
      HMOE_KEY(gate, "moe", "gate type (topk, gshard, switch, noisy, sinkhorn, expert_choice)"),
      HMOE_KEY(convention, "moe",
               "routing convention of a peer: none, deepspeed, tutel, megatron, gshard"),
      HMOE_KEY(capacity_factor, "moe", "expert capacity factor (<= 0: dropless)"),
      HMOE_KEY(aux_loss_coef, "moe", "balance loss coefficient"),
      HMOE_KEY(z_loss_coef, "moe", "router z-loss coefficient"),
      HMOE_KEY(steps, "optim", "optimizer steps"),
      HMOE_KEY(batch_size, "optim", "sequences per step over all dp ranks"),
      HMOE_KEY(micro_batches, "optim", "gradient accumulation passes per step"),
      HMOE_KEY(seq_len, "optim", "tokens per sequence"),
      HMOE_KEY(lr, "optim", "peak learning rate"),
      HMOE_KEY(min_lr, "optim", "final learning rate of the cosine decay"),
      HMOE_KEY(warmup_steps, "optim", "linear warmup steps"),
      HMOE_KEY(weight_decay, "optim", "AdamW weight decay (matrices only)"),
      HMOE_KEY(beta1, "optim", "AdamW beta1"),
      HMOE_KEY(beta2, "optim", "AdamW beta2"),
      HMOE_KEY(grad_clip, "optim", "global gradient-norm clip (<= 0: off)"),
      HMOE_KEY(seed, "optim", "seed of weights and batches"),
      HMOE_KEY(max_nonfinite_steps, "optim",
               "steps in a row with a NaN/Inf loss or gradient norm (each skipped) before the "
               "run stops"),
      HMOE_KEY(data, "data", "text file to train on (empty: embedded synthetic tasks)"),
      HMOE_KEY(train_lines, "data", "lines of the synthetic corpus"),
      HMOE_KEY(eval_per_task, "data", "held-out samples per synthetic task"),
      HMOE_KEY(nproc, "layout", "local ranks to launch"),
      HMOE_KEY(tp, "layout", "tensor parallel degree"),
      HMOE_KEY(dp, "layout", "data parallel degree"),
      HMOE_KEY(pp, "layout", "pipeline stages (blocks split evenly, micro_batches flow through)"),
      HMOE_KEY(ep, "layout", "expert parallel degree"),
      HMOE_KEY(etp, "layout", "expert tensor parallel degree (1 or tp)"),
      HMOE_KEY(pipeline_schedule, "layout", "micro-batch schedule with pp > 1: 1f1b or gpipe"),
      HMOE_KEY(expert_layout, "layout", "MoE expert placement: fixed (ep/etp) or adaptive (Tutel)"),
      HMOE_KEY(adaptive_r, "layout", "adaptive layout degree r: an integer or auto (timed)"),
      HMOE_KEY(adaptive_recheck_every, "layout", "adaptive_r = auto: re-time every N steps"),
      HMOE_KEY(a2a_overlap_degree, "layout", "chunks of the expert all-to-all overlapped (1: off)"),
      HMOE_KEY(zero_stage, "memory", "0: replicated optimizer; 1: ZeRO-1 sharded state"),
      HMOE_KEY(optimizer_tile_mb, "memory", "optimizer step temporaries per tile (<= 0: untiled)"),
      HMOE_KEY(dtype, "memory", "parameters and activations: float32 or float64"),
      HMOE_KEY(recompute, "memory", "activations recomputed in backward: none, block or moe"),
      HMOE_KEY(recompute_cache_comm, "memory",
               "recompute replays the forward's all-to-alls instead of repeating them"),
      make_key("layout", "layout", "manual (tp/dp/pp/ep/etp as given) or auto (hmoe plan's choice)",
               &TrainConfig::layout_mode),
      HMOE_KEY(layout_probe, "layout",
               "layout = auto: measure the machine on the ranks first (else default figures)"),
      HMOE_KEY(out, "output", "output directory"),
      HMOE_KEY(log_every, "output", "metrics every N steps"),
      HMOE_KEY(stats_every, "output", "expert load every N steps"),
      HMOE_KEY(checkpoint_every, "output", "checkpoint every N steps (0: at the end only)"),
      HMOE_KEY(stop_after, "output", "stop after this step with a checkpoint (0: never)"),
      HMOE_KEY(checkpoint_keep, "output", "keep the newest N checkpoints (0: all)"),
      HMOE_KEY(resume, "output", "continue from the newest complete checkpoint in out"),
      HMOE_KEY(overwrite, "output",
               "start afresh in an out holding a run (moved aside to out.old-N)"),
      HMOE_KEY(progress, "output", "rank 0 progress bar"),
      HMOE_KEY(eval, "output", "held-out task accuracy at the end"),
  };
  return keys;
}

// The key named `name`; `origin` (a file, when there is one) leads the error text.
const KeyAccess& find_key(const std::string& name, const std::string& origin = "") {
  for (const auto& k : table())
    if (k.key.name == name) return k;
  std::ostringstream known;
  for (const auto& k : table()) known << (known.tellp() > 0 ? ", " : "") << k.key.name;
  TORCH_CHECK(false, origin.empty() ? "" : origin + ": ", "unknown config key `", name,
              "`; known keys: ", known.str());
}

}  // namespace

ParallelConfig TrainConfig::layout() const {
  ParallelConfig c;
  c.tp = tp;
  c.dp = dp;
  c.pp = pp;
  c.ep = ep;
  c.etp = etp;
  return c;
}

GPTOptions TrainConfig::model_options() const {
  GateOptions g;
  int64_t r = 1;  // "auto" starts at r = 1 (the trainer times the others); checked by check_config
  if (adaptive_r != "auto") {
    try {
      r = std::stoll(adaptive_r);
    } catch (const std::exception&) {
      TORCH_CHECK(false, "config key `adaptive_r` = \"", adaptive_r,
                  "\": expected an integer or auto");
    }
  }
  g.type(gate)
      .convention(parse_convention(convention))
      .top_k(top_k)
      .capacity_factor(capacity_factor)
      .aux_loss_coef(aux_loss_coef)
      .z_loss_coef(z_loss_coef);
  return GPTOptions()
      .context(context)
      .d_model(d_model)
      .n_layers(n_layers)
      .n_heads(n_heads)
      .d_mlp(d_mlp)
      .moe_every(moe_every)
      .num_experts(num_experts)
      .expert_hidden(expert_hidden)
      .gate(g)
      .expert_layout(expert_layout)
      .adaptive_r(r)
      .a2a_overlap_degree(a2a_overlap_degree)
      .recompute(recompute)
      .recompute_cache_comm(recompute_cache_comm);
}

const std::vector<ConfigKey>& train_config_keys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> out;
    for (const auto& k : table()) out.push_back(k.key);
    return out;
  }();
  return keys;
}

void set_config_value(TrainConfig& config, const std::string& key, const std::string& value) {
  find_key(key).set(config, value);
}

std::string get_config_value(const TrainConfig& config, const std::string& key) {
  return find_key(key).get(config);
}

#ifdef HMOE_HAVE_TOML
namespace {

// Applies one TOML node under its leaf key.
void apply_node(TrainConfig& config, const std::string& key, const toml::node& node,
                const std::string& origin) {
  const auto& k = find_key(key, origin);
  std::string text;
  if (auto v = node.value_exact<int64_t>()) {
    text = std::to_string(*v);
  } else if (auto d = node.value_exact<double>()) {
    text = format_double(*d);
  } else if (auto b = node.value_exact<bool>()) {
    text = *b ? "true" : "false";
  } else if (auto s = node.value_exact<std::string>()) {
    text = *s;
  } else {
    TORCH_CHECK(false, origin, ": config key `", key, "` has an unsupported value type");
  }
  const std::string& kind = k.key.kind;
  const bool ok = (kind == "int" && node.is_integer()) ||
                  (kind == "float" && (node.is_floating_point() || node.is_integer())) ||
                  (kind == "bool" && node.is_boolean()) || (kind == "string" && node.is_string());
  TORCH_CHECK(ok, origin, ": config key `", key, "` expects a ", kind, " value");
  try {
    k.set(config, text);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
}

// Top-level keys, or keys inside the table of their group ([model], [optim], ...): a key in
// another table is refused, naming the table it belongs in.
void apply_table(TrainConfig& config, const toml::table& tbl, const std::string& origin,
                 const std::string& table_name = "") {
  for (const auto& [name, node] : tbl) {
    const std::string key(name.str());
    if (const auto* sub = node.as_table()) {
      TORCH_CHECK(table_name.empty(), origin, ": table [", table_name, ".", key,
                  "]: configuration tables do not nest; expected keys at the top level or in one "
                  "of the group tables [model], [moe], [optim], [data], [layout], [memory], "
                  "[output]");
      apply_table(config, *sub, origin, key);
    } else {
      const auto& k = find_key(key, origin);
      TORCH_CHECK(table_name.empty() || k.key.group == table_name, origin, ": config key `", key,
                  "` belongs in table [", k.key.group, "] (or at the top level), found in [",
                  table_name, "]");
      apply_node(config, key, node, origin);
    }
  }
}

}  // namespace

void apply_toml_text(TrainConfig& config, const std::string& text, const std::string& origin) {
  toml::table tbl;
  try {
    tbl = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream s;
    s << e.description() << " (line " << e.source().begin.line << ")";
    TORCH_CHECK(false, origin, ": TOML parse error: ", s.str());
  }
  apply_table(config, tbl, origin);
}
#else
void apply_toml_text(TrainConfig&, const std::string&, const std::string& origin) {
  TORCH_CHECK(false, origin, ": this build has no TOML support (toml++ was not found)");
}
#endif

void apply_toml_file(TrainConfig& config, const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(!std::filesystem::is_directory(path, ec), "--config: \"", path,
              "\" is a directory; expected a TOML file");
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "--config: cannot read \"", path, "\"");
  std::ostringstream ss;
  ss << in.rdbuf();
  apply_toml_text(config, ss.str(), path);
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
  need(c.pp <= c.n_layers, "config key `pp` = " + s(c.pp) + " exceeds `n_layers` = " +
                               s(c.n_layers) + " (every stage needs a block)");
  need(c.zero_stage == 0 || c.zero_stage == 1,
       "config key `zero_stage` = " + s(c.zero_stage) + ": expected 0 or 1");
  need(c.dtype == "float32" || c.dtype == "float64",
       "config key `dtype` = \"" + c.dtype + "\": expected \"float32\" or \"float64\"");
  need(c.recompute == "none" || c.recompute == "block" || c.recompute == "moe",
       "config key `recompute` = \"" + c.recompute + "\": expected \"none\", \"block\" or \"moe\"");
  need(c.a2a_overlap_degree >= 1,
       "config key `a2a_overlap_degree` = " + s(c.a2a_overlap_degree) + " must be >= 1");
  need(c.a2a_overlap_degree == 1 || c.ep > 1 || c.expert_layout == "adaptive",
       "config key `a2a_overlap_degree` = " + s(c.a2a_overlap_degree) +
           " overlaps the expert all-to-all: it needs `ep` > 1 or the adaptive expert layout");
  need(c.adaptive_recheck_every >= 1, "config key `adaptive_recheck_every` must be >= 1");
  need(c.expert_layout == "fixed" || c.expert_layout == "adaptive",
       "config key `expert_layout` = \"" + c.expert_layout +
           "\": expected \"fixed\" or \"adaptive\"");
  if (c.expert_layout == "adaptive") {
    need(c.ep == 1 && c.etp == 1 && c.nproc > 1,
         "config key `expert_layout` = \"adaptive\" places the experts itself over the tp * dp "
         "ranks of a stage: it needs `ep` = 1, `etp` = 1 and more than one rank");
    // S ranks hold the slices of one expert; r may be 0 or a divisor of S.
    const int64_t W = c.tp * c.dp, S = c.num_experts < W ? W / c.num_experts : 1;
    std::string valid = "0";
    for (int64_t d = 1; d <= S; ++d)
      if (S % d == 0) valid += ", " + s(d);
    bool ok = c.adaptive_r == "auto";
    if (!ok) {
      try {
        size_t used = 0;
        const int64_t r = std::stoll(c.adaptive_r, &used);
        ok = used == c.adaptive_r.size() && (r == 0 || (r >= 1 && S % r == 0));
      } catch (const std::exception&) {
      }
    }
    need(ok, "config key `adaptive_r` = \"" + c.adaptive_r + "\": expected auto or one of " +
                 valid + " (S = " + s(S) + " ranks per expert)");
    // auto times one step with each valid r at the start of every period, then runs the fastest:
    // a period of no more steps than there are r would never run the choice.
    int64_t count = 1;
    for (int64_t d = 1; d <= S; ++d) count += S % d == 0 ? 1 : 0;
    need(c.adaptive_r != "auto" || c.adaptive_recheck_every > count,
         "config key `adaptive_recheck_every` = " + s(c.adaptive_recheck_every) +
             " must exceed the number of valid r (" + s(count) + ": " + valid +
             ") with adaptive_r = auto: each period times every r once, then runs the fastest");
  } else {
    need(c.adaptive_r == "1",
         "config key `adaptive_r` = \"" + c.adaptive_r + "\" needs `expert_layout` = \"adaptive\"");
  }
  need(c.pipeline_schedule == "1f1b" || c.pipeline_schedule == "gpipe",
       "config key `pipeline_schedule` = \"" + c.pipeline_schedule +
           "\": expected \"1f1b\" or \"gpipe\"");
  need(c.layout_mode == "manual" || c.layout_mode == "auto",
       "config key `layout` = \"" + c.layout_mode + "\": expected \"manual\" or \"auto\"");
  need(c.tp * c.dp * c.pp == c.nproc, "config keys `tp` * `dp` * `pp` = " + s(c.tp * c.dp * c.pp) +
                                          " must equal `nproc` = " + s(c.nproc));
  need(c.d_model % c.n_heads == 0,
       "config key `n_heads` = " + s(c.n_heads) + " must divide `d_model` = " + s(c.d_model));
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
  for (const auto& k : table())
    if (k.key.kind == "float")
      need(std::isfinite(std::stod(k.get(c))),
           "config key `" + k.key.name + "` must be a finite number, got " + k.get(c));
  need(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
       "config keys `beta1`, `beta2` must be in [0, 1)");
  need(c.train_lines >= 1, "config key `train_lines` must be >= 1");
  need(c.out != "", "config key `out` must not be empty");
  bool known_gate = false;
  for (const auto& g : known_gate_names()) known_gate = known_gate || g == c.gate;
  need(known_gate, "config key `gate` = \"" + c.gate + "\" is not a registered gate");
  if (known_gate && c.convention != "none" && c.top_k >= 1 && c.top_k <= c.num_experts &&
      c.num_experts >= 1 && c.d_model >= 1) {
    // The gate with its convention, as the model builds it: a convention that this gate or k
    // cannot follow is a problem naming the key.
    try {
      const auto g = c.model_options().gate();
      make_gate(c.d_model, c.num_experts, g);
    } catch (const std::exception& e) {
      std::string what = e.what();
      what = what.substr(0, what.find('\n'));
      need(false, "config keys `gate` = \"" + c.gate + "\", `convention` = \"" + c.convention +
                      "\", `top_k` = " + s(c.top_k) + ": " + what);
    }
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

std::string config_to_toml(const TrainConfig& config) {
  std::ostringstream s;
  std::string group;
  for (const auto& k : table()) {
    if (k.key.group != group) {
      group = k.key.group;
      s << (s.tellp() > 0 ? "\n" : "") << "# ---- " << group << " ----\n";
    }
    std::string v = k.get(config);
    if (k.key.kind == "string") {
      std::string q;
      for (char ch : v)
        q += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
      v = "\"" + q + "\"";
    }
    s << k.key.name << " = " << v << "  # " << k.key.help << "\n";
  }
  return s.str();
}

}  // namespace hybridmoe
