// One call per direction for a SwitchNorm2d on the CPU (SwitchNorm2d._fused_forward: fused_forward
// without gradients, fused_autograd below with them).
//
// Why: at small and medium maps a layer step is paced by its fixed cost, not by the passes
// over the data. The staged path (sn_kernels.py + sn_mixing.py) makes eight calls into this
// extension per forward+backward, each behind Python wrappers (dtype checks, .contiguous(),
// named tuples, the running-statistics update as two more torch calls); together those cost
// more than the compiled math itself at (2, 256, 8, 8). These two functions run the same
// compiled steps in the same order, so their results are bit-identical to the staged path's.
//
// Only for layers whose batch statistics are local (not SyncSwitchNorm2d, which pools the
// BN term across processes between the steps) and whose tensors all share x's dtype.
//
// fused_autograd wraps the pair as a C++ autograd Function, so that a training step does not
// pass through Python between the two: the engine calls the backward directly. In the
// benchmark's round-robin at (2, 1024, 25, 25) a Python autograd.Function around the same
// two calls added about 360 us to the 800 us they take (ctx objects, save_for_backward, the
// once_differentiable wrapper, all cold after the other layers ran).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <vector>

#include "sn_ops.h"

namespace {

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == x.scalar_type(), name,
              " must be a CPU tensor of the input's dtype");
}

}  // namespace

// Returns y, then the state fused_backward takes: mean_in, var_in, scale, mean, rstd (N, C);
// mean_ln, var_ln (N, 1); pm, pv (K); mean_bn, var_bn (1, C), empty without a BN term.
// running_mean/running_var: (C,) buffers, empty tensors for a layer without a BN term; with
// use_batch the BN term takes this batch's moments and folds them into these buffers in place
// (moving average, or batch-average sums counted in num_batches), else it reads them.
std::vector<at::Tensor> fused_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                                      const at::Tensor& running_mean, const at::Tensor& running_var,
                                      const at::Tensor& num_batches, bool use_batch, double momentum,
                                      bool moving_average, bool probs) {
  TORCH_CHECK(x.dim() == 4 && x.numel() > 0, "fused_forward needs a non-empty (N, C, H, W) input");
  const int64_t c = x.size(1);
  const bool has_bn = running_mean.numel() > 0;
  for (auto* t : {&weight, &bias, &mean_logits, &var_logits}) check_like(*t, x, "fused_forward argument");
  if (has_bn) {
    check_like(running_mean, x, "running_mean");
    check_like(running_var, x, "running_var");
    TORCH_CHECK(running_mean.numel() == c && running_var.numel() == c && running_mean.is_contiguous() &&
                    running_var.is_contiguous(),
                "running statistics must be contiguous (C,) tensors");
  }
  const at::Tensor xc = x.contiguous();
  const auto moments_in = moments(xc);
  const at::Tensor &mean_in = moments_in[0], &var_in = moments_in[1];
  at::Tensor mean_bn = at::empty({0}, x.options()), var_bn = at::empty({0}, x.options());
  if (has_bn) {
    if (use_batch) {
      auto bn = batch_moments(mean_in, var_in);
      mean_bn = bn[0];
      var_bn = bn[1];
    } else {  // eval or frozen: the running statistics (views, as the staged path takes them)
      mean_bn = running_mean.view({1, c});
      var_bn = running_var.view({1, c});
    }
  }
  auto mixed = mix_forward(mean_in, var_in, weight.contiguous(), mean_logits.contiguous(),
                           var_logits.contiguous(), eps, mean_bn, var_bn, probs);
  // mixed: scale, mean, rstd, mean_ln, var_ln, pm, pv
  if (has_bn && use_batch) {
    // The same torch ops as SwitchNorm2d._track, so the buffers match the staged path bit for bit.
    c10::NoGradGuard no_grad;
    const at::Tensor bm = mean_bn.view({c}), bv = var_bn.view({c});
    if (moving_average) {
      running_mean.lerp_(bm, 1 - momentum);
      running_var.lerp_(bv, 1 - momentum);
    } else {
      running_mean.add_(bm);
      running_var.add_(at::pow(bm, 2) + bv);
      num_batches.add_(1);
    }
  }
  at::Tensor y = affine(xc, mixed[1], mixed[0], bias.contiguous());
  return {y,         mean_in,  var_in,   mixed[0], mixed[1], mixed[2],
          mixed[3],  mixed[4], mixed[5], mixed[6], mean_bn,  var_bn};
}

// The backward of fused_forward. state: its outputs after y (11 tensors). count: the number
// of samples behind batch BN moments, 0 when the BN term is absent or read the running
// statistics (then it passes no gradient into x). Returns dx (undefined, i.e. None, unless
// need_dx), d_weight, d_bias (C), d_mean_logits, d_var_logits (K).
std::vector<at::Tensor> fused_backward(const at::Tensor& dy, const at::Tensor& x, const std::vector<at::Tensor>& state,
                                       const at::Tensor& weight, double count, bool probs, bool need_dx) {
  TORCH_CHECK(state.size() == 11, "fused_backward takes the 11 state tensors of fused_forward");
  const at::Tensor &mean_in = state[0], &var_in = state[1], &scale = state[2], &mean = state[3];
  const at::Tensor &rstd = state[4], &mean_ln = state[5], &var_ln = state[6], &pm = state[7];
  const at::Tensor &pv = state[8], &mean_bn = state[9], &var_bn = state[10];
  const at::Tensor dyc = dy.contiguous(), xc = x.contiguous();
  const auto sums = backward_reduce(dyc, xc, mean_in);  // sum(dy), sum(dy * (x - mean_in))
  auto grads = mix_backward(mean_in, var_in, weight.contiguous(), mean_ln, var_ln, mean_bn, var_bn, pm, pv, mean,
                            rstd, scale, sums[1], sums[0], probs);
  // grads: d_mean_in, d_var_in, d_weight, d_bias, d_mean_logits, d_var_logits, d_mean_bn, d_var_bn
  at::Tensor dx;
  if (need_dx) {
    const bool from_batch = count > 0 && mean_bn.numel() > 0;
    const at::Tensor empty = at::empty({0}, x.options());
    auto coef = dx_coefficients(mean_in, grads[0], grads[1], from_batch ? mean_bn : empty,
                                from_batch ? grads[6] : empty, from_batch ? grads[7] : empty,
                                from_batch ? count : 0.0, x.size(2) * x.size(3));
    dx = backward_dx(dyc, xc, mean_in, scale, coef[0], coef[1]);
  }
  return {dx, grads[2], grads[3], grads[4], grads[5]};
}

// Named (not anonymous): the name appears in grad_fn, torch::autograd::CppNode<sn_det::FusedSwitchNorm>.
namespace sn_det {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Inputs: x, weight, bias, mean_logits, var_logits (differentiable), then fused_forward's
// remaining arguments. Saved: x, weight and the 11 state tensors of fused_forward, all as
// saved variables: autograd checks their versions (an in-place change before backward is an
// error, not a wrong gradient) and saved-tensor hooks (offloading, memory accounting) see them.
struct FusedSwitchNorm : public torch::autograd::Function<FusedSwitchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& mean_logits, const at::Tensor& var_logits,
                            double eps, const at::Tensor& running_mean, const at::Tensor& running_var,
                            const at::Tensor& num_batches, bool use_batch, double momentum, bool moving_average,
                            bool probs) {
    auto out = fused_forward(x, weight, bias, mean_logits, var_logits, eps, running_mean, running_var, num_batches,
                             use_batch, momentum, moving_average, probs);
    std::vector<at::Tensor> saved{x, weight};
    saved.insert(saved.end(), out.begin() + 1, out.end());
    ctx->save_for_backward(saved);
    // Samples behind batch BN moments; 0: no BN term, or it read the running statistics.
    ctx->saved_data["count"] = use_batch && running_mean.numel() > 0 ? static_cast<double>(x.size(0)) : 0.0;
    ctx->saved_data["probs"] = probs;
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> state(saved.begin() + 2, saved.end());
    const at::Tensor& dy = grad_outputs[0];
    std::vector<at::Tensor> grads;
    {
      // Compiled arithmetic: nothing autograd could record, whatever create_graph says.
      at::NoGradGuard no_grad;
      grads = fused_backward(dy, saved[0], state, saved[1], ctx->saved_data["count"].toDouble(),
                             ctx->saved_data["probs"].toBool(), ctx->needs_input_grad(0));
    }
    if (at::GradMode::is_enabled() && dy.requires_grad()) {
      // create_graph=True: as Python's once_differentiable (the staged path's Function), the
      // gradients come back differentiable through a node that refuses a second derivative
      // when it is asked for one, rather than as constants whose graph would silently be empty.
      variable_list fake;
      for (const auto& g : grads) fake.push_back(g.defined() ? g.detach().requires_grad_(true) : at::Tensor());
      grads = std::make_shared<torch::autograd::DelayedError>(
                  "SwitchNorm2d's backward cannot be differentiated again (a second derivative of SN "
                  "is not supported)",
                  static_cast<int64_t>(fake.size()))
                  ->apply(std::move(fake));
    }
    variable_list result(13);  // one per forward input; undefined for the non-differentiable ones
    for (size_t i = 0; i < grads.size(); ++i) result[i] = grads[i];
    return result;
  }
};

}  // namespace sn_det

at::Tensor fused_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                          const at::Tensor& running_mean, const at::Tensor& running_var,
                          const at::Tensor& num_batches, bool use_batch, double momentum, bool moving_average,
                          bool probs) {
  return sn_det::FusedSwitchNorm::apply(x, weight, bias, mean_logits, var_logits, eps, running_mean, running_var,
                                        num_batches, use_batch, momentum, moving_average, probs);
}
