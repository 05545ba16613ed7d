// Instance norm (affine) followed by LeakyReLU, forward and backward in one kernel each, for MindSpore's CPU
// back end (ops.Custom aot). MindSpore runs the same unit as GroupNorm + maximum, several passes over the
// activations per direction; here the forward reads x twice and writes once.
//
// Forward:  params = x (N, C, D, H, W), gamma (C), beta (C), options float32[2] = (eps, slope),
//           out y (like x), inv_std (N, C).
// Backward: params = gamma, beta, options, y, inv_std, dy, out dx (like y), dgamma (C), dbeta (C).
// slope 1 gives the plain instance norm. The backward is computed from the output, as in-place activated
// batch norm does (Rota Bulo et al., 2018): the normalized input is recovered from y, gamma and beta
// (LeakyReLU with a positive slope and the affine step are invertible), so the norm's input - the
// convolution's output - need not stay alive between the passes: one map less per conv unit. The inverse
// needs gamma != 0; a channel with |gamma| below kMinGamma gets no gamma gradient (its xhat is unknown) and the
// exact input gradient scale * (dn - mean(dn)) - scale * xhat * mean(dn xhat), whose second term vanishes with
// gamma. Statistics are accumulated in double precision.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "parallel.h"

namespace kitseg {
namespace {

struct Planes {
  int64_t batch = 0, channels = 0, size = 0;  // size: voxels per (sample, channel) plane
};

bool ReadShapes(int nparam, int expected, int *ndims, int64_t **shapes, const char **dtypes, Planes &planes) {
  if (nparam != expected || ndims[0] < 3) return false;
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  planes.batch = shapes[0][0];
  planes.channels = shapes[0][1];
  planes.size = 1;
  for (int d = 2; d < ndims[0]; ++d) planes.size *= shapes[0][d];
  return ndims[1] == 1 && shapes[1][0] == planes.channels && ndims[2] == 1 && shapes[2][0] == planes.channels &&
         ndims[3] == 1 && shapes[3][0] == 2;
}

// Sums run in float over blocks of kBlock voxels (vectorized: "omp simd" lets the compiler reorder them)
// and in double across blocks, so that large planes keep their precision.
constexpr int64_t kBlock = 4096;

// mean and 1 / sqrt(var + eps) of one plane
void PlaneStatistics(const float *x, int64_t size, float eps, float &mean, float &inv_std) {
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t start = 0; start < size; start += kBlock) {
    const int64_t stop = std::min(size, start + kBlock);
    float block_sum = 0.0f, block_sq = 0.0f;
#pragma omp simd reduction(+ : block_sum, block_sq)
    for (int64_t i = start; i < stop; ++i) {
      block_sum += x[i];
      block_sq += x[i] * x[i];
    }
    sum += block_sum;
    sum_sq += block_sq;
  }
  const double m = sum / size;
  const double var = std::max(sum_sq / size - m * m, 0.0);
  mean = static_cast<float>(m);
  inv_std = static_cast<float>(1.0 / std::sqrt(var + eps));
}

int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Planes p;
  if (!ReadShapes(nparam, 6, ndims, shapes, dtypes, p)) return 2;
  if (ndims[5] != 2 || shapes[5][0] != p.batch || shapes[5][1] != p.channels) return 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0], slope = static_cast<const float *>(params[3])[1];
  float *y = static_cast<float *>(params[4]);
  float *plane_inv_std = static_cast<float *>(params[5]);
  Runtime &rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  rt.pool->parallel_for(static_cast<int>(p.batch * p.channels), [&](int plane, int) {
    const int64_t c = plane % p.channels, offset = plane * p.size;
    float mean, inv_std;
    PlaneStatistics(x + offset, p.size, eps, mean, inv_std);
    plane_inv_std[plane] = inv_std;
    const float scale = gamma[c] * inv_std, shift = beta[c] - mean * scale;
    const float *in = x + offset;
    float *out = y + offset;
#pragma omp simd
    for (int64_t i = 0; i < p.size; ++i) {
      const float v = in[i] * scale + shift;
      out[i] = v > 0.0f ? v : v * slope;
    }
  });
  return 0;
}

// below this |gamma| the normalized input cannot be recovered from the output (file comment)
constexpr float kMinGamma = 1e-12f;

int Backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 9 || ndims[3] < 3) return 2;
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return 2;
  Planes p;
  p.batch = shapes[3][0];
  p.channels = shapes[3][1];
  p.size = 1;
  for (int d = 2; d < ndims[3]; ++d) p.size *= shapes[3][d];
  if (ndims[0] != 1 || shapes[0][0] != p.channels || ndims[1] != 1 || shapes[1][0] != p.channels ||
      ndims[2] != 1 || shapes[2][0] != 2 || ndims[4] != 2 || shapes[4][0] != p.batch ||
      shapes[4][1] != p.channels || ndims[5] != ndims[3] || ndims[6] != ndims[3])
    return 2;
  const float *gamma = static_cast<const float *>(params[0]);
  const float *beta = static_cast<const float *>(params[1]);
  const float slope = static_cast<const float *>(params[2])[1];
  const float *y = static_cast<const float *>(params[3]);
  const float *plane_inv_std = static_cast<const float *>(params[4]);
  const float *dy = static_cast<const float *>(params[5]);
  float *dx = static_cast<float *>(params[6]);
  float *dgamma = static_cast<float *>(params[7]);
  float *dbeta = static_cast<float *>(params[8]);
  const int64_t planes = p.batch * p.channels;
  const float inv_slope = 1.0f / slope;
  // per plane: sum of the gradient before the affine step (dn) and of dn * normalized x
  std::vector<double> sum_dn(planes), sum_dn_xhat(planes);
  Runtime &rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  rt.pool->parallel_for(static_cast<int>(planes), [&](int plane, int) {
    const int64_t c = plane % p.channels, offset = plane * p.size;
    // a one-voxel plane normalizes to exactly 0: take that rather than its rounding noise read back from y
    const bool invertible = p.size > 1 && std::fabs(gamma[c]) >= kMinGamma;
    const float inv_gamma = invertible ? 1.0f / gamma[c] : 0.0f, shift = beta[c];
    const float *out = y + offset, *grad = dy + offset;
    // y > 0 exactly where the affine output v is, and v = y there, y / slope elsewhere; xhat = (v - beta) / gamma
    double s1 = 0.0, s2 = 0.0;
    for (int64_t start = 0; start < p.size; start += kBlock) {
      const int64_t stop = std::min(p.size, start + kBlock);
      float block_dn = 0.0f, block_dn_xhat = 0.0f;
#pragma omp simd reduction(+ : block_dn, block_dn_xhat)
      for (int64_t i = start; i < stop; ++i) {
        const bool positive = out[i] > 0.0f;
        const float dn = positive ? grad[i] : grad[i] * slope;
        const float xhat = ((positive ? out[i] : out[i] * inv_slope) - shift) * inv_gamma;
        block_dn += dn;
        block_dn_xhat += dn * xhat;
      }
      s1 += block_dn;
      s2 += block_dn_xhat;
    }
    sum_dn[plane] = s1;
    sum_dn_xhat[plane] = s2;
    const float mean_dn = static_cast<float>(s1 / p.size), mean_dn_xhat = static_cast<float>(s2 / p.size);
    const float scale = gamma[c] * plane_inv_std[plane];
    float *result = dx + offset;
#pragma omp simd
    for (int64_t i = 0; i < p.size; ++i) {
      const bool positive = out[i] > 0.0f;
      const float dn = positive ? grad[i] : grad[i] * slope;
      const float xhat = ((positive ? out[i] : out[i] * inv_slope) - shift) * inv_gamma;
      result[i] = scale * (dn - mean_dn - xhat * mean_dn_xhat);
    }
  });
  for (int64_t c = 0; c < p.channels; ++c) {
    double g = 0.0, b = 0.0;
    for (int64_t n = 0; n < p.batch; ++n) {
      g += sum_dn_xhat[n * p.channels + c];
      b += sum_dn[n * p.channels + c];
    }
    dgamma[c] = static_cast<float>(g);
    dbeta[c] = static_cast<float>(b);
  }
  return 0;
}

}  // namespace
}  // namespace kitseg

extern "C" int InstanceNormActForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *, void *) {
  return kitseg::Forward(nparam, params, ndims, shapes, dtypes);
}

extern "C" int InstanceNormActBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *, void *) {
  return kitseg::Backward(nparam, params, ndims, shapes, dtypes);
}
