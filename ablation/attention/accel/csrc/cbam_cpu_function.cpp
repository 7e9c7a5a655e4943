// CBAM as one differentiable CPU op: ablation_cbam::cbam(x, residual, parameters..., variant) runs the module's
// whole forward and backward in C++: the map passes of cbam_cpu.cpp and, between them, the small parts (the MLP,
// the k x k conv, the one-channel BN, the sigmoids). fused.py's FusedCBAM is the same computation with its
// orchestration in Python (the path CUDA and non-float32/64 maps take), and its docstring has the math.
//
// Why: with the map passes fused, what remained of CBAM's CPU overhead was mostly not arithmetic but the ~40
// PyTorch calls per block and direction between them (Python, dispatch, tiny allocations) and a one-channel
// BatchNorm that ATen parallelises over its single channel; here each is a few ATen calls or one loop.

#include <ATen/ATen.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cbam_cpu.h"

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

// CBAM.order as fused.py passes it (ORDER_CODES), and the channel pools.
constexpr int64_t kChannelFirst = 0, kParallel = 1, kChannelOnly = 2, kSpatialOnly = 3, kSpatialFirst = 4;
constexpr int64_t kAvg = 0, kMax = 1;

Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// The spatial gate's BatchNorm2d(1) then the sigmoid, s = sigmoid(w * (v - mean) * invstd + b), on the conv
// output v (N, 1, H, W). Batch statistics when training or without running ones (nn.BatchNorm's rule), with the
// running statistics updated as nn.BatchNorm does (unbiased variance, momentum or the cumulative average).
struct BnForward {
  Tensor s;  // (N, positions)
  double mean = 0, invstd = 1;
  bool batch_stats = true;
};

BnForward bn_sigmoid_forward(const Tensor& v, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                             const Tensor& running_var, const Tensor& num_batches_tracked, bool training,
                             std::optional<double> momentum, double eps) {
  CBAM_STAGE("cbam::spatial_bn_sigmoid");
  BnForward r;
  const int64_t M = v.numel();
  r.batch_stats = training || !running_mean.defined();
  r.s = at::empty({v.size(0), M / std::max<int64_t>(v.size(0), 1)}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "cbam_spatial_bn", [&] {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    if (r.batch_stats) {
      double sum = 0;
      for (int64_t i = 0; i < M; ++i) sum += vp[i];
      const double mean = sum / static_cast<double>(M);
      double sq = 0;
      for (int64_t i = 0; i < M; ++i) sq += (vp[i] - mean) * (vp[i] - mean);
      const double var = sq / static_cast<double>(M);
      r.mean = mean;
      r.invstd = 1.0 / std::sqrt(var + eps);
      if (training && running_mean.defined()) {
        double factor = momentum.value_or(0.0);
        if (num_batches_tracked.defined()) {
          num_batches_tracked.add_(1);
          if (!momentum.has_value()) factor = 1.0 / static_cast<double>(num_batches_tracked.item<int64_t>());
        }
        TORCH_CHECK(M > 1, "the spatial gate's BatchNorm needs more than one value per channel in training");
        scalar_t* rm = running_mean.data_ptr<scalar_t>();
        scalar_t* rv = running_var.data_ptr<scalar_t>();
        rm[0] = static_cast<scalar_t>(factor * mean + (1 - factor) * rm[0]);
        rv[0] = static_cast<scalar_t>(factor * var * M / (M - 1) + (1 - factor) * rv[0]);
      }
    } else {
      r.mean = static_cast<double>(running_mean.data_ptr<scalar_t>()[0]);
      r.invstd = 1.0 / std::sqrt(static_cast<double>(running_var.data_ptr<scalar_t>()[0]) + eps);
    }
    const scalar_t w = weight.defined() ? weight.data_ptr<scalar_t>()[0] : scalar_t(1);
    const scalar_t b = bias.defined() ? bias.data_ptr<scalar_t>()[0] : scalar_t(0);
    const scalar_t scale = w * static_cast<scalar_t>(r.invstd), mean = static_cast<scalar_t>(r.mean);
    scalar_t* sp = r.s.data_ptr<scalar_t>();
    for (int64_t i = 0; i < M; ++i) sp[i] = scalar_t(1) / (scalar_t(1) + std::exp(-((vp[i] - mean) * scale + b)));
  });
  return r;
}

// Backward of bn_sigmoid_forward from dL/ds: {dL/dv (N, 1, H, W), dL/dweight, dL/dbias}.
std::vector<Tensor> bn_sigmoid_backward(const Tensor& gs, const Tensor& s, const Tensor& v, const Tensor& weight,
                                        const Tensor& bias, double mean, double invstd, bool batch_stats) {
  CBAM_STAGE("cbam::spatial_bn_sigmoid_backward");
  const int64_t M = v.numel();
  auto gv = at::empty_like(v);
  auto gw = weight.defined() ? at::empty_like(weight) : Tensor();
  auto gb = bias.defined() ? at::empty_like(bias) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "cbam_spatial_bn_backward", [&] {
    const scalar_t *gp = gs.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    scalar_t* gvp = gv.data_ptr<scalar_t>();
    // g = dL/d(BN output) through the sigmoid, kept in gv; its sum and its sum against x-hat.
    double sum_g = 0, sum_gx = 0;
    for (int64_t i = 0; i < M; ++i) {
      const scalar_t g = gp[i] * sp[i] * (scalar_t(1) - sp[i]);
      gvp[i] = g;
      sum_g += g;
      sum_gx += g * ((vp[i] - mean) * invstd);
    }
    const double w = weight.defined() ? static_cast<double>(weight.data_ptr<scalar_t>()[0]) : 1.0;
    if (gw.defined()) gw.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(sum_gx);
    if (gb.defined()) gb.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(sum_g);
    if (batch_stats) {
      // The batch's mean and variance depend on every v: dv = w invstd (g - mean(g) - x-hat mean(g x-hat)).
      const double mg = sum_g / M, mgx = sum_gx / M;
      for (int64_t i = 0; i < M; ++i) {
        const double xhat = (vp[i] - mean) * invstd;
        gvp[i] = static_cast<scalar_t>(w * invstd * (gvp[i] - mg - xhat * mgx));
      }
    } else {
      const scalar_t k = static_cast<scalar_t>(w * invstd);
      for (int64_t i = 0; i < M; ++i) gvp[i] *= k;
    }
  });
  return {gv, gw, gb};
}

class CBAMFunction : public torch::autograd::Function<CBAMFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in, const OptTensor& residual_in, const OptTensor& w1,
                        const OptTensor& b1, const OptTensor& w2, const OptTensor& b2, const OptTensor& compress_w,
                        const OptTensor& conv_w, bool batch_norm, const OptTensor& bn_w, const OptTensor& bn_b,
                        const OptTensor& running_mean, const OptTensor& running_var,
                        const OptTensor& num_batches_tracked, std::vector<int64_t> pools, int64_t order,
                        bool training, std::optional<double> momentum, double eps) {
    // The small parts run in the map's dtype (fused.py sends only float32 / float64 maps with parameters of
    // the same dtype here), never autocast to a lower one.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    TORCH_CHECK(x_in.dim() == 4, "cbam: x must be (N, C, H, W)");
    TORCH_CHECK(order >= kChannelFirst && order <= kSpatialFirst, "cbam: unknown order code ", order);
    const Tensor x = x_in.contiguous();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const bool has_channel = order != kSpatialOnly, has_spatial = order != kChannelOnly;
    const bool with_max = has_spatial && !compress_w.has_value();
    auto& saved = ctx->saved_data;
    const auto ones_c = at::ones({N, C}, x.options());

    // c = sigmoid(sum_p MLP(pool_p(y))), y = x, or x * s after a spatial gate (spatial-first).
    Tensor c = ones_c, pmax, pcnt;
    auto channel_gate = [&](const std::optional<Tensor>& s_first) {
      TORCH_CHECK(w1.has_value() && w2.has_value() && !pools.empty(), "cbam: the channel gate needs its MLP");
      auto stats = cbam_cpu::channel_stats(x, s_first);
      pmax = stats[1];
      pcnt = stats[2];
      CBAM_STAGE("cbam::channel_mlp");
      std::vector<Tensor> pooled_list;
      for (const int64_t p : pools) pooled_list.push_back(p == kAvg ? stats[0] : stats[1]);
      const auto P = static_cast<int64_t>(pools.size());
      const Tensor pooled = at::stack(pooled_list);                   // (P, N, C)
      const Tensor hidden = at::relu(at::linear(pooled, *w1, b1));     // (P, N, C/r)
      const Tensor hidden_sum = P == 1 ? hidden[0] : hidden.sum(0);  // sum_p W2 h_p + b2 = W2 sum_p h_p + P b2
      Tensor logits = at::linear(hidden_sum, *w2);
      if (b2.has_value()) logits.add_(*b2, P);
      c = at::sigmoid(logits);
      saved["pooled"] = pooled;
      saved["hidden"] = hidden;
      saved["hidden_sum"] = hidden_sum;
    };
    // s = sigmoid(BN(conv(D))), D = [sum_c x * a; max_c x * ce]: a = ce / C (the channel mean) or ce * w (the
    // learned 1x1 conv, no max); ce = the channel gate the spatial gate sees (channel-first), else 1.
    Tensor s, a;
    auto spatial_gate = [&](const Tensor& ce) {
      TORCH_CHECK(conv_w.has_value(), "cbam: the spatial gate needs its conv weight");
      a = compress_w.has_value() ? ce * compress_w->view({1, C}) : ce / static_cast<double>(C);
      auto stats = cbam_cpu::spatial_stats(x, a.contiguous(), ce.contiguous());
      const Tensor descriptor =
          with_max ? at::stack({stats[0], stats[1]}, 1).view({N, 2, H, W}) : stats[0].view({N, 1, H, W});
      const Tensor conv = cbam_cpu::spatial_conv(descriptor, *conv_w);  // (N, 1, H, W)
      if (batch_norm) {
        auto bn = bn_sigmoid_forward(conv, value_or_undefined(bn_w), value_or_undefined(bn_b),
                                     value_or_undefined(running_mean), value_or_undefined(running_var),
                                     value_or_undefined(num_batches_tracked), training, momentum, eps);
        s = bn.s;
        saved["bn_mean"] = bn.mean;
        saved["bn_invstd"] = bn.invstd;
        saved["bn_batch_stats"] = bn.batch_stats;
      } else {
        s = at::sigmoid(conv).view({N, H * W});
      }
      saved["descriptor"] = descriptor;
      saved["conv"] = conv;
      saved["dmax"] = stats[1];
      saved["dcnt"] = stats[2];
    };

    if (order == kSpatialFirst) {
      spatial_gate(ones_c);
      channel_gate(s);
    } else {
      if (has_channel) channel_gate(std::nullopt);
      if (has_spatial) spatial_gate(order == kChannelFirst ? c : ones_c);
    }
    if (!has_spatial) s = at::ones({N, H * W}, x.options());
    const Tensor residual = residual_in.has_value() ? residual_in->contiguous() : Tensor();
    Tensor out = cbam_cpu::gate_forward(x, c, s, residual.defined() ? OptTensor(residual) : std::nullopt);

    ctx->save_for_backward({x});  // the only map kept: everything below is (N, C) or (N, H*W)
    saved["c"] = c;
    saved["s"] = s;
    saved["ce"] = order == kChannelFirst ? c : ones_c;
    if (a.defined()) saved["a"] = a;
    if (pmax.defined()) {
      saved["pmax"] = pmax;
      saved["pcnt"] = pcnt;
    }
    for (const auto& [name, t] : {std::pair<const char*, const OptTensor&>{"w1", w1}, {"b1", b1}, {"w2", w2},
                                  {"b2", b2}, {"compress_w", compress_w}, {"conv_w", conv_w}, {"bn_w", bn_w},
                                  {"bn_b", bn_b}}) {
      if (t.has_value()) saved[name] = *t;
    }
    saved["pools"] = pools;
    saved["order"] = order;
    saved["batch_norm"] = batch_norm;
    saved["x_grad"] = x_in.requires_grad();
    saved["residual_grad"] = residual_in.has_value() && residual_in->requires_grad();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "CBAM's fused path is differentiable once; use attention impl='reference' for higher-order "
                "gradients (create_graph=True)");
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto& saved = ctx->saved_data;
    const Tensor x = ctx->get_saved_variables()[0];
    const Tensor g = grads[0].contiguous();
    const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
    const int64_t order = saved["order"].toInt();
    const bool has_channel = order != kSpatialOnly, has_spatial = order != kChannelOnly;
    auto get = [&saved](const char* name) {
      auto it = saved.find(name);
      return it == saved.end() ? Tensor() : it->second.toTensor();
    };
    const Tensor c = get("c"), s = get("s"), ce = get("ce"), a = get("a");

    const bool spatial_first = order == kSpatialFirst;

    auto gate = cbam_cpu::gate_backward(g, x, c, s);
    Tensor gc = gate[0], gs = gate[1];

    // The channel gate's MLP backward from dL/dc: parameter grads and the pools' grads, as pa (grad of the mean /
    // HW) and, at the max's positions, rp (grad of the max / ties).
    Tensor g_w1, g_b1, g_w2, g_b2, pa, rp;
    auto channel_backward = [&] {
      CBAM_STAGE("cbam::channel_mlp_backward");
      const Tensor pooled = get("pooled"), hidden = get("hidden"), hidden_sum = get("hidden_sum");
      const Tensor w1 = get("w1"), w2 = get("w2");
      const int64_t P = pooled.size(0), R = hidden.size(2);
      const Tensor g_out = gc * c * (1 - c);  // through the sigmoid; the same for every pool (they are summed)
      const Tensor g_hidden = at::threshold_backward(at::mm(g_out, w2).unsqueeze(0).expand_as(hidden), hidden, 0);
      const Tensor g_hidden_rows = g_hidden.reshape({P * N, R});
      const Tensor g_pooled = at::mm(g_hidden_rows, w1).view({P, N, C});
      g_w2 = at::mm(g_out.t(), hidden_sum);
      if (saved.count("b2")) g_b2 = g_out.sum(0) * static_cast<double>(P);
      g_w1 = at::mm(g_hidden_rows.t(), pooled.reshape({P * N, C}));
      if (saved.count("b1")) g_b1 = g_hidden_rows.sum(0);
      const auto pools = saved["pools"].toIntVector();
      Tensor gpa, gpm;
      for (int64_t i = 0; i < P; ++i) {
        Tensor& target = pools[i] == kAvg ? gpa : gpm;
        target = target.defined() ? target + g_pooled[i] : g_pooled[i];
      }
      if (gpa.defined()) pa = (gpa / static_cast<double>(HW)).contiguous();
      if (gpm.defined()) rp = (gpm / get("pcnt")).contiguous();
    };

    // The spatial gate's backward from dL/ds: parameter grads, and the descriptor's grads as gdw (weighted sum)
    // and rd (max / ties). Returns dL/dce through the descriptor (channel-first needs it).
    Tensor g_compress, g_conv_w, g_bn_w, g_bn_b, gdw, dmax, rd;
    auto spatial_backward = [&]() -> Tensor {
      const Tensor descriptor = get("descriptor"), conv = get("conv"), conv_w = get("conv_w");
      Tensor g_conv;
      if (saved["batch_norm"].toBool()) {
        auto bn = bn_sigmoid_backward(gs, s, conv, get("bn_w"), get("bn_b"), saved["bn_mean"].toDouble(),
                                      saved["bn_invstd"].toDouble(), saved["bn_batch_stats"].toBool());
        g_conv = bn[0];
        g_bn_w = bn[1];
        g_bn_b = bn[2];
      } else {
        g_conv = (gs * s * (1 - s)).view_as(conv);
      }
      auto conv_grads = cbam_cpu::spatial_conv_backward(g_conv.contiguous(), descriptor, conv_w);
      g_conv_w = conv_grads[1];
      const Tensor gdesc = conv_grads[0].view({N, descriptor.size(1), HW});
      gdw = gdesc.select(1, 0).contiguous();
      const bool with_max = descriptor.size(1) == 2;
      if (with_max) {
        dmax = get("dmax");
        rd = gdesc.select(1, 1) / get("dcnt");
      } else {
        dmax = at::zeros_like(gdw);
        rd = at::zeros_like(gdw);
      }
      const Tensor compress_w = get("compress_w");
      // Only channel-first's ce is a gate with a gradient; the others need this pass only for the 1x1 conv's weight.
      if (order != kChannelFirst && !compress_w.defined()) return Tensor();
      // a = ce / C, or ce * w for the conv descriptor; the descriptor's max depends on ce too (through x * ce).
      auto grads = cbam_cpu::spatial_backward(x, ce, dmax, gdw, rd);
      Tensor g_ce;
      if (compress_w.defined()) {
        g_compress = (grads[0] * ce).sum(0).view_as(compress_w);
        g_ce = grads[0] * compress_w.view({1, C});
      } else {
        g_ce = grads[0] / static_cast<double>(C);
      }
      return with_max ? g_ce + grads[1] : g_ce;
    };

    // The pools' terms for the kernels: zeros where a pool is absent (adding 0 is exact).
    const auto zeros_c = at::zeros({N, C}, x.options());
    Tensor pool_pa = zeros_c, pool_max = zeros_c, pool_rp = zeros_c;
    auto resolve_pool_terms = [&] {
      if (pa.defined()) pool_pa = pa;
      if (rp.defined()) {
        pool_max = get("pmax");
        pool_rp = rp;
      }
    };
    if (spatial_first) {
      // c pools y = x * s: its pools' grads reach s too, before the spatial gate's own backward.
      channel_backward();
      resolve_pool_terms();
      gs = gs + cbam_cpu::pool_grad_positions(x, s, pool_pa, pool_max, pool_rp);
      spatial_backward();
    } else {
      if (has_spatial) {
        const Tensor g_ce = spatial_backward();
        if (order == kChannelFirst) gc = gc + g_ce;
      }
      if (has_channel) {
        channel_backward();
        resolve_pool_terms();
      }
    }

    Tensor gx;
    if (saved["x_grad"].toBool()) {
      const auto zeros_p = at::zeros({N, HW}, x.options());
      gx = cbam_cpu::input_grad(g, x, c, s, a.defined() ? a : zeros_c, ce, dmax.defined() ? dmax : zeros_p,
                                gdw.defined() ? gdw : zeros_p, rd.defined() ? rd.contiguous() : zeros_p, pool_pa,
                                pool_max, pool_rp, spatial_first);
    }
    const Tensor g_residual = saved["residual_grad"].toBool() ? g : Tensor();  // d(out)/d(residual) = identity
    // One entry per forward argument (undefined for the non-tensor ones and the buffers).
    return {gx,     g_residual, g_w1,     g_b1,     g_w2,     g_b2,     g_compress, g_conv_w, Tensor(), g_bn_w,
            g_bn_b, Tensor(),   Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),   Tensor(), Tensor()};
  }
};

Tensor cbam(const Tensor& x, const OptTensor& residual, const OptTensor& w1, const OptTensor& b1,
            const OptTensor& w2, const OptTensor& b2, const OptTensor& compress_w, const OptTensor& conv_w,
            bool batch_norm, const OptTensor& bn_w, const OptTensor& bn_b, const OptTensor& running_mean,
            const OptTensor& running_var, const OptTensor& num_batches_tracked, std::vector<int64_t> pools,
            int64_t order, bool training, std::optional<double> momentum, double eps) {
  return CBAMFunction::apply(x, residual, w1, b1, w2, b2, compress_w, conv_w, batch_norm, bn_w, bn_b, running_mean,
                             running_var, num_batches_tracked, std::move(pools), order, training, momentum, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ablation_cbam, m) {
  // order: 0 channel-first, 1 parallel (product), 2 channel-only, 3 spatial-only, 4 spatial-first; pools: 0 avg,
  // 1 max, in the module's order. The BN buffers are updated in place in training, as nn.BatchNorm2d would.
  m.def(
      "cbam(Tensor x, Tensor? residual, Tensor? w1, Tensor? b1, Tensor? w2, Tensor? b2, Tensor? compress_w, "
      "Tensor? conv_w, bool batch_norm, Tensor? bn_w, Tensor? bn_b, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, int[] pools, int order, bool training, "
      "float? momentum, float eps) -> Tensor",
      &cbam);
}
