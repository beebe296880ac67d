// The selective scan as one fused CPU loop (optional fast path of seqrec.models.ssm.selective_scan).
//
// Batch-first layout, as the Mamba block holds its tensors (no transposes):
//   u, delta: [B, L, D]   A: [D, N]   Bm, Cm: [B, L, N]   ->   y: [B, L, D]
//   h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t     (h_{-1} = 0, h_t in R^N per (b, d))
//   y_t = sum_n h_t[n] C_t[n]
// Each (b, d) runs its recurrence over L with the N-vector state in registers; the batch is split
// across torch's intra-op threads. Backward recomputes one (b, d) row's states and exp(delta A) into
// two [L, N] buffers that stay in cache, then runs the reverse recurrence
//   G_t = gy_t C_t + exp(delta_{t+1} A) G_{t+1}
// and the gradients of u, delta, A, B and C in the same pass. Nothing of size [B, L, D, N] exists.
// The pure-PyTorch path (_ChunkedSelectiveScan) is the reference the tests hold this to.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <mutex>
#include <vector>

namespace {

void check_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                  const torch::Tensor& Bm, const torch::Tensor& Cm) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u and delta must be [B, L, D] of one shape");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(2), "A must be [D, N]");
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == u.size(0) && Bm.size(1) == u.size(1) && Bm.size(2) == A.size(1),
              "B must be [B, L, N]");
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "C must be [B, L, N]");
  for (const auto* t : {&u, &delta, &A, &Bm, &Cm}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                "selective scan kernel: CPU, contiguous, one floating dtype");
  }
}

template <typename T>
void scan_forward(const T* u, const T* delta, const T* A, const T* Bm, const T* Cm, T* y,
                  int64_t nb, int64_t L, int64_t D, int64_t N) {
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> h(N);
    for (int64_t b = b0; b < b1; ++b) {
      const T* Bb = Bm + b * L * N;
      const T* Cb = Cm + b * L * N;
      for (int64_t d = 0; d < D; ++d) {
        const T* Ad = A + d * N;
        T* hp = h.data();
        for (int64_t n = 0; n < N; ++n) hp[n] = T(0);
        for (int64_t t = 0; t < L; ++t) {
          const int64_t i = (b * L + t) * D + d;
          const T dt = delta[i], du = dt * u[i];
          const T* Bt = Bb + t * N;
          const T* Ct = Cb + t * N;
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const T hn = std::exp(dt * Ad[n]) * hp[n] + du * Bt[n];
            hp[n] = hn;
            acc += hn * Ct[n];
          }
          y[i] = acc;
        }
      }
    }
  });
}

template <typename T>
void scan_backward(const T* u, const T* delta, const T* A, const T* Bm, const T* Cm, const T* gy,
                   T* gu, T* gdelta, T* gA, T* gB, T* gC, int64_t nb, int64_t L, int64_t D, int64_t N) {
  std::mutex gA_lock;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> hs(L * N), dAs(L * N), carry(N), gA_local(D * N, T(0));
    for (int64_t b = b0; b < b1; ++b) {
      const T* Bb = Bm + b * L * N;
      const T* Cb = Cm + b * L * N;
      T* gBb = gB + b * L * N;
      T* gCb = gC + b * L * N;
      for (int64_t d = 0; d < D; ++d) {
        const T* Ad = A + d * N;
        T* gAd = gA_local.data() + d * N;
        // recompute this row's states h_t and coefficients exp(delta_t A)
        for (int64_t t = 0; t < L; ++t) {
          const int64_t i = (b * L + t) * D + d;
          const T dt = delta[i], du = dt * u[i];
          const T* Bt = Bb + t * N;
          const T* hprev = t > 0 ? hs.data() + (t - 1) * N : nullptr;
          T* ht = hs.data() + t * N;
          T* dAt = dAs.data() + t * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            const T a = std::exp(dt * Ad[n]);
            dAt[n] = a;
            ht[n] = (hprev ? a * hprev[n] : T(0)) + du * Bt[n];
          }
        }
        // reverse recurrence: carry = exp(delta_{t+1} A) G_{t+1}
        for (int64_t n = 0; n < N; ++n) carry[n] = T(0);
        T* cp = carry.data();
        for (int64_t t = L - 1; t >= 0; --t) {
          const int64_t i = (b * L + t) * D + d;
          const T g = gy[i], dt = delta[i], ut = u[i], du = dt * ut;
          const T* Bt = Bb + t * N;
          const T* Ct = Cb + t * N;
          const T* ht = hs.data() + t * N;
          const T* dAt = dAs.data() + t * N;
          T* gBt = gBb + t * N;
          T* gCt = gCb + t * N;
          T gdu = T(0), gz = T(0);
          if (t > 0) {
            const T* hprev = hs.data() + (t - 1) * N;
#pragma omp simd reduction(+ : gdu, gz)
            for (int64_t n = 0; n < N; ++n) {
              const T G = g * Ct[n] + cp[n];  // gradient of h_t
              gCt[n] += g * ht[n];
              gBt[n] += G * du;
              gdu += G * Bt[n];
              const T q = G * hprev[n] * dAt[n];  // gradient of delta_t A[n] (through exp)
              gz += q * Ad[n];
              gAd[n] += q * dt;
              cp[n] = dAt[n] * G;
            }
          } else {  // h_{-1} = 0: no gradient reaches delta A at the first step
#pragma omp simd reduction(+ : gdu)
            for (int64_t n = 0; n < N; ++n) {
              const T G = g * Ct[n] + cp[n];
              gCt[n] += g * ht[n];
              gBt[n] += G * du;
              gdu += G * Bt[n];
            }
          }
          gu[i] = gdu * dt;
          gdelta[i] = gz + gdu * ut;
        }
      }
    }
    std::lock_guard<std::mutex> guard(gA_lock);
    for (int64_t k = 0; k < D * N; ++k) gA[k] += gA_local[k];
  });
}

}  // namespace

torch::Tensor forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bm, torch::Tensor Cm) {
  check_inputs(u, delta, A, Bm, Cm);
  auto y = torch::empty_like(u);
  const int64_t nb = u.size(0), L = u.size(1), D = u.size(2), N = A.size(1);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_forward", [&] {
    scan_forward<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                           Bm.data_ptr<scalar_t>(), Cm.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), nb, L, D, N);
  });
  return y;
}

std::vector<torch::Tensor> backward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor gy) {
  check_inputs(u, delta, A, Bm, Cm);
  TORCH_CHECK(gy.sizes() == u.sizes() && gy.is_contiguous() && gy.scalar_type() == u.scalar_type(),
              "gy must be a contiguous [B, L, D] of u's dtype");
  auto gu = torch::empty_like(u), gdelta = torch::empty_like(delta);
  auto gA = torch::zeros_like(A), gB = torch::zeros_like(Bm), gC = torch::zeros_like(Cm);
  const int64_t nb = u.size(0), L = u.size(1), D = u.size(2), N = A.size(1);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward", [&] {
    scan_backward<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                            Bm.data_ptr<scalar_t>(), Cm.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                            gu.data_ptr<scalar_t>(), gdelta.data_ptr<scalar_t>(), gA.data_ptr<scalar_t>(),
                            gB.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(), nb, L, D, N);
  });
  return {gu, gdelta, gA, gB, gC};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "selective scan forward, [B, L, D] layout");
  m.def("backward", &backward, "selective scan backward: (gu, gdelta, gA, gB, gC)");
}
