// report.cpp — see report.h: summary.json and report.html (loss curve and expert-load heatmaps
// drawn as inline SVG).
#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "hybridmoe/collectives.h"

namespace hybridmoe::detail {

std::string json_string(const std::string& s) {
  std::ostringstream o;
  o << '"';
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      o << '\\' << ch;
    } else if (ch < 0x20) {
      o << "\\u" << std::hex << std::setw(4) << std::setfill('0') << static_cast<int>(ch)
        << std::dec;
    } else {
      o << ch;
    }
  }
  o << '"';
  return o.str();
}

std::string json_numbers(const std::vector<double>& v) {
  std::ostringstream o;
  o.precision(8);
  o << "[";
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << (std::isfinite(v[i]) ? v[i] : 0.0);
  o << "]";
  return o.str();
}

void write_summary(const std::string& out, const TrainConfig& config, const TrainResult& r,
                   const ReportData& data) {
  std::ofstream f(out + "/summary.json", std::ios::trunc);
  TORCH_CHECK(f.good(), "train: cannot write ", out, "/summary.json");
  f.precision(8);
  const auto l = config.layout();
  f << "{\n  \"initial_loss\": " << r.initial_loss << ",\n  \"final_loss\": " << r.final_loss
    << ",\n  \"tokens_per_s\": " << r.tokens_per_s << ",\n  \"parameters\": " << r.parameters
    << ",\n  \"steps\": " << r.steps << ",\n  \"skipped_steps\": " << r.skipped_steps
    << ",\n  \"wall_s\": " << r.wall_s << ",\n  \"layout\": {\"tp\": " << l.tp
    << ", \"dp\": " << l.dp << ", \"pp\": " << l.pp << ", \"ep\": " << l.ep
    << ", \"etp\": " << l.etp << ", \"name\": " << json_string(l.to_string())
    << "},\n  \"task_accuracy\": {";
  bool first = true;
  for (const auto& [task, acc] : r.task_accuracy) {
    f << (first ? "" : ", ") << json_string(task) << ": " << acc;
    first = false;
  }
  const auto& im = data.imbalance;
  const double n = static_cast<double>(std::max<int64_t>(1, im.steps));
  f << "},\n  \"dropped_tokens\": " << data.dropped
    << ",\n  \"imbalance\": {\"steps\": " << im.steps << ", \"expert_mean\": " << im.expert_sum / n
    << ", \"expert_max\": " << im.expert_max << ", \"rank_mean\": " << im.rank_sum / n
    << ", \"rank_max\": " << im.rank_max
    << ", \"exchange_wait_max_ms_mean\": " << im.wait_max_ms_sum / n
    << ", \"peak_rss_mb_max\": " << im.memory_max_mb << "},\n  \"expert_load\": [";
  for (size_t i = 0; i < data.layer_load.size(); ++i)
    f << (i ? ", " : "") << json_numbers(data.layer_load[i]);
  f << "],\n  \"config\": {";
  first = true;
  for (const auto& k : train_config_keys()) {
    const std::string v = get_config_value(config, k.name);
    f << (first ? "" : ", ") << json_string(k.name) << ": "
      << (k.kind == ConfigKind::kString ? json_string(v) : v);
    first = false;
  }
  f << "}\n}\n";
}

namespace {

// max / mean of the values (0 when their mean is not positive).
double max_over_mean(const double* v, size_t n) {
  double sum = 0.0, most = 0.0;
  for (size_t i = 0; i < n; ++i) sum += v[i], most = std::max(most, v[i]);
  return n > 0 && sum > 0 ? most / (sum / static_cast<double>(n)) : 0.0;
}

}  // namespace

std::string format_duration(double s) {
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(t / 60),
                static_cast<long long>(t % 60));
  return buf;
}

std::vector<std::vector<double>> fractions(const std::vector<double>& flat, int64_t layers,
                                           int64_t E) {
  std::vector<std::vector<double>> out(layers, std::vector<double>(E, 0.0));
  for (int64_t l = 0; l < layers; ++l) {
    double total = 0;
    for (int64_t e = 0; e < E; ++e) total += flat[l * E + e];
    for (int64_t e = 0; e < E; ++e) out[l][e] = total > 0 ? flat[l * E + e] / total : 0.0;
  }
  return out;
}

std::map<std::string, std::vector<std::vector<double>>> load_by_task(
    GPTImpl& model, const std::vector<TaskSample>& samples, const ParallelGroups& groups) {
  std::map<std::string, std::vector<std::vector<double>>> out;
  const int64_t layers = model.num_moe_layers();
  const int64_t E = model.options.num_experts(), ctx = model.options.context();
  if (layers == 0) return out;
  torch::NoGradGuard no_grad;
  model.eval();
  for (const auto& task : synthetic_task_names()) {
    std::string text;
    for (const auto& s : samples)
      if (s.task == task) text += s.prompt + s.answer + "\n";
    const int64_t rows = static_cast<int64_t>(text.size()) / ctx;
    if (rows == 0) continue;
    auto tokens = torch::empty({rows, ctx}, torch::kInt64);
    for (int64_t i = 0; i < rows * ctx; ++i)
      tokens.view({-1})[i] = static_cast<int64_t>(static_cast<unsigned char>(text[i]));
    auto res = model.forward(tokens);
    std::vector<double> flat;
    for (const auto& st : res.moe_stats) {
      auto c = st.tokens_per_expert.to(torch::kFloat64).cpu().contiguous();
      flat.insert(flat.end(), c.data_ptr<double>(), c.data_ptr<double>() + E);
    }
    out[task] = fractions(dist::sum_over_ranks(flat, groups.world), layers, E);
  }
  model.train();
  return out;
}

StepImbalance step_imbalance(const std::vector<double>& load, int64_t layers, int64_t E,
                             const std::vector<double>& rank_rows,
                             const std::vector<double>& rank_wait_s,
                             const std::vector<double>& rank_peak_mb) {
  TORCH_CHECK(static_cast<int64_t>(load.size()) == layers * E, "step_imbalance: ", load.size(),
              " loads for ", layers, " layers of ", E, " experts");
  StepImbalance s;
  for (int64_t l = 0; l < layers; ++l)
    s.expert = std::max(s.expert, max_over_mean(load.data() + l * E, static_cast<size_t>(E)));
  s.rank = max_over_mean(rank_rows.data(), rank_rows.size());
  for (double w : rank_wait_s) {
    s.wait_max_ms = std::max(s.wait_max_ms, 1e3 * w);
    s.wait_mean_ms += 1e3 * w / static_cast<double>(rank_wait_s.size());
  }
  s.memory_known = !rank_peak_mb.empty() && std::all_of(rank_peak_mb.begin(), rank_peak_mb.end(),
                                                        [](double v) { return v >= 0; });
  if (s.memory_known)
    for (double m : rank_peak_mb) {
      s.memory_max_mb = std::max(s.memory_max_mb, m);
      s.memory_mean_mb += m / static_cast<double>(rank_peak_mb.size());
    }
  return s;
}

std::string imbalance_json(const StepImbalance& s) {
  std::ostringstream o;
  o.precision(6);
  o << "\"imbalance\": {\"expert\": " << s.expert << ", \"rank\": " << s.rank
    << ", \"exchange_wait_ms\": {\"max\": " << s.wait_max_ms << ", \"mean\": " << s.wait_mean_ms
    << "}, \"peak_rss_mb\": ";
  if (s.memory_known)
    o << "{\"max\": " << s.memory_max_mb << ", \"mean\": " << s.memory_mean_mb << "}";
  else
    o << "null";
  o << "}";
  return o.str();
}

void Imbalance::add(const StepImbalance& s) {
  ++steps;
  expert_sum += s.expert;
  rank_sum += s.rank;
  expert_max = std::max(expert_max, s.expert);
  rank_max = std::max(rank_max, s.rank);
  wait_max_ms_sum += s.wait_max_ms;
  if (s.memory_known) memory_max_mb = std::max(memory_max_mb, s.memory_max_mb);
}

namespace {

// A color from white (0) to deep blue (1).
std::string heat_color(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const int r = static_cast<int>(255 - 215 * t), g = static_cast<int>(255 - 160 * t),
            b = 255 - static_cast<int>(75 * t);
  std::ostringstream o;
  o << "rgb(" << r << "," << g << "," << b << ")";
  return o.str();
}

std::string loss_svg(const std::vector<std::pair<int64_t, double>>& curve) {
  const double W = 640, H = 280, pad = 40;
  std::ostringstream s;
  s << "<svg width='" << W << "' height='" << H << "' xmlns='http://www.w3.org/2000/svg'>"
    << "<rect width='100%' height='100%' fill='white' stroke='#ccc'/>";
  if (curve.size() >= 2) {
    double lo = curve[0].second, hi = curve[0].second;
    for (const auto& p : curve) lo = std::min(lo, p.second), hi = std::max(hi, p.second);
    if (hi - lo < 1e-9) hi = lo + 1;
    const double x0 = static_cast<double>(curve.front().first),
                 x1 = static_cast<double>(curve.back().first);
    auto X = [&](double x) { return pad + (x - x0) / std::max(1.0, x1 - x0) * (W - 2 * pad); };
    auto Y = [&](double y) { return H - pad - (y - lo) / (hi - lo) * (H - 2 * pad); };
    s << "<polyline fill='none' stroke='#1f5fbf' stroke-width='1.5' points='";
    for (const auto& p : curve) s << X(static_cast<double>(p.first)) << "," << Y(p.second) << " ";
    s << "'/>";
    s << std::fixed << std::setprecision(3);
    s << "<text x='4' y='" << pad << "' font-size='11'>" << hi << "</text>"
      << "<text x='4' y='" << H - pad << "' font-size='11'>" << lo << "</text>"
      << "<text x='" << pad << "' y='" << H - 10 << "' font-size='11'>step " << curve.front().first
      << "</text><text x='" << W - pad - 60 << "' y='" << H - 10 << "' font-size='11'>step "
      << curve.back().first << "</text>";
  }
  s << "</svg>";
  return s.str();
}

// Rows × experts heatmap; each cell is the load fraction (scaled so an even split is mid-blue).
// Columns are named column_prefix + index ("e0", ... for experts; "r0", ... for ranks).
std::string heatmap_svg(const std::vector<std::string>& row_names,
                        const std::vector<std::vector<double>>& rows,
                        const char* column_prefix = "e") {
  if (rows.empty()) return "<p>No MoE layers.</p>";
  const size_t E = rows[0].size();
  const double cell = 44, left = 120, top = 24;
  std::ostringstream s;
  s << std::fixed << std::setprecision(2);
  s << "<svg width='" << left + cell * E + 10 << "' height='" << top + cell * rows.size() + 10
    << "' xmlns='http://www.w3.org/2000/svg'>";
  for (size_t e = 0; e < E; ++e)
    s << "<text x='" << left + cell * e + 10 << "' y='16' font-size='11'>" << column_prefix << e
      << "</text>";
  for (size_t i = 0; i < rows.size(); ++i) {
    s << "<text x='4' y='" << top + cell * i + cell / 2 + 4 << "' font-size='11'>" << row_names[i]
      << "</text>";
    for (size_t e = 0; e < E && e < rows[i].size(); ++e) {
      const double v = rows[i][e];
      s << "<rect x='" << left + cell * e << "' y='" << top + cell * i << "' width='" << cell - 2
        << "' height='" << cell - 2 << "' fill='" << heat_color(v * E / 2.0) << "'/>"
        << "<text x='" << left + cell * e + 6 << "' y='" << top + cell * i + cell / 2 + 4
        << "' font-size='10'>" << v << "</text>";
    }
  }
  s << "</svg>";
  return s.str();
}

}  // namespace

void write_report(const std::string& out, const TrainConfig& config, const TrainResult& r,
                  const ReportData& data) {
  std::ofstream f(out + "/report.html", std::ios::trunc);
  TORCH_CHECK(f.good(), "train: cannot write ", out, "/report.html");
  f << std::fixed << std::setprecision(4);
  f << "<!doctype html><html><head><meta charset='utf-8'><title>hybridmoe training report</title>"
    << "<style>body{font-family:sans-serif;margin:24px}td,th{padding:2px 10px;text-align:left}"
    << "</style></head><body><h1>hybridmoe training report</h1>"
    << "<table><tr><th>layout</th><td>" << config.layout().to_string() << "</td></tr>"
    << "<tr><th>steps</th><td>" << r.steps << "</td></tr><tr><th>initial loss</th><td>"
    << r.initial_loss << "</td></tr><tr><th>final loss</th><td>" << r.final_loss
    << "</td></tr><tr><th>tokens/s</th><td>" << std::setprecision(0) << r.tokens_per_s
    << "</td></tr><tr><th>wall time (s)</th><td>" << std::setprecision(1) << r.wall_s
    << "</td></tr><tr><th>dropped tokens</th><td>" << data.dropped << "</td></tr></table>"
    << std::setprecision(3);
  if (!r.task_accuracy.empty()) {
    f << "<h2>Held-out task accuracy</h2><table>";
    for (const auto& [task, acc] : r.task_accuracy)
      f << "<tr><th>" << task << "</th><td>" << acc * 100 << " %</td></tr>";
    f << "</table>";
  }
  f << "<h2>Loss</h2>" << loss_svg(data.loss_curve);
  std::vector<std::string> names;
  for (size_t i = 0; i < data.layer_load.size(); ++i)
    names.push_back("MoE layer " + std::to_string(i));
  f << "<h2>Expert load per layer (fraction of assignments, whole run)</h2>"
    << heatmap_svg(names, data.layer_load);
  if (!data.rank_rows.empty() && data.imbalance.steps > 0) {
    const auto& im = data.imbalance;
    const double n = static_cast<double>(im.steps);
    f << "<h2>Expert rows per rank (fraction computed by each rank, whole run)</h2>"
      << heatmap_svg({"expert rows"}, {data.rank_rows}, "r")
      << "<p>max / mean tokens per expert (worst layer): mean " << im.expert_sum / n << ", worst "
      << im.expert_max << "; per rank: mean " << im.rank_sum / n << ", worst " << im.rank_max
      << "; slowest rank blocked in the token exchange: " << im.wait_max_ms_sum / n
      << " ms per step; the largest peak resident memory of a rank in a step: " << im.memory_max_mb
      << " MB</p>";
  }
  const bool any_replica =
      std::any_of(data.replicated.begin(), data.replicated.end(), [](const auto& row) {
        return std::any_of(row.begin(), row.end(), [](double v) { return v > 0; });
      });
  if (any_replica) {
    std::vector<std::string> stage_names;
    for (size_t i = 0; i < data.replicated.size(); ++i)
      stage_names.push_back("MoE layer " + std::to_string(i) + " (rank 0's stage)");
    f << "<h2>Hot-expert replication (fraction of steps each expert was replicated)</h2>"
      << heatmap_svg(stage_names, data.replicated);
  }
  if (!data.task_load.empty()) {
    f << "<h2>Expert load per layer and task (held-out samples)</h2>";
    std::vector<std::string> rows_names;
    std::vector<std::vector<double>> rows;
    const size_t layers = data.task_load.begin()->second.size();
    for (size_t l = 0; l < layers; ++l)
      for (const auto& [task, per_layer] : data.task_load) {
        rows_names.push_back("L" + std::to_string(l) + " " + task);
        rows.push_back(per_layer[l]);
      }
    f << heatmap_svg(rows_names, rows);
  }
  f << "</body></html>\n";
}

}  // namespace hybridmoe::detail
