// 3D convolution kernels for MindSpore's CPU back end (ops.Custom, func_type "aot"), calling the oneDNN
// library that the MindSpore wheel bundles (lib/libdnnl.so.3) with the memory layouts its fast kernels want.
//
// Why: MindSpore's own Conv3d kernels describe plain NCDHW tensors to oneDNN, for which it only has the
// im2col GEMM path; with channels-last activations and "any" weights oneDNN picks its brgemm kernels, several
// times faster for the forward and backward-data passes (docs/PERFORMANCE.md). Tensors stay plain NCDHW in
// MindSpore; each call reorders into the layouts the primitive uses and back.
//
// The wheel ships no oneDNN headers, so the few C API entry points used are declared here from the
// oneDNN 3.x C API (stable within the major version); __init__.py checks the library version first.
// Under the AVX2 cap conv.py takes MindSpore's own weight gradient instead (the same GEMM, faster there).
//
// Every kernel takes a config (int64[9]: strides, paddings, dilations as oneDNN counts them, i.e.
// dilation - 1) as its last input; the entry points are described above Run.
// The forward passes work through depth slabs, so their extra memory stays bounded for large inputs.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "parallel.h"

extern "C" {
typedef int64_t dnnl_dims[12];
struct dnnl_exec_arg { int arg; dnnl_handle memory; };

dnnl_status dnnl_memory_desc_create_with_tag(dnnl_handle *md, int ndims, const dnnl_dims dims, int data_type,
                                             int tag);
dnnl_status dnnl_memory_desc_create_with_strides(dnnl_handle *md, int ndims, const dnnl_dims dims, int data_type,
                                                 const dnnl_dims strides);
dnnl_status dnnl_memory_desc_destroy(dnnl_handle md);
size_t dnnl_memory_desc_get_size(dnnl_handle md);
int dnnl_memory_desc_equal(dnnl_handle lhs, dnnl_handle rhs);
dnnl_status dnnl_convolution_forward_primitive_desc_create(
    dnnl_handle *pd, dnnl_handle engine, int prop_kind, int alg_kind, dnnl_handle src, dnnl_handle weights,
    dnnl_handle bias, dnnl_handle dst, const int64_t *strides, const int64_t *dilates, const int64_t *padding_l,
    const int64_t *padding_r, dnnl_handle attr);
dnnl_status dnnl_convolution_backward_data_primitive_desc_create(
    dnnl_handle *pd, dnnl_handle engine, int alg_kind, dnnl_handle diff_src, dnnl_handle weights,
    dnnl_handle diff_dst, const int64_t *strides, const int64_t *dilates, const int64_t *padding_l,
    const int64_t *padding_r, dnnl_handle hint_fwd_pd, dnnl_handle attr);
dnnl_status dnnl_convolution_backward_weights_primitive_desc_create(
    dnnl_handle *pd, dnnl_handle engine, int alg_kind, dnnl_handle src, dnnl_handle diff_weights,
    dnnl_handle diff_bias, dnnl_handle diff_dst, const int64_t *strides, const int64_t *dilates,
    const int64_t *padding_l, const int64_t *padding_r, dnnl_handle hint_fwd_pd, dnnl_handle attr);
dnnl_status dnnl_reorder_primitive_desc_create(dnnl_handle *pd, dnnl_handle src_md, dnnl_handle src_engine,
                                               dnnl_handle dst_md, dnnl_handle dst_engine, dnnl_handle attr);
dnnl_handle dnnl_primitive_desc_query_md(dnnl_handle pd, int what, int index);
dnnl_status dnnl_primitive_create(dnnl_handle *primitive, dnnl_handle pd);
dnnl_status dnnl_primitive_execute(dnnl_handle primitive, dnnl_handle stream, int nargs, const dnnl_exec_arg *args);
dnnl_status dnnl_memory_create(dnnl_handle *memory, dnnl_handle md, dnnl_handle engine, void *handle);
dnnl_status dnnl_memory_set_data_handle(dnnl_handle memory, void *handle);
dnnl_status dnnl_stream_wait(dnnl_handle stream);
}

namespace kitseg {
namespace {

// oneDNN 3.x C API constants
constexpr int kF32 = 3, kTagAny = 1, kConvolutionDirect = 1;
constexpr int kForwardTraining = 64;  // the backward passes need a training-mode hint
constexpr int kQuerySrc = 129, kQueryDiffSrc = 130, kQueryWeights = 131, kQueryDiffWeights = 132;
constexpr int kQueryDst = 133, kQueryDiffDst = 134;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgDiffSrc = 129, kArgDiffDst = 145;
constexpr int kArgDiffWeights = 161;
void *const kNoHandle = nullptr;

// Grow-only scratch buffers for the channels-last copies, shared by all layers (calls are serialized).
struct Scratch {
  std::vector<float> buffers[3];
  void *Get(int slot, size_t bytes) {
    std::vector<float> &buffer = buffers[slot];
    if (buffer.size() * sizeof(float) < bytes) buffer.resize(bytes / sizeof(float) + 16);
    return buffer.data();
  }
};

// A tensor of ``shape`` inside a plain NCDHW tensor of ``full`` shape (a slab of depth rows, or all of it).
dnnl_handle PlainDesc(const int64_t *shape, const int64_t *full) {
  dnnl_dims dims = {0}, strides = {0};
  for (int i = 0; i < 5; ++i) dims[i] = shape[i];
  strides[4] = 1;
  for (int i = 3; i >= 0; --i) strides[i] = strides[i + 1] * full[i + 1];
  dnnl_handle md = nullptr;
  return dnnl_memory_desc_create_with_strides(&md, 5, dims, kF32, strides) == 0 ? md : nullptr;
}

// Activations in channels-last order (N, D, H, W, C): oneDNN's brgemm convolutions take it and measured
// fastest (forward 2x the blocked jit kernel at 8 channels, equal or better at 32-320).
dnnl_handle ChannelsLastDesc(const int64_t *shape) {
  dnnl_dims dims = {0}, strides = {0};
  for (int i = 0; i < 5; ++i) dims[i] = shape[i];
  strides[1] = 1;
  strides[4] = dims[1];
  strides[3] = strides[4] * dims[4];
  strides[2] = strides[3] * dims[3];
  strides[0] = strides[2] * dims[2];
  dnnl_handle md = nullptr;
  return dnnl_memory_desc_create_with_strides(&md, 5, dims, kF32, strides) == 0 ? md : nullptr;
}

dnnl_handle AnyDesc(const int64_t *shape) {
  dnnl_dims dims = {0};
  for (int i = 0; i < 5; ++i) dims[i] = shape[i];
  dnnl_handle md = nullptr;
  return dnnl_memory_desc_create_with_tag(&md, 5, dims, kF32, kTagAny) == 0 ? md : nullptr;
}

// One tensor argument: MindSpore's plain buffer, and the primitive's layout with a reorder between them
// when they differ (to_primitive: plain -> chosen before the call; otherwise chosen -> plain after it).
struct Operand {
  dnnl_handle plain_memory = nullptr, chosen_memory = nullptr, reorder = nullptr;
  size_t chosen_bytes = 0;
  int scratch_slot = 0;
  bool to_primitive = true;

  bool Init(Runtime &rt, const int64_t *shape, const int64_t *full, dnnl_handle chosen_md, int slot,
            bool into_primitive) {
    dnnl_handle plain_md = PlainDesc(shape, full);
    if (!plain_md || !chosen_md) return false;
    scratch_slot = slot;
    to_primitive = into_primitive;
    bool ok = dnnl_memory_create(&plain_memory, plain_md, rt.engine, kNoHandle) == 0;
    if (ok && !dnnl_memory_desc_equal(plain_md, chosen_md)) {
      chosen_bytes = dnnl_memory_desc_get_size(chosen_md);
      dnnl_handle reorder_pd = nullptr;
      ok = dnnl_memory_create(&chosen_memory, chosen_md, rt.engine, kNoHandle) == 0 &&
           (into_primitive
                ? dnnl_reorder_primitive_desc_create(&reorder_pd, plain_md, rt.engine, chosen_md, rt.engine, nullptr)
                : dnnl_reorder_primitive_desc_create(&reorder_pd, chosen_md, rt.engine, plain_md, rt.engine,
                                                     nullptr)) == 0 &&
           dnnl_primitive_create(&reorder, reorder_pd) == 0;
    }
    dnnl_memory_desc_destroy(plain_md);
    return ok;
  }
  // Binds MindSpore's buffer; returns the memory the primitive must use.
  dnnl_handle Bind(void *data, Scratch &scratch) {
    dnnl_memory_set_data_handle(plain_memory, data);
    if (!reorder) return plain_memory;
    dnnl_memory_set_data_handle(chosen_memory, scratch.Get(scratch_slot, chosen_bytes));
    return chosen_memory;
  }
  bool Reorder(Runtime &rt) const {
    if (!reorder) return true;
    dnnl_exec_arg args[2] = {{kArgSrc, to_primitive ? plain_memory : chosen_memory},
                             {kArgDst, to_primitive ? chosen_memory : plain_memory}};
    return dnnl_primitive_execute(reorder, rt.stream, 2, args) == 0;
  }
};

enum Pass { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// A primitive for one pass and one problem (shapes + config), with its three operands in the order
// (first input, second input, output): forward x, w -> y; backward data dy, w -> dx; weights x, dy -> dw.
struct Kernel {
  dnnl_handle primitive = nullptr;
  Operand operands[3];
  int args[3];
  bool ok = false;
};

// x and y: the shapes this primitive works on (a slab of depth rows in the forward passes), x_full and
// y_full: the tensors they are cut from; pad_l / pad_r per spatial axis (a slab may pad only one side).
struct Problem {
  int64_t x[5], w[5], y[5], x_full[5], y_full[5];
  int64_t strides[3], pad_l[3], pad_r[3], dilates[3];
  int64_t pass;
  bool operator<(const Problem &o) const { return std::memcmp(this, &o, sizeof(Problem)) < 0; }
};

bool BuildKernel(Runtime &rt, const Problem &p, Kernel &k) {
  const int64_t *strides = p.strides, *dilates = p.dilates;
  dnnl_handle x_any = ChannelsLastDesc(p.x), w_any = AnyDesc(p.w), y_any = ChannelsLastDesc(p.y);
  dnnl_handle fwd_pd = nullptr, pd = nullptr;
  bool ok = x_any && w_any && y_any &&
            dnnl_convolution_forward_primitive_desc_create(
                &fwd_pd, rt.engine, kForwardTraining, kConvolutionDirect, x_any,
                w_any, nullptr, y_any, strides, dilates, p.pad_l, p.pad_r, nullptr) == 0;
  if (ok && p.pass == kForward) {
    pd = fwd_pd;
    ok = k.operands[0].Init(rt, p.x, p.x_full, dnnl_primitive_desc_query_md(pd, kQuerySrc, 0), 0, true) &&
         k.operands[1].Init(rt, p.w, p.w, dnnl_primitive_desc_query_md(pd, kQueryWeights, 0), 1, true) &&
         k.operands[2].Init(rt, p.y, p.y_full, dnnl_primitive_desc_query_md(pd, kQueryDst, 0), 2, false);
    k.args[0] = kArgSrc, k.args[1] = kArgWeights, k.args[2] = kArgDst;
  } else if (ok && p.pass == kBackwardData) {
    ok = dnnl_convolution_backward_data_primitive_desc_create(&pd, rt.engine, kConvolutionDirect, x_any, w_any,
                                                              y_any, strides, dilates, p.pad_l, p.pad_r, fwd_pd,
                                                              nullptr) == 0 &&
         k.operands[0].Init(rt, p.y, p.y_full, dnnl_primitive_desc_query_md(pd, kQueryDiffDst, 0), 0, true) &&
         k.operands[1].Init(rt, p.w, p.w, dnnl_primitive_desc_query_md(pd, kQueryWeights, 0), 1, true) &&
         k.operands[2].Init(rt, p.x, p.x_full, dnnl_primitive_desc_query_md(pd, kQueryDiffSrc, 0), 2, false);
    k.args[0] = kArgDiffDst, k.args[1] = kArgWeights, k.args[2] = kArgDiffSrc;
  } else if (ok) {
    ok = dnnl_convolution_backward_weights_primitive_desc_create(&pd, rt.engine, kConvolutionDirect, x_any, w_any,
                                                                 nullptr, y_any, strides, dilates, p.pad_l,
                                                                 p.pad_r, fwd_pd, nullptr) == 0 &&
         k.operands[0].Init(rt, p.x, p.x_full, dnnl_primitive_desc_query_md(pd, kQuerySrc, 0), 0, true) &&
         k.operands[1].Init(rt, p.y, p.y_full, dnnl_primitive_desc_query_md(pd, kQueryDiffDst, 0), 1, true) &&
         k.operands[2].Init(rt, p.w, p.w, dnnl_primitive_desc_query_md(pd, kQueryDiffWeights, 0), 2, false);
    k.args[0] = kArgSrc, k.args[1] = kArgDiffDst, k.args[2] = kArgDiffWeights;
  }
  ok = ok && dnnl_primitive_create(&k.primitive, pd) == 0;
  // primitive descriptors and "any" descriptors are kept: a few per layer shape, for the process lifetime
  return ok;
}

// Runs one primitive on buffers (first input, second input, output) in operand order.
bool Execute(Runtime &rt, const Problem &p, void *first, void *second, void *output) {
  static std::map<Problem, std::unique_ptr<Kernel>> kernels;
  static Scratch scratch;
  std::unique_ptr<Kernel> &slot = kernels[p];
  if (!slot) {
    slot.reset(new Kernel());
    slot->ok = BuildKernel(rt, p, *slot);
  }
  Kernel &k = *slot;
  if (!k.ok) {
    std::fprintf(stderr, "onednn convolution: oneDNN cannot build pass %d for this problem\n", int(p.pass));
    return false;
  }
  void *data[3] = {first, second, output};
  dnnl_exec_arg args[3];
  for (int i = 0; i < 3; ++i) args[i] = {k.args[i], k.operands[i].Bind(data[i], scratch)};
  return k.operands[0].Reorder(rt) && k.operands[1].Reorder(rt) &&
         dnnl_primitive_execute(k.primitive, rt.stream, 3, args) == 0 && k.operands[2].Reorder(rt) &&
         dnnl_stream_wait(rt.stream) == 0;
}

// The forward passes (convolution and transposed convolution) cut their output into slabs of depth rows so
// that the channels-last copies (scratch memory on top of MindSpore's own tensors) stay near kSlabBytes even
// for whole-case inference windows.
// KITSEG_CONV_SLAB_BYTES overrides the size (the tests use tiny slabs).
constexpr int64_t kSlabBytes = 64 << 20;

int64_t SlabBytes() {
  const char *value = std::getenv("KITSEG_CONV_SLAB_BYTES");
  const long long bytes = value ? std::atoll(value) : 0;
  return bytes > 0 ? bytes : kSlabBytes;
}

bool Forward(Runtime &rt, Problem p, float *x, float *w, float *y) {
  const int64_t in_row = p.x[0] * p.x[1] * p.x[3] * p.x[4] * 4, out_row = p.y[0] * p.y[1] * p.y[3] * p.y[4] * 4;
  const int64_t depth_in = p.x[2], depth_out = p.y[2], stride = p.strides[0], pad = p.pad_l[0];
  const int64_t extent = (p.w[2] - 1) * (p.dilates[0] + 1) + 1;
  const int64_t budget = SlabBytes();
  const int64_t rows = depth_in * in_row + depth_out * out_row > budget
                           ? std::max<int64_t>(1, budget / (out_row + stride * in_row))
                           : depth_out;
  for (int64_t first = 0; first < depth_out; first += rows) {
    const int64_t last = std::min(depth_out, first + rows);  // output rows [first, last)
    const int64_t begin = first * stride - pad, end = (last - 1) * stride - pad + extent;  // input rows read
    const int64_t r0 = std::max<int64_t>(0, begin), r1 = std::min(depth_in, end);
    Problem slab = p;
    slab.x[2] = r1 - r0;
    slab.y[2] = last - first;
    slab.pad_l[0] = r0 - begin;
    slab.pad_r[0] = end - r1;
    if (!Execute(rt, slab, x + r0 * p.x[3] * p.x[4], w, y + first * p.y[3] * p.y[4])) return false;
  }
  return true;
}

// A transposed convolution with kernel = stride along depth and no padding there: input rows [a, b) make
// exactly output rows [a * stride, b * stride), so it too can work through slabs.
bool TransposeForward(Runtime &rt, Problem p, float *in, float *w, float *out) {
  const int64_t stride = p.strides[0];
  if (p.w[2] != stride || p.pad_l[0] != 0 || p.dilates[0] != 0) return Execute(rt, p, in, w, out);
  const int64_t in_row = p.y[0] * p.y[1] * p.y[3] * p.y[4] * 4, out_row = p.x[0] * p.x[1] * p.x[3] * p.x[4] * 4;
  const int64_t depth_in = p.y[2], budget = SlabBytes();
  const int64_t row_bytes = in_row + stride * out_row;
  const int64_t rows = depth_in * row_bytes > budget ? std::max<int64_t>(1, budget / row_bytes) : depth_in;
  for (int64_t first = 0; first < depth_in; first += rows) {
    const int64_t last = std::min(depth_in, first + rows);
    Problem slab = p;
    slab.y[2] = last - first;
    slab.x[2] = (last - first) * stride;
    if (!Execute(rt, slab, in + first * p.y[3] * p.y[4], w, out + first * stride * p.x[3] * p.x[4])) return false;
  }
  return true;
}

// The entry points differ in which tensors they get: ConvForward (x, w, config) -> y; ConvBackwardData
// (x, w, dy, config) -> dx and ConvBackwardWeights (x, w, dy, config) -> dw, where x and w carry only their
// shapes in the first and their data in the second; ConvTransposeForward (input, w, config) -> out, a
// transposed convolution, i.e. the backward-data pass of the convolution from out's shape to input's.
enum Entry { kConvForward, kConvBackwardData, kConvBackwardWeights, kConvTransposeForward };

int Run(Entry entry, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const bool three_inputs = entry == kConvBackwardData || entry == kConvBackwardWeights;
  if (nparam != (three_inputs ? 5 : 4)) return 1;
  for (int i = 0; i < nparam; ++i) {
    const bool config = i == nparam - 2;
    if (config ? (ndims[i] != 1 || shapes[i][0] != 9 || std::strcmp(dtypes[i], "int64") != 0)
               : (ndims[i] != 5 || std::strcmp(dtypes[i], "float32") != 0)) {
      std::fprintf(stderr, "onednn convolution: unexpected tensor %d\n", i);
      return 2;
    }
  }
  Runtime &rt = GetRuntime();
  if (!rt.ok) return 3;
  // x / y: the convolution's input and output shapes (for a transposed one, its output and input)
  const int x_index = entry == kConvTransposeForward ? 3 : 0;
  const int y_index = entry == kConvForward ? 3 : (entry == kConvTransposeForward ? 0 : 2);
  Problem p;
  std::memset(&p, 0, sizeof(p));  // the cache compares problems bytewise
  p.pass = entry == kConvForward ? kForward : (entry == kConvBackwardWeights ? kBackwardWeights : kBackwardData);
  std::memcpy(p.x, shapes[x_index], sizeof(p.x));
  std::memcpy(p.w, shapes[1], sizeof(p.w));
  std::memcpy(p.y, shapes[y_index], sizeof(p.y));
  std::memcpy(p.x_full, p.x, sizeof(p.x));
  std::memcpy(p.y_full, p.y, sizeof(p.y));
  const int64_t *config = static_cast<const int64_t *>(params[nparam - 2]);
  for (int i = 0; i < 3; ++i) {
    p.strides[i] = config[i];
    p.pad_l[i] = p.pad_r[i] = config[3 + i];
    p.dilates[i] = config[6 + i];
  }
  std::lock_guard<std::mutex> lock(rt.mutex);
  void *out = params[nparam - 1];
  bool ok = false;
  switch (entry) {
    case kConvForward:
      ok = Forward(rt, p, static_cast<float *>(params[0]), static_cast<float *>(params[1]), static_cast<float *>(out));
      break;
    case kConvBackwardData:  // dy, w -> dx
      ok = Execute(rt, p, params[2], params[1], out);
      break;
    case kConvBackwardWeights:  // x, dy -> dw
      ok = Execute(rt, p, params[0], params[2], out);
      break;
    case kConvTransposeForward:  // input (the convolution's dy), w -> out (its dx)
      ok = TransposeForward(rt, p, static_cast<float *>(params[0]), static_cast<float *>(params[1]),
                            static_cast<float *>(out));
      break;
  }
  return ok ? 0 : 5;
}

}  // namespace
}  // namespace kitseg

#define KITSEG_CONV_ENTRY(name)                                                                                \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) { \
    return kitseg::Run(kitseg::k##name, nparam, params, ndims, shapes, dtypes);                                      \
  }
KITSEG_CONV_ENTRY(ConvForward)
KITSEG_CONV_ENTRY(ConvBackwardData)
KITSEG_CONV_ENTRY(ConvBackwardWeights)
KITSEG_CONV_ENTRY(ConvTransposeForward)
