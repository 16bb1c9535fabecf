"""An independent, deliberately plain Switchable Normalization for tests.

Written straight from the table in SN_FACTS.md (the published layer's formulation), in the
textbook order, with autograd doing all differentiation. Nothing here is shared with sn_det.
"""

import torch


def reference_switch_norm(
    x,
    weight,
    bias,
    mean_weight,
    var_weight,
    running_mean=None,
    running_var=None,
    training=True,
    eps=1e-5,
):
    """x: (N, C, H, W); weight/bias: (C,); mean_weight/var_weight: (3,) or (2,) logits;
    running stats (C,) or None. Returns (y, mean_bn, var_bn) with the batch BN moments (C,)
    when the BN term used the batch, else (y, None, None)."""
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    mean_in = xf.mean(-1, keepdim=True)
    if h * w > 1:
        var_in = xf.var(-1, keepdim=True)  # unbiased, as published
    else:
        var_in = torch.zeros_like(mean_in)  # sn_det's documented definition for H*W == 1
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in**2
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2
    using_bn = mean_weight.numel() == 3
    mean_bn = var_bn = None
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            bn_m, bn_v = mean_bn, var_bn
        else:
            bn_m = running_mean.reshape(1, c, 1)
            bn_v = running_var.reshape(1, c, 1)
    softmax = torch.nn.Softmax(0)
    wm = softmax(mean_weight)
    wv = softmax(var_weight)
    if using_bn:
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * bn_m
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * bn_v
    else:
        mean = wm[0] * mean_in + wm[1] * mean_ln
        var = wv[0] * var_in + wv[1] * var_ln
    xn = (xf - mean) / (var + eps).sqrt()
    y = xn.reshape(n, c, h, w) * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)
    if mean_bn is None:
        return y, None, None
    return y, mean_bn.reshape(c), var_bn.reshape(c)
