// CPU kernels for Switchable Normalization: the passes over N*C*H*W data.
//
// Every kernel takes contiguous (N, C, H, W) tensors, seen as R = N*C rows ("planes") of
// length L = H*W, and is parallel over rows, so each row is read while it is hot in cache:
//   moments:          mean[r], unbiased var[r]        (one pass of sums shifted by the row's first value)
//   affine:           y = (x - center[r]) * scale[r] + bias[c]        (one read of x, one write of y)
//   backward_reduce:  sum(dy), sum(dy * (x - center[r])) per row      (one read of dy and x)
//   backward_dx:      dx = dy * s[r] + (x - center[r]) * a[r] + b[r]  (one read of dy and x, one write)
// Accumulation uses at::opmath_type (float for float, double for double).
// Why every pass subtracts a per-row center (a mean of the row) instead of folding it into
// an offset: with data far from zero (|mean| >> std), x * scale + (bias - mean * scale)
// cancels two large terms in the output's precision; x - center is exact when both are close.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include "sn_ops.h"

#include <algorithm>
#include <vector>

namespace {

// Rows per parallel task: enough elements (~32K) that a task outweighs the cost of waking
// a thread; small maps (ROI heads, late stages) then run inline, as ATen's own kernels do.
int64_t grain(int64_t len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(len, 1)); }

void check_planes(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(), name, " must be a contiguous (N, C, H, W) tensor");
}

int64_t num_rows(const at::Tensor& t) { return t.size(0) * t.size(1); }

// Row sums with kLanes independent partial sums: a single running sum (one SIMD register)
// is bound by the latency of the floating-point add; 16 partials become several vector
// accumulators that the CPU adds in parallel.
constexpr int64_t kLanes = 16;

// sum_i f(i) and sum_i g(i) over [0, len) in one pass (f, g inlined element functions).
template <typename acc_t, typename F, typename G>
inline void row_sums(int64_t len, F f, G g, acc_t& sum_f, acc_t& sum_g) {
  acc_t pf[kLanes] = {}, pg[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      pf[k] += f(i + k);
      pg[k] += g(i + k);
    }
  }
  acc_t tf = 0, tg = 0;
  for (; i < len; ++i) {
    tf += f(i);
    tg += g(i);
  }
  for (int64_t k = 0; k < kLanes; ++k) {
    tf += pf[k];
    tg += pg[k];
  }
  sum_f = tf;
  sum_g = tg;
}
int64_t row_len(const at::Tensor& t) { return t.size(2) * t.size(3); }

template <typename scalar_t>
void moments_impl(const scalar_t* x, scalar_t* mean, scalar_t* var, int64_t rows, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  // L == 1: the unbiased estimate is 0/0; sn_det defines the variance of one element as 0.
  const acc_t denom = len > 1 ? acc_t(len - 1) : acc_t(1);
  at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * len;
      // One pass of sums shifted by the row's first element, so E[d^2] - E[d]^2 (with d = x - x0)
      // only cancels as much as the row mean differs from one of its own values, then a
      // centred correction: ss = sum (x - m)^2 = sum d^2 - (sum d)^2 / L exactly in real
      // arithmetic; the shift keeps both terms of the size of the variance.
      const acc_t x0 = row[0];
      acc_t sd = 0, sdd = 0;
      row_sums<acc_t>(
          len, [row, x0](int64_t i) { return acc_t(row[i]) - x0; },
          [row, x0](int64_t i) {
            const acc_t d = acc_t(row[i]) - x0;
            return d * d;
          },
          sd, sdd);
      const acc_t m = x0 + sd / acc_t(len);
      const acc_t ss = std::max<acc_t>(sdd - sd * sd / acc_t(len), 0);
      mean[r] = scalar_t(m);
      var[r] = scalar_t(ss / denom);
    }
  });
}

template <typename scalar_t>
void affine_impl(const scalar_t* x, const scalar_t* center, const scalar_t* scale, const scalar_t* bias,
                 scalar_t* y, int64_t rows, int64_t channels, int64_t len) {
  at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * len;
      scalar_t* yr = y + r * len;
      const scalar_t m = center[r], a = scale[r], b = bias[r % channels];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yr[i] = (xr[i] - m) * a + b;
    }
  });
}

template <typename scalar_t>
void backward_reduce_impl(const scalar_t* dy, const scalar_t* x, const scalar_t* center, scalar_t* sum_dy,
                          scalar_t* sum_dy_x, int64_t rows, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = dy + r * len;
      const scalar_t* xr = x + r * len;
      const acc_t m = center[r];
      acc_t s = 0, sx = 0;
      row_sums<acc_t>(
          len, [g](int64_t i) { return acc_t(g[i]); },
          [g, xr, m](int64_t i) { return acc_t(g[i]) * (acc_t(xr[i]) - m); }, s, sx);
      sum_dy[r] = scalar_t(s);
      sum_dy_x[r] = scalar_t(sx);
    }
  });
}

template <typename scalar_t>
void backward_dx_impl(const scalar_t* dy, const scalar_t* x, const scalar_t* center, const scalar_t* s,
                      const scalar_t* a, const scalar_t* b, scalar_t* dx, int64_t rows, int64_t len) {
  at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = dy + r * len;
      const scalar_t* xr = x + r * len;
      scalar_t* o = dx + r * len;
      const scalar_t m = center[r], sr = s[r], ar = a[r], br = b[r];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = g[i] * sr + (xr[i] - m) * ar + br;
    }
  });
}

}  // namespace

std::vector<at::Tensor> moments(const at::Tensor& x) {
  check_planes(x, "x");
  auto mean = at::empty({x.size(0), x.size(1)}, x.options());
  auto var = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_moments", [&] {
    moments_impl<scalar_t>(x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>(),
                           num_rows(x), row_len(x));
  });
  return {mean, var};
}

static void check_rows(const at::Tensor& t, const at::Tensor& x, int64_t count) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == count && t.scalar_type() == x.scalar_type(),
              "per-row (per-channel for bias) coefficients must be contiguous, of x's dtype");
}

at::Tensor affine(const at::Tensor& x, const at::Tensor& center, const at::Tensor& scale, const at::Tensor& bias) {
  check_planes(x, "x");
  check_rows(center, x, num_rows(x));
  check_rows(scale, x, num_rows(x));
  check_rows(bias, x, x.size(1));
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_affine", [&] {
    affine_impl<scalar_t>(x.data_ptr<scalar_t>(), center.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                          bias.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), num_rows(x), x.size(1), row_len(x));
  });
  return y;
}

std::vector<at::Tensor> backward_reduce(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& center) {
  check_planes(dy, "dy");
  check_planes(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy and x must match");
  check_rows(center, x, num_rows(x));
  auto sum_dy = at::empty({x.size(0), x.size(1)}, x.options());
  auto sum_dy_x = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_backward_reduce", [&] {
    backward_reduce_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), center.data_ptr<scalar_t>(),
                                   sum_dy.data_ptr<scalar_t>(),
                                   sum_dy_x.data_ptr<scalar_t>(), num_rows(x), row_len(x));
  });
  return {sum_dy, sum_dy_x};
}

at::Tensor backward_dx(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& center, const at::Tensor& s,
                       const at::Tensor& a, const at::Tensor& b) {
  check_planes(dy, "dy");
  check_planes(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy and x must match");
  for (const at::Tensor* t : {&center, &s, &a, &b}) check_rows(*t, x, num_rows(x));
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_backward_dx", [&] {
    backward_dx_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), center.data_ptr<scalar_t>(),
                               s.data_ptr<scalar_t>(),
                               a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), num_rows(x),
                               row_len(x));
  });
  return dx;
}
