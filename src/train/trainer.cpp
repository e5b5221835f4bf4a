// trainer.cpp — see train.h: the training loop of `hmoe train` on one rank of a layout.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <optional>
#include <sstream>

#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/detail/fingerprint.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/train.h"
#include "hybridmoe/zero.h"
#include "report.h"
#include "run_dir.h"
#include "side_by_side.h"

namespace hybridmoe {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// What a run is made of on this rank.
struct RunParts {
  std::shared_ptr<ParallelGroups> groups;
  GPT model{nullptr};
  std::unique_ptr<GroupedDataParallel> gdp;
  std::unique_ptr<ZeroAdamW> optimizer;
  hf::Coverage coverage;  ///< what init_from_hf read on this rank
};

// The groups, this rank's shard of the model initialized from the seed, and AdamW (weight decay
// on matrices only; its state sharded over each parameter's gradient group with zero_stage 1,
// replicated with 0). Collective over the world.
RunParts build_run(const TrainConfig& cfg, dist::World& world) {
  RunParts r;
  r.groups = std::make_shared<ParallelGroups>(ParallelGroups::build(cfg.layout(), world));
  const auto opts = cfg.model_options();
  std::shared_ptr<const ParallelGroups> model_groups = world.size() > 1 ? r.groups : nullptr;
  torch::manual_seed(static_cast<uint64_t>(cfg.seed));
  r.model = GPT(opts, model_groups);
  {
    torch::manual_seed(static_cast<uint64_t>(cfg.seed));
    GPT full(opts.single_process());
    r.model->load_shard_from(*full);
  }
  r.model->to(scalar_type(cfg.dtype));
  // A Hugging Face checkpoint's weights replace the random init (each rank reads its slices); a
  // resumed run takes its checkpoint's instead.
  if (!cfg.init_from_hf.empty() && !cfg.resume) {
    r.coverage =
        hf::load(*r.model, cfg.model, hf::Checkpoint::open(cfg.init_from_hf), cfg.allow_unused);
    const hf::Coverage& cov = r.coverage;
    if (world.rank() == 0 && cfg.progress) {
      std::printf("init_from_hf %s: rank 0 read %s\n", cfg.init_from_hf.c_str(),
                  cov.text().c_str());
      for (const auto& name : cov.unused)
        std::printf("  unused (allow_unused): %s\n", name.c_str());
    }
  }
  r.gdp = std::make_unique<GroupedDataParallel>(r.model.ptr(), r.groups);
  const auto named = r.model->named_parameters().pairs();
  r.optimizer = std::make_unique<ZeroAdamW>(
      named, r.gdp->tags(),
      ZeroAdamW::decay_groups(
          named,
          AdamWHyper().lr(cfg.lr).beta1(cfg.beta1).beta2(cfg.beta2).weight_decay(cfg.weight_decay)),
      r.groups, ZeroAdamWOptions().zero_stage(cfg.zero_stage).tile_mb(cfg.optimizer_tile_mb));
  return r;
}

}  // namespace

hf::Coverage import_hf_checkpoint(const TrainConfig& target, dist::World& world) {
  TORCH_CHECK(!target.init_from_hf.empty(), "import_hf_checkpoint: init_from_hf is empty");
  TORCH_CHECK(!target.resume, "import_hf_checkpoint: expected resume = false");
  validate_config(target);
  TORCH_CHECK(world.size() == target.layout().world_size(), "import_hf_checkpoint: the layout ",
              target.layout().to_string(), " needs ", target.layout().world_size(),
              " ranks, the world has ", world.size());
  TrainConfig quiet = target;
  quiet.progress = false;
  RunParts parts = build_run(quiet, world);
  save_checkpoint(target, 0, *parts.model, *parts.optimizer, *parts.groups);
  return parts.coverage;
}

TrainResult train(const TrainConfig& cfg, dist::World& world,
                  const std::function<void(int64_t, double)>& on_step) {
  validate_config(cfg);
  check_config_agreement(cfg, world);  // before any step or checkpoint: every rank alike
  const auto layout = cfg.layout();
  TORCH_CHECK(world.size() == layout.world_size(), "train: the layout ", layout.to_string(),
              " needs ", layout.world_size(), " ranks, the world has ", world.size());
  const auto t_start = Clock::now();
  RunParts parts = build_run(cfg, world);
  auto& groups = parts.groups;
  GPT& model = parts.model;
  ZeroAdamW& optimizer = *parts.optimizer;
  const auto replicas = gradient_replicas(*model, *groups, *parts.gdp);
  // Refused before the output directory is touched.
  const int64_t side_by_side = detail::micro_batch_threads(cfg, *model);
  const auto opts = cfg.model_options();
  const bool lead = world.rank() == 0;
  TrainResult result;
  {
    // The model's size: every rank's parameters, each weighted by 1 / its copies.
    double mine = 0.0;
    for (const auto& kv : model->named_parameters())
      mine += static_cast<double>(kv.value().numel()) / static_cast<double>(replicas.at(kv.key()));
    result.parameters = std::llround(dist::sum_over_ranks(mine, groups->world));
    if (lead)
      std::printf("model %s: %lld parameters, layout %s\n", to_string(cfg.model).c_str(),
                  static_cast<long long>(result.parameters), layout.to_string().c_str());
  }
  const auto coords = groups->coords();
  const int64_t dp = layout.dp, tp = layout.tp, micro = cfg.micro_batches;
  const int64_t per_pass = cfg.batch_size / micro;

  // 1. Data: the same corpus on every rank — token ids (mapped; no held-out samples, so no task
  //    accuracy), a text file's bytes, or the synthetic tasks.
  Corpus corpus =
      !cfg.data_tokens.empty()
          ? Corpus::from_tokens(cfg.data_tokens, cfg.token_dtype, cfg.vocab_size, cfg.seq_len)
      : cfg.data.empty()
          ? Corpus::synthetic(static_cast<uint64_t>(cfg.seed), cfg.train_lines, cfg.eval_per_task)
          : Corpus::from_file(cfg.data);

  // 4. Resume from the newest complete checkpoint, or start in an output directory that holds no
  //    earlier run (or moved it aside).
  std::vector<std::pair<int64_t, double>> curve;
  int64_t start = 0;
  const std::string metrics_path = cfg.out + "/metrics.jsonl";
  std::vector<std::string> kept_lines;
  if (cfg.resume) {
    const std::string dir = detail::choose_resume_checkpoint(cfg, *groups);
    start = load_checkpoint(dir, cfg, *model, optimizer, *groups);
    auto kept = detail::read_metrics_until(metrics_path, start);
    kept_lines = std::move(kept.lines);
    curve = std::move(kept.curve);
    if (world.size() > 1) dist::barrier(groups->world);  // everyone has read before rank 0 rewrites
    if (lead)
      std::printf("resumed from %s at step %lld\n", dir.c_str(), static_cast<long long>(start));
  } else {
    detail::prepare_run_dir(cfg, *groups);
  }
  std::ofstream metrics;
  if (lead) {
    metrics.open(metrics_path, std::ios::trunc);
    TORCH_CHECK(metrics.good(), "train: cannot write ", metrics_path);
    for (const auto& l : kept_lines) metrics << l << "\n";
    metrics.flush();
  }
  for (const auto& p : curve) result.losses.push_back(p.second);
  result.first_step = curve.empty() ? start + 1 : curve.front().first;

  // 5. The loop.
  auto moe = model->moe_layers();  // this stage's
  const int64_t L = model->num_moe_layers(), L0 = model->first_moe_layer(), E = cfg.num_experts;
  PipelineOptions pipe;
  pipe.micro_batches = micro;
  pipe.schedule = cfg.pipeline_schedule;
  pipe.activation_sizes = {per_pass / dp, cfg.seq_len, cfg.d_model};
  pipe.activation_options = model->parameters().front().options();
  pipe.threads = side_by_side;
  if (pipe.threads > 1) pipe.parameters = model->parameters();
  if (lead && pipe.threads > 1)
    std::printf("micro-batches: %lld side by side, one thread each\n",
                static_cast<long long>(pipe.threads));
  std::vector<double> load_run(L * E, 0.0);
  double dropped_run = 0;
  // Imbalance: max / mean tokens per expert (every MoE layer) and per rank (the rows each rank's
  // experts computed), per step; the run's mean and worst go to summary.json.
  const int64_t W = world.size();
  detail::Imbalance imbalance_run;
  std::vector<double> rank_rows_run(W, 0.0);
  // How often each expert of this stage's MoE layers was replicated ([layer][expert] steps).
  std::vector<std::vector<double>> replicated_run(moe.size(), std::vector<double>(E, 0.0));
  const int64_t last = cfg.stop_after > 0 ? std::min(cfg.stop_after, cfg.steps) : cfg.steps;
  // Adaptive r = auto: every adaptive_recheck_every steps, one step with each valid r is timed
  // (the mean over ranks, so every rank decides alike), then the fastest is kept.
  // The r of every MoE layer of every stage, from the configuration (a stage may hold none).
  const bool adaptive = cfg.expert_layout == ExpertLayout::kAdaptive;
  const bool auto_r = adaptive && cfg.adaptive_r.kind() == AdaptiveR::Kind::kAuto;
  const std::vector<int64_t> r_values = auto_r ? cfg.placement().valid_r : std::vector<int64_t>{};
  std::vector<double> r_ms;
  auto set_r = [&](int64_t r) {
    for (auto& layer : moe) layer->set_adaptive_r(r);
  };
  std::optional<int64_t> current_r;  // the adaptive layout's r in force; none for fixed experts
  if (adaptive) current_r = opts.adaptive_r();
  const bool tty = isatty(fileno(stderr));
  const double tokens_per_step = static_cast<double>(cfg.batch_size * cfg.seq_len);
  double timed_s = 0;
  int64_t timed_steps = 0;
  int64_t nonfinite_in_a_row = 0;
  for (int64_t step = start + 1; step <= last; ++step) {
    const auto t0 = Clock::now();
    const bool peak_reset = reset_peak_resident_memory();  // the step's passes set a new peak
    const double lr = learning_rate(cfg, step - 1);
    const int64_t phase = auto_r ? (step - 1) % cfg.adaptive_recheck_every : -1;
    const bool r_trial = auto_r && phase < static_cast<int64_t>(r_values.size());
    if (r_trial) {
      if (phase == 0) r_ms.clear();
      current_r = r_values[phase];
      set_r(*current_r);
    }
    optimizer.set_lr(lr);
    optimizer.zero_grad();
    // The step's task loss, auxiliary loss and expert load accumulate on the model's device,
    // [ce, aux, load of every (layer, expert)], and come to the host once after the pipeline: no
    // host synchronisation per micro-batch or per expert. Float64, in the order the host sums
    // would take, so the figures are the same bits as summing on the host.
    auto acc = torch::zeros({2 + L * E}, pipe.activation_options.dtype(torch::kFloat64));
    double dropped_step = 0;
    double rows_step = 0;  // rows this rank's experts computed
    const double wait_before = dist::total_of(dist::comm_stats(), dist::is_token_exchange).seconds;
    std::vector<std::vector<int64_t>> replicated;  // per MoE layer of this stage: the last choice
    // This dp rank's rows of every micro-batch; the stages run them through the pipeline (one
    // stage without pp), each micro-batch's loss scaled by 1 / micro (gradient accumulation).
    std::vector<torch::Tensor> xs, ys;
    for (int64_t m = 0; m < micro; ++m) {
      auto [x, y] = corpus.batch(static_cast<uint64_t>(cfg.seed), step, m, per_pass, cfg.seq_len);
      xs.push_back(shard_batch(x, dp, coords.dp));
      ys.push_back(shard_batch(y, dp, coords.dp));
    }
    // What each micro-batch reports, kept per micro-batch (they may run side by side) and summed
    // after the passes in micro-batch order.
    struct Report {
      torch::Tensor aux, ce;  // detached scalars; ce on the last stage only
      std::vector<RoutingStats> moe;
    };
    std::vector<Report> reports(static_cast<size_t>(micro));
    run_pipeline(groups->pp, pipe, [&](int64_t m, const torch::Tensor& input) {
      StageOutput out = model->forward_stage(input.defined() ? input : xs[m]);
      Report& rep = reports[static_cast<size_t>(m)];
      StageForward f;
      f.output = out.output;
      f.loss = out.aux_loss / static_cast<double>(micro);
      rep.aux = out.aux_loss.detach();
      if (model->is_last_stage()) {
        auto ce = lm_loss(out.output, ys[m]);
        f.loss = f.loss + ce / static_cast<double>(micro);
        rep.ce = ce.detach();
      }
      rep.moe = std::move(out.moe_stats);
      return f;
    });
    for (const Report& rep : reports) {
      acc.narrow(0, 1, 1).add_(rep.aux.to(torch::kFloat64).reshape({1}) / micro);
      if (rep.ce.defined())
        acc.narrow(0, 0, 1).add_(rep.ce.to(torch::kFloat64).reshape({1}) / micro);
      for (size_t l = 0; l < rep.moe.size(); ++l) {
        acc.narrow(0, 2 + (L0 + static_cast<int64_t>(l)) * E, E)
            .add_(rep.moe[l].tokens_per_expert.to(torch::kFloat64));
        dropped_step += static_cast<double>(rep.moe[l].tokens_dropped);
        rows_step += static_cast<double>(std::max<int64_t>(0, rep.moe[l].expert_rows));
      }
      replicated.resize(rep.moe.size());
      for (size_t l = 0; l < rep.moe.size(); ++l) replicated[l] = rep.moe[l].replicated;
    }
    for (size_t l = 0; l < replicated.size() && l < replicated_run.size(); ++l)
      for (int64_t e : replicated[l]) replicated_run[l][static_cast<size_t>(e)] += 1.0;
    const auto host = acc.cpu();
    const double wait_step =
        dist::total_of(dist::comm_stats(), dist::is_token_exchange).seconds - wait_before;
    const double* sums = host.data_ptr<double>();
    const double ce_sum = sums[0], aux_sum = sums[1];
    std::vector<double> load(sums + 2, sums + 2 + L * E);
    load.push_back(dropped_step);
    model->reduce_tied_gradients();
    optimizer.reduce_gradients(1.0 / static_cast<double>(dp));
    const double norm = optimizer.clip_grad_norm(cfg.grad_clip, groups->world, replicas);
    // The global loss: the shares of every rank sum to it (the same reduction also carries the
    // expert load, so checking the loss costs nothing extra; the norm is global already).
    std::vector<double> shares = {ce_sum / static_cast<double>(tp * dp), aux_sum / dp};
    shares.insert(shares.end(), load.begin(), load.end());
    // Each rank's expert rows in its own slot: the sum gathers them.
    // Then each rank's seconds blocked in exchanges and its peak resident memory (-1: unknown).
    std::vector<double> rank_rows(3 * W, 0.0);
    rank_rows[world.rank()] = rows_step;
    rank_rows[W + world.rank()] = wait_step;
    const ResidentMemory memory = resident_memory();
    rank_rows[2 * W + world.rank()] = peak_reset && memory.known ? memory.peak_mb : -1.0;
    shares.insert(shares.end(), rank_rows.begin(), rank_rows.end());
    auto total = dist::sum_over_ranks(shares, groups->world);
    const double loss = total[0], aux = total[1];
    // A NaN or infinite loss or gradient norm: the update is skipped (every rank sees the same
    // global values, so every rank skips), and too many in a row end the run.
    const bool finite = std::isfinite(loss) && std::isfinite(aux) && std::isfinite(norm);
    if (finite) {
      nonfinite_in_a_row = 0;
      optimizer.step();
      model->after_step();
    } else {
      ++nonfinite_in_a_row;
      ++result.skipped_steps;
      std::ostringstream values;
      values << "loss " << loss << ", aux_loss " << aux << ", grad_norm " << norm;
      if (lead) {
        metrics << "{\"step\": " << step
                << ", \"loss\": null, \"aux_loss\": null, \"lr\": " << std::setprecision(8) << lr
                << ", \"grad_norm\": null, \"skipped\": true, "
                << "\"nonfinite\": " << detail::json_string(values.str()) << "}\n";
        metrics.flush();
        std::printf(
            "%sstep %lld skipped: non-finite %s (%lld in a row, max_nonfinite_steps %lld)\n",
            tty && cfg.progress ? "\n" : "", static_cast<long long>(step), values.str().c_str(),
            static_cast<long long>(nonfinite_in_a_row),
            static_cast<long long>(cfg.max_nonfinite_steps));
        std::fflush(stdout);
      }
      TORCH_CHECK(nonfinite_in_a_row < cfg.max_nonfinite_steps, "step ", step, ": non-finite ",
                  values.str(), "; ", nonfinite_in_a_row,
                  " steps in a row had a NaN or infinite loss or gradient norm "
                  "(max_nonfinite_steps = ",
                  cfg.max_nonfinite_steps,
                  "), so the run stops. Skipped steps changed no weight and no checkpoint holds "
                  "a non-finite value: lower lr or set grad_clip, then --resume");
    }
    for (int64_t i = 0; i < L * E; ++i) load_run[i] += total[2 + i];
    dropped_run += total[2 + L * E];
    const auto imbalance = detail::step_imbalance(
        std::vector<double>(total.begin() + 2, total.begin() + 2 + L * E), L, E,
        std::vector<double>(total.begin() + 3 + L * E, total.begin() + 3 + L * E + W),
        std::vector<double>(total.begin() + 3 + L * E + W, total.begin() + 3 + L * E + 2 * W),
        std::vector<double>(total.begin() + 3 + L * E + 2 * W, total.begin() + 3 + L * E + 3 * W));
    imbalance_run.add(imbalance);
    for (int64_t r = 0; r < W; ++r) rank_rows_run[r] += total[3 + L * E + r];
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r_trial) {
      r_ms.push_back(dist::sum_over_ranks(dt, groups->world) / static_cast<double>(world.size()) *
                     1000.0);
      if (r_ms.size() == r_values.size()) {
        const auto best = std::min_element(r_ms.begin(), r_ms.end()) - r_ms.begin();
        current_r = r_values[best];
        set_r(*current_r);
        if (lead && cfg.progress) {
          std::ostringstream msg;
          for (size_t i = 0; i < r_values.size(); ++i)
            msg << (i ? ", " : "") << "r=" << r_values[i] << " " << std::fixed
                << std::setprecision(1) << r_ms[i] << " ms";
          std::printf("%sstep %lld adaptive_r auto: %s -> r=%lld\n", tty ? "\n" : "",
                      static_cast<long long>(step), msg.str().c_str(),
                      static_cast<long long>(*current_r));
        }
      }
    }
    if (step > start + 1 || last == start + 1) timed_s += dt, ++timed_steps;
    const double tps =
        timed_steps > 0 ? tokens_per_step * timed_steps / timed_s : tokens_per_step / dt;
    if (on_step) on_step(step, loss);
    if (finite) {
      result.losses.push_back(loss);
      curve.emplace_back(step, loss);
    }
    // Rank 0: metrics, progress, expert load.
    if (lead && finite) {
      metrics << "{\"step\": " << step << ", \"loss\": " << std::setprecision(17) << loss
              << std::setprecision(8) << ", \"aux_loss\": " << aux << ", \"lr\": " << lr
              << ", \"grad_norm\": " << norm << ", \"tokens_per_s\": " << tps;
      if (current_r) metrics << ", \"adaptive_r\": " << *current_r;
      if (L > 0) metrics << ", " << detail::imbalance_json(imbalance);
      if (std::any_of(replicated.begin(), replicated.end(),
                      [](const std::vector<int64_t>& r) { return !r.empty(); })) {
        metrics << ", \"replicated\": [";  // rank 0's stage, per MoE layer
        for (size_t l = 0; l < replicated.size(); ++l) {
          metrics << (l ? ", " : "") << "[";
          for (size_t i = 0; i < replicated[l].size(); ++i)
            metrics << (i ? ", " : "") << replicated[l][i];
          metrics << "]";
        }
        metrics << "]";
      }
      const bool stats = step % cfg.stats_every == 0 || step == last;
      if (stats && L > 0) {
        std::vector<double> step_load(total.begin() + 2, total.begin() + 2 + L * E);
        auto frac = detail::fractions(step_load, L, E);
        metrics << ", \"expert_load\": [";
        for (int64_t l = 0; l < L; ++l) metrics << (l ? ", " : "") << detail::json_numbers(frac[l]);
        metrics << "], \"dropped\": " << total[2 + L * E];
      }
      metrics << "}\n";
      metrics.flush();
      const double eta = timed_steps > 0 ? timed_s / timed_steps * (last - step) : 0.0;
      const int width = 24, filled = static_cast<int>(width * step / std::max<int64_t>(1, last));
      char bar[256];
      std::snprintf(bar, sizeof(bar), "step %5lld/%lld [%s%s] loss %.4f | %6.0f tok/s | %s left",
                    static_cast<long long>(step), static_cast<long long>(last),
                    std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                    loss, tps, detail::format_duration(eta).c_str());
      if (cfg.progress && tty) {
        std::fprintf(stderr, "\r%s   %s", bar, step == last ? "\n" : "");
      } else if (cfg.progress && (step % cfg.log_every == 0 || step == last || step == start + 1)) {
        const std::string peak =
            imbalance.memory_known
                ? " | peak " + std::to_string(std::lround(imbalance.memory_max_mb)) + " MB"
                : "";
        std::printf("%s | aux %.4f lr %.2e |g| %.3f | imbalance expert %.2f rank %.2f%s\n", bar,
                    aux, lr, norm, imbalance.expert, imbalance.rank, peak.c_str());
      }
      if (stats && L > 0 && cfg.progress) {
        std::vector<double> step_load(total.begin() + 2, total.begin() + 2 + L * E);
        auto frac = detail::fractions(step_load, L, E);
        std::ostringstream s;
        s.precision(2);
        s << std::fixed;
        for (int64_t l = 0; l < L; ++l) {
          s << "  layer " << l << " [";
          for (int64_t e = 0; e < E; ++e) s << (e ? " " : "") << frac[l][e];
          s << "]";
        }
        std::printf("%sstep %lld expert load:%s  dropped %.0f\n", tty ? "\n" : "",
                    static_cast<long long>(step), s.str().c_str(), total[2 + L * E]);
      }
      std::fflush(stdout);
    }
    // Checkpoints.
    const bool periodic = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0;
    if (periodic || step == last) save_checkpoint(cfg, step, *model, optimizer, *groups);
  }
  result.steps = std::max(start, last);

  // 6. Held-out accuracy and the per-task expert load (only when the run is complete).
  detail::ReportData data;
  if (last == cfg.steps && cfg.eval && !corpus.held_out().empty()) {
    result.task_accuracy = task_accuracy(*model, corpus.held_out());
    data.task_load = detail::load_by_task(*model, corpus.held_out(), *groups);
  }
  result.initial_loss = result.losses.empty() ? 0.0 : result.losses.front();
  result.final_loss = result.losses.empty() ? 0.0 : result.losses.back();
  result.tokens_per_s = timed_steps > 0 ? tokens_per_step * timed_steps / timed_s : 0.0;
  result.wall_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  if (lead) {
    data.loss_curve = curve;
    data.layer_load = detail::fractions(load_run, L, E);
    data.dropped = static_cast<int64_t>(dropped_run);
    data.imbalance = imbalance_run;
    const double steps_run = static_cast<double>(std::max<int64_t>(1, imbalance_run.steps));
    for (auto& row : replicated_run)
      for (double& v : row) v /= steps_run;
    data.replicated = replicated_run;
    double rows_all = 0.0;
    for (double v : rank_rows_run) rows_all += v;
    for (double v : rank_rows_run) data.rank_rows.push_back(rows_all > 0 ? v / rows_all : 0.0);
    detail::write_summary(cfg.out, cfg, result, data);
    detail::write_report(cfg.out, cfg, result, data);
  }
  return result;
}

void convert_checkpoint(const std::string& dir, const TrainConfig& target, dist::World& world) {
  validate_config(target);
  TORCH_CHECK(world.size() == target.layout().world_size(), "checkpoint convert: the layout ",
              target.layout().to_string(), " needs ", target.layout().world_size(),
              " ranks, the world has ", world.size());
  RunParts parts = build_run(target, world);
  const int64_t step = load_checkpoint(dir, target, *parts.model, *parts.optimizer, *parts.groups);
  if (world.rank() == 0) fs::create_directories(target.out);
  save_checkpoint(target, step, *parts.model, *parts.optimizer, *parts.groups);
}

}  // namespace hybridmoe
