// CPU version of sn_mixing.py: the (N, C)-sized mixing of SN and its analytic backward, one
// call each way instead of ~20 and ~60 small torch ops (whose per-op dispatch cost more
// than the feature-map passes at detection shapes). Same math and notation as
// sn_mixing.py; both are tested against the same float64 reference.
//
// Stability: the LN and BN variances are the mean instance variance plus the spread of the
// instance means around their pooled mean (never mean(v + m^2) - mean^2, which cancels when
// |mean| >> std), so they are sums of non-negative terms; the gradients use the same
// centred forms (m - mean_ln, m - mean_bn, m - mu).
#include <ATen/OpMathType.h>
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "sn_ops.h"

namespace {

// The mixing weights: softmax of the logits, or (probs) the given probabilities themselves
// (Sparse SN passes sparsestmax outputs).
template <typename acc_t, typename scalar_t>
std::vector<acc_t> softmax(const scalar_t* logits, int64_t k, bool probs) {
  std::vector<acc_t> p(k);
  if (probs) {
    for (int64_t i = 0; i < k; ++i) p[i] = logits[i];
    return p;
  }
  acc_t mx = logits[0], sum = 0;
  for (int64_t i = 1; i < k; ++i) mx = std::max<acc_t>(mx, logits[i]);
  for (int64_t i = 0; i < k; ++i) sum += (p[i] = std::exp(acc_t(logits[i]) - mx));
  for (int64_t i = 0; i < k; ++i) p[i] /= sum;
  return p;
}

void check_small(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), name,
              " must be a contiguous CPU tensor of the input's dtype");
}

}  // namespace

// Returns scale, mean, rstd (N, C); mean_ln, var_ln (N, 1); pm, pv (K). probs: the "logits"
// are the mixing probabilities themselves.
std::vector<at::Tensor> mix_forward(const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& weight,
                                    const at::Tensor& mean_logits, const at::Tensor& var_logits, double eps,
                                    const at::Tensor& bn_mean, const at::Tensor& bn_var, bool probs) {
  for (auto* t : {&mean_in, &var_in, &weight, &mean_logits, &var_logits, &bn_mean, &bn_var}) {
    check_small(*t, mean_in, "mix_forward argument");
  }
  const int64_t n = mean_in.size(0), c = mean_in.size(1), k = mean_logits.numel();
  const bool has_bn = bn_mean.numel() > 0;
  TORCH_CHECK(k == (has_bn ? 3 : 2) && var_logits.numel() == k, "switch weights do not match the BN term");
  auto opts = mean_in.options();
  auto scale = at::empty({n, c}, opts), mean = at::empty({n, c}, opts), rstd = at::empty({n, c}, opts);
  auto mean_ln = at::empty({n, 1}, opts), var_ln = at::empty({n, 1}, opts);
  auto pm_t = at::empty({k}, opts), pv_t = at::empty({k}, opts);
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "sn_mix_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *m = mean_in.data_ptr<scalar_t>(), *v = var_in.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* bm = has_bn ? bn_mean.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bv = has_bn ? bn_var.data_ptr<scalar_t>() : nullptr;
    auto pm = softmax<acc_t>(mean_logits.data_ptr<scalar_t>(), k, probs);
    auto pv = softmax<acc_t>(var_logits.data_ptr<scalar_t>(), k, probs);
    for (int64_t i = 0; i < k; ++i) {
      pm_t.data_ptr<scalar_t>()[i] = pm[i];
      pv_t.data_ptr<scalar_t>()[i] = pv[i];
    }
    scalar_t *sc = scale.data_ptr<scalar_t>(), *mu = mean.data_ptr<scalar_t>(), *rs = rstd.data_ptr<scalar_t>();
    scalar_t *mln = mean_ln.data_ptr<scalar_t>(), *vln = var_ln.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      // LN: mean_ln = mean_c m, var_ln = mean_c v + mean_c (m - mean_ln)^2 (two passes over C).
      acc_t sm = 0, sv = 0, ss = 0;
      for (int64_t j = 0; j < c; ++j) {
        sm += acc_t(m[i * c + j]);
        sv += acc_t(v[i * c + j]);
      }
      const acc_t ml = sm / c;
      for (int64_t j = 0; j < c; ++j) {
        const acc_t d = acc_t(m[i * c + j]) - ml;
        ss += d * d;
      }
      const acc_t vl = (sv + ss) / c;
      mln[i] = ml;
      vln[i] = vl;
      for (int64_t j = 0; j < c; ++j) {
        const int64_t ij = i * c + j;
        acc_t mix_m = pm[0] * acc_t(m[ij]) + pm[1] * ml;
        acc_t mix_v = pv[0] * acc_t(v[ij]) + pv[1] * vl;
        if (has_bn) {
          mix_m += pm[2] * acc_t(bm[j]);
          mix_v += pv[2] * acc_t(bv[j]);
        }
        const acc_t r = acc_t(1) / std::sqrt(mix_v + acc_t(eps));
        mu[ij] = mix_m;
        rs[ij] = r;
        sc[ij] = acc_t(w[j]) * r;
      }
    }
  });
  return {scale, mean, rstd, mean_ln, var_ln, pm_t, pv_t};
}

// Given g_shift = sum_hw dy and g_c = sum_hw dy * (x - mean_in) per plane, returns d_mean_in,
// d_var_in (N, C) through IN and LN; d_weight, d_bias (C); d_mean_logits, d_var_logits (K);
// d_mean_bn, d_var_bn (1, C) (empty without a BN term).
std::vector<at::Tensor> mix_backward(const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& weight,
                                     const at::Tensor& mean_ln, const at::Tensor& var_ln, const at::Tensor& bn_mean,
                                     const at::Tensor& bn_var, const at::Tensor& pm_t, const at::Tensor& pv_t,
                                     const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale,
                                     const at::Tensor& g_c_in, const at::Tensor& g_shift_in, bool probs) {
  const at::Tensor g_c = g_c_in.contiguous(), g_shift = g_shift_in.contiguous();
  for (auto* t : {&var_in, &weight, &mean_ln, &var_ln, &bn_mean, &bn_var, &pm_t, &pv_t, &mean, &rstd, &scale,
                  &g_c, &g_shift}) {
    check_small(*t, mean_in, "mix_backward argument");
  }
  const int64_t n = mean_in.size(0), c = mean_in.size(1), k = pm_t.numel();
  const bool has_bn = bn_mean.numel() > 0;
  auto opts = mean_in.options();
  auto d_mean_in = at::empty({n, c}, opts), d_var_in = at::empty({n, c}, opts);
  auto d_weight = at::zeros({c}, opts), d_bias = at::zeros({c}, opts);
  auto d_ml = at::empty({k}, opts), d_vl = at::empty({k}, opts);
  auto d_mean_bn = has_bn ? at::empty({1, c}, opts) : at::empty({0}, opts);
  auto d_var_bn = has_bn ? at::empty({1, c}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "sn_mix_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *m = mean_in.data_ptr<scalar_t>(), *v = var_in.data_ptr<scalar_t>();
    const scalar_t *w = weight.data_ptr<scalar_t>(), *mln = mean_ln.data_ptr<scalar_t>();
    const scalar_t *vln = var_ln.data_ptr<scalar_t>(), *mu = mean.data_ptr<scalar_t>();
    const scalar_t *rs = rstd.data_ptr<scalar_t>(), *sc = scale.data_ptr<scalar_t>();
    const scalar_t *gc = g_c.data_ptr<scalar_t>(), *gh = g_shift.data_ptr<scalar_t>();
    const scalar_t *pm = pm_t.data_ptr<scalar_t>(), *pv = pv_t.data_ptr<scalar_t>();
    const scalar_t* bm = has_bn ? bn_mean.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bv = has_bn ? bn_var.data_ptr<scalar_t>() : nullptr;
    scalar_t *dm = d_mean_in.data_ptr<scalar_t>(), *dv = d_var_in.data_ptr<scalar_t>();
    scalar_t *dw = d_weight.data_ptr<scalar_t>(), *db = d_bias.data_ptr<scalar_t>();
    std::vector<acc_t> col_dmean(c, 0), col_dvar(c, 0);
    // Logit gradients, each mean term centred on the mixed mean: sum_k p_k (m_k - mu) = 0,
    // so this only removes a term common to all k, which the softmax backward cancels.
    acc_t dpm[3] = {0, 0, 0}, dpv[3] = {0, 0, 0};
    for (int64_t i = 0; i < n; ++i) {
      acc_t row_dmean = 0, row_dvar = 0;
      for (int64_t j = 0; j < c; ++j) {  // first: gradients of the mixed mean and variance
        const int64_t ij = i * c + j;
        const acc_t r = rs[ij], mij = m[ij], muij = mu[ij];
        const acc_t d_mean = -acc_t(gh[ij]) * acc_t(sc[ij]);  // y = (x - mu) * scale + bias
        const acc_t d_scale = acc_t(gc[ij]) + acc_t(gh[ij]) * (mij - muij);  // sum dy (x - mu)
        const acc_t d_var = d_scale * acc_t(w[j]) * acc_t(-0.5) * r * r * r;
        db[j] += gh[ij];
        dw[j] += d_scale * r;
        row_dmean += d_mean;
        row_dvar += d_var;
        col_dmean[j] += d_mean;
        col_dvar[j] += d_var;
        dpm[0] += d_mean * (mij - muij);
        dpm[1] += d_mean * (acc_t(mln[i]) - muij);
        dpv[0] += d_var * acc_t(v[ij]);
        if (has_bn) dpm[2] += d_mean * (acc_t(bm[j]) - muij);
        dm[ij] = d_mean;  // kept for the second loop
        dv[ij] = d_var;
      }
      dpv[1] += row_dvar * acc_t(vln[i]);
      // LN term: mean_ln = mean_c m, var_ln = mean_c v + mean_c (m - mean_ln)^2, whose
      // derivative in m is 2 (m - mean_ln) / C (the one through mean_ln sums to zero).
      const acc_t g_mean_ln = acc_t(pm[1]) * row_dmean / c;
      const acc_t g_var_ln = acc_t(pv[1]) * row_dvar / c;
      for (int64_t j = 0; j < c; ++j) {
        const int64_t ij = i * c + j;
        const acc_t d_mean = dm[ij], d_var = dv[ij];
        dm[ij] = acc_t(pm[0]) * d_mean + g_mean_ln + 2 * (acc_t(m[ij]) - acc_t(mln[i])) * g_var_ln;
        dv[ij] = acc_t(pv[0]) * d_var + g_var_ln;
      }
    }
    if (has_bn) {
      scalar_t *dbm = d_mean_bn.data_ptr<scalar_t>(), *dbv = d_var_bn.data_ptr<scalar_t>();
      for (int64_t j = 0; j < c; ++j) {
        dbm[j] = acc_t(pm[2]) * col_dmean[j];
        dbv[j] = acc_t(pv[2]) * col_dvar[j];
        dpv[2] += col_dvar[j] * acc_t(bv[j]);
      }
    }
    // softmax backward: d logit_i = p_i (dp_i - sum_j p_j dp_j). With probs, dp itself: its
    // common (centring) term is cancelled by any map onto the simplex upstream, as here.
    acc_t sm = 0, sv = 0;
    for (int64_t i = 0; i < k; ++i) {
      sm += acc_t(pm[i]) * dpm[i];
      sv += acc_t(pv[i]) * dpv[i];
    }
    for (int64_t i = 0; i < k; ++i) {
      d_ml.data_ptr<scalar_t>()[i] = probs ? dpm[i] : acc_t(pm[i]) * (dpm[i] - sm);
      d_vl.data_ptr<scalar_t>()[i] = probs ? dpv[i] : acc_t(pv[i]) * (dpv[i] - sv);
    }
  });
  return {d_mean_in, d_var_in, d_weight, d_bias, d_ml, d_vl, d_mean_bn, d_var_bn};
}

// BN-term moments of a batch from its instance moments (sn_mixing.batch_moments):
// mean_bn = mean_n m, var_bn = mean_n v + mean_n (m - mean_bn)^2, each (1, C).
std::vector<at::Tensor> batch_moments(const at::Tensor& mean_in, const at::Tensor& var_in) {
  check_small(mean_in, mean_in, "batch_moments argument");
  check_small(var_in, mean_in, "batch_moments argument");
  const int64_t n = mean_in.size(0), c = mean_in.size(1);
  TORCH_CHECK(n > 0, "batch_moments needs at least one sample");
  auto mean_bn = at::empty({1, c}, mean_in.options()), var_bn = at::empty({1, c}, mean_in.options());
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "sn_batch_moments", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *m = mean_in.data_ptr<scalar_t>(), *v = var_in.data_ptr<scalar_t>();
    scalar_t *bm = mean_bn.data_ptr<scalar_t>(), *bv = var_bn.data_ptr<scalar_t>();
    std::vector<acc_t> sm(c, 0), sv(c, 0), ss(c, 0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        sm[j] += acc_t(m[i * c + j]);
        sv[j] += acc_t(v[i * c + j]);
      }
    }
    for (int64_t j = 0; j < c; ++j) sm[j] /= n;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        const acc_t d = acc_t(m[i * c + j]) - sm[j];
        ss[j] += d * d;
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      bm[j] = sm[j];
      bv[j] = (sv[j] + ss[j]) / n;
    }
  });
  return {mean_bn, var_bn};
}

// The per-plane coefficients of dx = dy * scale + (x - m) * a + b (sn_mixing.dx_coefficients):
// first the gradient through batch BN moments, when given (bn_mean non-empty), is added to
// the instance-moment gradients: d_mean_in += d_mean_bn / count + 2 (m - mean_bn) d_var_bn / count,
// d_var_in += d_var_bn / count; then a = d_var_in * 2 / (L - 1) (0 when L == 1, where var_in
// is the constant 0) and b = d_mean_in / L.
std::vector<at::Tensor> dx_coefficients(const at::Tensor& mean_in, const at::Tensor& d_mean_in,
                                        const at::Tensor& d_var_in, const at::Tensor& bn_mean,
                                        const at::Tensor& d_mean_bn, const at::Tensor& d_var_bn, double count,
                                        int64_t length) {
  for (auto* t : {&d_mean_in, &d_var_in, &bn_mean, &d_mean_bn, &d_var_bn}) {
    check_small(*t, mean_in, "dx_coefficients argument");
  }
  const int64_t n = mean_in.size(0), c = mean_in.size(1);
  const bool has_bn = bn_mean.numel() > 0;
  TORCH_CHECK(!has_bn || (bn_mean.numel() == c && d_mean_bn.numel() == c && d_var_bn.numel() == c && count > 0),
              "dx_coefficients: BN-term arguments must be (1, C) with a positive count");
  auto a = at::empty({n, c}, mean_in.options()), b = at::empty({n, c}, mean_in.options());
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "sn_dx_coefficients", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *m = mean_in.data_ptr<scalar_t>(), *dm = d_mean_in.data_ptr<scalar_t>();
    const scalar_t* dv = d_var_in.data_ptr<scalar_t>();
    const scalar_t* bm = has_bn ? bn_mean.data_ptr<scalar_t>() : nullptr;
    const scalar_t* dbm = has_bn ? d_mean_bn.data_ptr<scalar_t>() : nullptr;
    const scalar_t* dbv = has_bn ? d_var_bn.data_ptr<scalar_t>() : nullptr;
    scalar_t *pa = a.data_ptr<scalar_t>(), *pb = b.data_ptr<scalar_t>();
    const acc_t inv_count = has_bn ? acc_t(1) / acc_t(count) : acc_t(0);
    const acc_t two_over_l1 = length > 1 ? acc_t(2) / acc_t(length - 1) : acc_t(0);
    const acc_t inv_l = acc_t(1) / acc_t(length);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        const int64_t ij = i * c + j;
        acc_t d_mean = dm[ij], d_var = dv[ij];
        if (has_bn) {
          const acc_t d_sq = acc_t(dbv[j]) * inv_count;
          d_mean += acc_t(dbm[j]) * inv_count + 2 * (acc_t(m[ij]) - acc_t(bm[j])) * d_sq;
          d_var += d_sq;
        }
        pa[ij] = d_var * two_over_l1;
        pb[ij] = d_mean * inv_l;
      }
    }
  });
  return {a, b};
}
