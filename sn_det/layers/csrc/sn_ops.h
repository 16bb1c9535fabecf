// The CPU operations sn_det._C exposes (bindings.cpp); see the .cpp files for the math.
#pragma once
#include <ATen/ATen.h>

#include <vector>

// switch_norm_cpu.cpp: the passes over (N, C, H, W) feature maps.
std::vector<at::Tensor> moments(const at::Tensor& x);
at::Tensor affine(const at::Tensor& x, const at::Tensor& center, const at::Tensor& scale, const at::Tensor& bias);
std::vector<at::Tensor> backward_reduce(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& center);
at::Tensor backward_dx(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& center, const at::Tensor& s,
                       const at::Tensor& a, const at::Tensor& b);

// switch_norm_mix_cpu.cpp: the (N, C)-sized mixing and its backward.
std::vector<at::Tensor> mix_forward(const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& weight,
                                    const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                                    const at::Tensor& bn_mean, const at::Tensor& bn_var, bool probs);
std::vector<at::Tensor> mix_backward(const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& weight,
                                     const at::Tensor& mean_ln, const at::Tensor& var_ln, const at::Tensor& bn_mean,
                                     const at::Tensor& bn_var, const at::Tensor& pm, const at::Tensor& pv,
                                     const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale,
                                     const at::Tensor& g_c, const at::Tensor& g_shift, bool probs);
std::vector<at::Tensor> batch_moments(const at::Tensor& mean_in, const at::Tensor& var_in);
std::vector<at::Tensor> dx_coefficients(const at::Tensor& mean_in, const at::Tensor& d_mean_in,
                                        const at::Tensor& d_var_in, const at::Tensor& bn_mean,
                                        const at::Tensor& d_mean_bn, const at::Tensor& d_var_bn, double count,
                                        int64_t length);

// switch_norm_fused_cpu.cpp: a whole SwitchNorm2d forward / backward in one call each.
std::vector<at::Tensor> fused_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                                      const at::Tensor& running_mean, const at::Tensor& running_var,
                                      const at::Tensor& num_batches, bool use_batch, double momentum,
                                      bool moving_average, bool probs);
std::vector<at::Tensor> fused_backward(const at::Tensor& dy, const at::Tensor& x, const std::vector<at::Tensor>& state,
                                       const at::Tensor& weight, double count, bool probs, bool need_dx);
// The two as one differentiable call (a C++ autograd Function): y, with fused_backward as its
// backward. Not differentiable twice.
at::Tensor fused_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                          const at::Tensor& running_mean, const at::Tensor& running_var,
                          const at::Tensor& num_batches, bool use_batch, double momentum, bool moving_average,
                          bool probs);
