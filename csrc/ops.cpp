// torch.library declarations of every lowprec op, and the device dispatch of each.
// The module itself is a bare CPython extension (no pybind11: <torch/extension.h> alone
// costs about half a minute of compile time); the ops live in torch.library.
#include <Python.h>
#include <torch/library.h>

namespace lowprec {
at::Tensor random_bytes_cpu(int64_t seed, int64_t offset, int64_t numel);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_panels_cpu(
    const at::Tensor& x, const at::Tensor& scale_table, c10::IntArrayRef iparams, c10::ArrayRef<double> fparams,
    c10::IntArrayRef geometry, const c10::optional<at::Tensor>& amax, int64_t rounding, int64_t seed,
    int64_t offset, bool pack);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fake_quantize_panels_cpu(
    const at::Tensor& x, const at::Tensor& scale_table, c10::IntArrayRef iparams, c10::ArrayRef<double> fparams,
    c10::IntArrayRef geometry, const c10::optional<at::Tensor>& amax, int64_t rounding, int64_t seed,
    int64_t offset, bool with_scales);
at::Tensor dequantize_panels_cpu(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& scale_table,
                                 const at::Tensor& elem_table, const c10::optional<at::Tensor>& tensor_scale,
                                 c10::IntArrayRef geometry, bool packed);
at::Tensor hadamard_panels_cpu(const at::Tensor& x, int64_t n, const c10::optional<at::Tensor>& signs, bool inverse,
                               int64_t mode);
at::Tensor nm_mask_cpu(const at::Tensor& scores, int64_t n, int64_t m);
std::tuple<at::Tensor, at::Tensor> compress_24_cpu(const at::Tensor& w, const at::Tensor& mask);
void galore_update_cpu(at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double coef, double c_wd);
at::Tensor galore_adam_fp32_cpu(const at::Tensor& r, at::Tensor& m, at::Tensor& v, c10::ArrayRef<double> scalars);
std::vector<at::Tensor> galore_adam_lowbit_cpu(const at::Tensor& r, const at::Tensor& m_codes,
                                               const at::Tensor& m_scales, const at::Tensor& s_codes,
                                               const at::Tensor& s_scales, const at::Tensor& elem_table,
                                               const at::Tensor& scale_table, c10::IntArrayRef iparams,
                                               c10::ArrayRef<double> fparams, c10::ArrayRef<double> scalars,
                                               int64_t block, int64_t pass, double m_tensor_scale,
                                               double s_tensor_scale, double m_s_enc, double s_s_enc, int64_t seed,
                                               int64_t m_offset, int64_t s_offset);
void masked_adam_step_cpu(at::Tensor& w, const at::Tensor& g, at::Tensor& m, at::Tensor& v,
                          const c10::optional<at::Tensor>& mask, int64_t mode, c10::ArrayRef<double> scalars);
#ifdef LOWPREC_WITH_CUDA
at::Tensor random_bytes_cuda(int64_t seed, int64_t offset, int64_t numel, c10::Device device);
#endif

// No tensor argument to dispatch on: the device argument picks the kernel.
at::Tensor random_bytes(int64_t seed, int64_t offset, int64_t numel, c10::Device device) {
  if (device.is_cpu()) return random_bytes_cpu(seed, offset, numel);
#ifdef LOWPREC_WITH_CUDA
  if (device.is_cuda()) return random_bytes_cuda(seed, offset, numel, device);
#endif
  TORCH_CHECK(false, "lowprec::random_bytes: this build of lowprec._C has no kernel for ", device,
              " (CUDA kernels are built with LOWPREC_BUILD_CUDA=1 and a CUDA torch)");
}
}  // namespace lowprec

TORCH_LIBRARY(lowprec, m) {
  m.def("random_bytes(int seed, int offset, int numel, Device device) -> Tensor");
  // [n_blocks, block] kernels: CUDA only (the CPU backend uses the *_panels kernels below)
  m.def("quantize_blocks(Tensor xb, Tensor? rand, Tensor scale_table, int[] iparams, float[] fparams, "
        "float s_enc, int rounding, int seed, int offset, bool inline_rng) -> (Tensor, Tensor, Tensor)");
  m.def("fake_quantize_blocks(Tensor xb, Tensor? rand, Tensor scale_table, int[] iparams, float[] fparams, "
        "float s_enc, int rounding, int seed, int offset, bool inline_rng) -> (Tensor, Tensor, Tensor)");
  m.def("dequantize_blocks(Tensor codes, Tensor s_eff, Tensor elem_table) -> Tensor");
  m.def("quantize_panels(Tensor x, Tensor scale_table, int[] iparams, float[] fparams, int[] geometry, "
        "Tensor? amax, int rounding, int seed, int offset, bool pack) -> (Tensor, Tensor, Tensor)");
  m.def("fake_quantize_panels(Tensor x, Tensor scale_table, int[] iparams, float[] fparams, int[] geometry, "
        "Tensor? amax, int rounding, int seed, int offset, bool with_scales) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("dequantize_panels(Tensor codes, Tensor scales, Tensor scale_table, Tensor elem_table, "
        "Tensor? tensor_scale, int[] geometry, bool packed) -> Tensor");
  m.def("hadamard_panels(Tensor x, int n, Tensor? signs, bool inverse, int mode) -> Tensor");
  m.def("nm_mask(Tensor scores, int n, int m) -> Tensor");
  m.def("compress_24(Tensor w, Tensor mask) -> (Tensor, Tensor)");
  m.def("galore_update_(Tensor(a!) w, Tensor a, Tensor b, float coef, float c_wd) -> ()");
  m.def("masked_adam_step_(Tensor(a!) w, Tensor g, Tensor(b!) m, Tensor(c!) v, Tensor? mask, int mode, "
        "float[] scalars) -> ()");
  m.def("galore_adam_fp32_(Tensor r, Tensor(a!) m, Tensor(b!) v, float[] scalars) -> Tensor");
  m.def("galore_adam_lowbit(Tensor r, Tensor m_codes, Tensor m_scales, Tensor s_codes, Tensor s_scales, "
        "Tensor elem_table, Tensor scale_table, int[] iparams, float[] fparams, float[] scalars, int block, "
        "int pass_, float m_tensor_scale, float s_tensor_scale, float m_s_enc, float s_s_enc, int seed, "
        "int m_offset, int s_offset) -> Tensor[]");
}

// No tensor argument to dispatch on: one kernel for every backend, which reads the device.
TORCH_LIBRARY_IMPL(lowprec, CompositeExplicitAutograd, m) {
  m.impl("random_bytes", &lowprec::random_bytes);
}

TORCH_LIBRARY_IMPL(lowprec, CPU, m) {
  m.impl("quantize_panels", &lowprec::quantize_panels_cpu);
  m.impl("fake_quantize_panels", &lowprec::fake_quantize_panels_cpu);
  m.impl("dequantize_panels", &lowprec::dequantize_panels_cpu);
  m.impl("hadamard_panels", &lowprec::hadamard_panels_cpu);
  m.impl("nm_mask", &lowprec::nm_mask_cpu);
  m.impl("compress_24", &lowprec::compress_24_cpu);
  m.impl("masked_adam_step_", &lowprec::masked_adam_step_cpu);
  m.impl("galore_update_", &lowprec::galore_update_cpu);
  m.impl("galore_adam_fp32_", &lowprec::galore_adam_fp32_cpu);
  m.impl("galore_adam_lowbit", &lowprec::galore_adam_lowbit_cpu);
}

// import lowprec._C loads the library, which runs the registrations above.
static PyModuleDef lowprec_module = {PyModuleDef_HEAD_INIT, "_C", "lowprec kernels (registered as torch.ops.lowprec)",
                                     -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&lowprec_module);
  if (module == nullptr) return nullptr;
#ifdef LOWPREC_WITH_CUDA
  PyObject* has_cuda = Py_True;
#else
  PyObject* has_cuda = Py_False;
#endif
  Py_INCREF(has_cuda);
  if (PyModule_AddObject(module, "has_cuda", has_cuda) < 0) {
    Py_DECREF(has_cuda);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
