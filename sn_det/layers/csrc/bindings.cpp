// Python bindings of sn_det._C (the only translation unit that needs torch/extension.h).
#include <torch/extension.h>

#include "sn_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sn_det CPU kernels for Switchable Normalization";
  m.def("moments", &moments, "per-plane mean and unbiased variance of (N, C, H, W)");
  m.def("affine", &affine, "y = (x - center[n, c]) * scale[n, c] + bias[c]");
  m.def("backward_reduce", &backward_reduce, "per-plane sum(dy), sum(dy * (x - center[n, c]))");
  m.def("backward_dx", &backward_dx, "dx = dy * s[n, c] + (x - center[n, c]) * a[n, c] + b[n, c]");
  m.def("mix_forward", &mix_forward, "the (N, C) mixing: scale, mean, rstd, mean_ln, var_ln, pm, pv");
  m.def("mix_backward", &mix_backward, "its analytic backward");
  m.def("batch_moments", &batch_moments, "BN-term moments (1, C) from the (N, C) instance moments");
  m.def("dx_coefficients", &dx_coefficients, "a, b of dx = dy * scale + (x - m) * a + b, BN-term gradient included");
  m.def("fused_forward", &fused_forward, "a whole SwitchNorm2d forward: y and the state for fused_backward");
  m.def("fused_backward", &fused_backward, "its backward: dx (or None), d_weight, d_bias, d_mean/var logits");
  m.def("fused_autograd", &fused_autograd, "fused_forward's y, differentiable through fused_backward");
}
