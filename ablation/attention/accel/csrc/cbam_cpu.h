// The fused CPU map passes of CBAM (cbam_cpu.cpp), shared with the whole-module autograd op
// (cbam_cpu_function.cpp). Maps are contiguous (N, C, positions...) float32 / float64 tensors; per-channel inputs
// are contiguous (N, C), per-position ones (N, positions), all of the map's dtype.
#pragma once

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <optional>
#include <vector>

// A named stage in torch.profiler's tables (free when no profiler is recording).
#define CBAM_STAGE(name) RECORD_FUNCTION(name, std::vector<c10::IValue>())

namespace cbam_cpu {

// {mean, max, number of positions equal to the max}, each (N, C), of x or (given s (N, positions)) of x * s.
std::vector<at::Tensor> channel_stats(const at::Tensor& x, const std::optional<at::Tensor>& s);
// {sum_c x * a, max_c x * ce, number of channels reaching that max}, each (N, positions).
std::vector<at::Tensor> spatial_stats(const at::Tensor& x, const at::Tensor& a, const at::Tensor& ce);
// x * c * s (+ residual), the map's shape.
at::Tensor gate_forward(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s,
                        const std::optional<at::Tensor>& residual);
// {grad of c (N, C), grad of s (N, positions)} from the output's grad g.
std::vector<at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& c,
                                      const at::Tensor& s);
// {grad of a, grad of ce} (N, C) from the descriptor's grads gdw and rd (grad of the max / tie count).
std::vector<at::Tensor> spatial_backward(const at::Tensor& x, const at::Tensor& ce, const at::Tensor& dmax,
                                         const at::Tensor& gdw, const at::Tensor& rd);
// Spatial-first: the grad of s (N, positions) through the channel pools of x * s.
at::Tensor pool_grad_positions(const at::Tensor& x, const at::Tensor& s, const at::Tensor& pa, const at::Tensor& pmax,
                               const at::Tensor& rp);
// The input's whole gradient in one pass (pools_see_s: spatial-first, the pools read x * s).
at::Tensor input_grad(const at::Tensor& g, const at::Tensor& x, const at::Tensor& c, const at::Tensor& s,
                      const at::Tensor& a, const at::Tensor& ce, const at::Tensor& dmax, const at::Tensor& gdw,
                      const at::Tensor& rd, const at::Tensor& pa, const at::Tensor& pmax, const at::Tensor& rp,
                      bool pools_see_s);
// The spatial gate's k x k conv, (N, K, H, W) -> (N, 1, H, W), and {grad of d, grad of w}.
at::Tensor spatial_conv(const at::Tensor& d, const at::Tensor& w);
std::vector<at::Tensor> spatial_conv_backward(const at::Tensor& gout, const at::Tensor& d, const at::Tensor& w);

}  // namespace cbam_cpu
