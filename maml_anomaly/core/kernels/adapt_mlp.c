/* The scoring inner loop for one ReLU MLP per task, fused: weights and activations of a task
 * stay in L1/L2 cache for all its steps, instead of streaming B tasks' tensors through memory
 * once per operation (maml_anomaly/fast_adapt.py loads it; the torch path there is the reference).
 *
 * Per task b: copy the meta-init, take `steps` first-order SGD steps on the weighted Huber
 * support loss (gradient 2 clamp(err, +-delta) w / sum w on output 0), then forecast the P
 * prediction inputs with the adapted weights. Also returns the meta-init's support forecasts
 * (the first step's forward), which the divergence guard compares against.
 *
 * Layout: weights are packed per layer as W^T (in, out) row-major then the bias (out); a task
 * also keeps W (out, in), so all three products of a step (forward, backprop, gradient) are
 * row-major small GEMMs done by one register-blocked micro-kernel (GCC vector extensions: AVX2
 * with -march=native). Learned step sizes use the same packing, one set per step (the last set
 * repeats). All float32; one workspace per call.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 ld(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }

/* C[m*ldc] += sum_p A[m*ars + p*acs] * B[p*ldb]: dot products when A's rows are contiguous,
 * else axpy over m when its columns are (the two layouts of a one-output layer). */
static void gemv_acc(int M, int P, const float *A, int ars, int acs, const float *B, int ldb, float *C, int ldc) {
    if (acs == 1) {
        for (int m = 0; m < M; m++) {
            const float *a = A + (size_t)m * ars;
            v8 acc = splat(0.0f);
            int p = 0;
            for (; p + 8 <= P; p += 8) {
                v8 b;
                for (int j = 0; j < 8; j++) b[j] = B[(size_t)(p + j) * ldb];
                acc += ld(a + p) * b;
            }
            float s = 0.0f;
            for (; p < P; p++) s += a[p] * B[(size_t)p * ldb];
            for (int j = 0; j < 8; j++) s += acc[j];
            C[(size_t)m * ldc] += s;
        }
        return;
    }
    if (ars == 1 && ldc == 1) {
        for (int p = 0; p < P; p++) {
            const float *a = A + (size_t)p * acs;
            float bv = B[(size_t)p * ldb];
            int m = 0;
            for (; m + 8 <= M; m += 8) st(C + m, ld(C + m) + splat(bv) * ld(a + m));
            for (; m < M; m++) C[m] += bv * a[m];
        }
        return;
    }
    for (int m = 0; m < M; m++) {
        float acc = C[(size_t)m * ldc];
        for (int p = 0; p < P; p++) acc += A[(size_t)m * ars + (size_t)p * acs] * B[(size_t)p * ldb];
        C[(size_t)m * ldc] = acc;
    }
}

/* Rows m..m+R of C, columns n..n+8*V: R*V accumulators held in registers over the whole p loop
 * (R = 5, V = 2 gives 10 independent FMA chains, enough to hide the FMA latency). */
static inline __attribute__((always_inline)) void block(int R, int V, int P, const float *A, int ars, int acs,
                                                        const float *B, int ldb, float *C, int ldc) {
    v8 c[5][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) c[r][v] = ld(C + (size_t)r * ldc + 8 * v);
    for (int p = 0; p < P; p++) {
        v8 b[2];
        for (int v = 0; v < V; v++) b[v] = ld(B + (size_t)p * ldb + 8 * v);
        const float *ap = A + (size_t)p * acs;
        for (int r = 0; r < R; r++) {
            v8 a = splat(ap[(size_t)r * ars]);
            for (int v = 0; v < V; v++) c[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) st(C + (size_t)r * ldc + 8 * v, c[r][v]);
}

#define BLOCK_CASES(V)                                                                         \
    switch (R) {                                                                               \
    case 5: block(5, V, P, a, ars, acs, B + n, ldb, c, ldc); break;                            \
    case 4: block(4, V, P, a, ars, acs, B + n, ldb, c, ldc); break;                            \
    case 3: block(3, V, P, a, ars, acs, B + n, ldb, c, ldc); break;                            \
    case 2: block(2, V, P, a, ars, acs, B + n, ldb, c, ldc); break;                            \
    default: block(1, V, P, a, ars, acs, B + n, ldb, c, ldc); break;                           \
    }

/* C[m][n] += sum_p A[m*ars + p*acs] * B[p*ldb + n], m < M, n < N (C row-major, ldc). */
static void gemm_acc(int M, int N, int P, const float *A, int ars, int acs, const float *B, int ldb, float *C, int ldc) {
    if (N == 1) {  /* a single output (the forecast): vectorise over whichever side is contiguous */
        gemv_acc(M, P, A, ars, acs, B, ldb, C, ldc);
        return;
    }
    int n = 0;
    for (; n + 8 <= N; ) {
        int two = n + 16 <= N;
        for (int m = 0; m < M; m += 5) {
            int R = M - m < 5 ? M - m : 5;
            const float *a = A + (size_t)m * ars;
            float *c = C + (size_t)m * ldc + n;
            if (two) { BLOCK_CASES(2) } else { BLOCK_CASES(1) }
        }
        n += two ? 16 : 8;
    }
    for (; n < N; n++) {
        for (int m = 0; m < M; m++) {
            float acc = C[(size_t)m * ldc + n];
            for (int p = 0; p < P; p++) acc += A[(size_t)m * ars + (size_t)p * acs] * B[(size_t)p * ldb + n];
            C[(size_t)m * ldc + n] = acc;
        }
    }
}

/* acts[0] = x (rows, sizes[0]); acts[l+1] = layer l's output (ReLU except the last). wt: W^T per layer. */
static void forward(int L, const int *sizes, float *const *wt, float *const *bias, const float *x, int rows, float **acts, float *out0) {
    const float *a = x;
    for (int l = 0; l < L; l++) {
        int in = sizes[l], out = sizes[l + 1];
        float *h = acts[l + 1];
        for (int k = 0; k < rows; k++) memcpy(h + (size_t)k * out, bias[l], sizeof(float) * out);
        gemm_acc(rows, out, in, a, in, 1, wt[l], out, h, out);
        if (l < L - 1)
            for (size_t j = 0; j < (size_t)rows * out; j++) h[j] = h[j] > 0.0f ? h[j] : 0.0f;
        a = h;
    }
    if (out0)
        for (int k = 0; k < rows; k++) out0[k] = a[(size_t)k * sizes[L]];
}

static void transpose(int r, int c, const float *src, float *dst) {  /* src (r, c) -> dst (c, r) */
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) dst[(size_t)j * r + i] = src[(size_t)i * c + j];
}

int adapt_mlp_huber(
    int64_t n_tasks, int k_rows, int p_rows, int L, const int *sizes,
    const float *x_s, const float *y_s, const float *w_s, const float *x_p,
    const float *init, int64_t n_params, const float *lrs, int n_lr_sets, float lr,
    int steps, float delta, float *pred_p, float *pred_s0)
{
    if (L < 1 || L > 64) return 2;
    int max_w = 0;
    size_t wfloats = 0;
    for (int l = 0; l <= L; l++) max_w = sizes[l] > max_w ? sizes[l] : max_w;
    for (int l = 0; l < L; l++) wfloats += (size_t)sizes[l] * sizes[l + 1];
    int rows = k_rows > p_rows ? k_rows : p_rows;
    size_t act_floats = 0;
    for (int l = 1; l <= L; l++) act_floats += (size_t)rows * sizes[l];
    size_t total = (size_t)n_params + wfloats + act_floats + 2 * (size_t)k_rows * max_w + (size_t)max_w * max_w;
    float *work = (float *)malloc(sizeof(float) * total);
    if (!work) return 1;
    float *acts[65], *wt[64], *bias[64], *wn[64];
    float *w = work, *q = work + n_params;
    size_t off = 0;
    for (int l = 0; l < L; l++) {
        wt[l] = w + off; bias[l] = wt[l] + (size_t)sizes[l] * sizes[l + 1];
        off += (size_t)sizes[l] * sizes[l + 1] + sizes[l + 1];
        wn[l] = q; q += (size_t)sizes[l] * sizes[l + 1];  /* W (out, in) for backprop */
    }
    for (int l = 1; l <= L; l++) { acts[l] = q; q += (size_t)rows * sizes[l]; }
    float *d = q, *d_in = q + (size_t)k_rows * max_w, *g = d_in + (size_t)k_rows * max_w;
    int d0 = sizes[0], n_out = sizes[L];

    for (int64_t b = 0; b < n_tasks; b++) {
        const float *xs = x_s + (size_t)b * k_rows * d0, *ys = y_s + (size_t)b * k_rows, *ws = w_s + (size_t)b * k_rows;
        memcpy(w, init, sizeof(float) * n_params);
        for (int l = 1; l < L; l++) transpose(sizes[l], sizes[l + 1], wt[l], wn[l]);
        float wsum = 0.0f;
        for (int k = 0; k < k_rows; k++) wsum += ws[k];
        float two_over = 2.0f / (wsum > 1e-12f ? wsum : 1e-12f);
        if (steps == 0) forward(L, sizes, wt, bias, xs, k_rows, acts, pred_s0 + (size_t)b * k_rows);
        for (int s = 0; s < steps; s++) {
            forward(L, sizes, wt, bias, xs, k_rows, acts, s == 0 ? pred_s0 + (size_t)b * k_rows : NULL);
            acts[0] = (float *)xs;
            const float *step_lr = lrs ? lrs + (size_t)(s < n_lr_sets ? s : n_lr_sets - 1) * n_params : NULL;
            float *out = acts[L];
            for (int k = 0; k < k_rows; k++) {  /* dLoss/dOutput, output 0 only */
                float e = out[(size_t)k * n_out] - ys[k];
                e = e < -delta ? -delta : (e > delta ? delta : e);
                memset(d + (size_t)k * n_out, 0, sizeof(float) * n_out);
                d[(size_t)k * n_out] = e * (ws[k] * two_over);
            }
            /* layers from the last: backprop through the pre-update weights, then update them */
            for (int l = L - 1; l >= 0; l--) {
                int in = sizes[l], outn = sizes[l + 1];
                const float *a = acts[l];
                if (l > 0) {  /* d_in = (d W) masked by ReLU */
                    memset(d_in, 0, sizeof(float) * (size_t)k_rows * in);
                    gemm_acc(k_rows, in, outn, d, outn, 1, wn[l], in, d_in, in);
                    for (size_t j = 0; j < (size_t)k_rows * in; j++) d_in[j] = a[j] > 0.0f ? d_in[j] : 0.0f;
                }
                /* g = a^T d (in, out), then W^T -= lr * g */
                memset(g, 0, sizeof(float) * (size_t)in * outn);
                gemm_acc(in, outn, k_rows, a, 1, in, d, outn, g, outn);
                size_t o_w = (size_t)(wt[l] - w), o_b = (size_t)(bias[l] - w), nw = (size_t)in * outn;
                if (step_lr) for (size_t j = 0; j < nw; j++) wt[l][j] -= step_lr[o_w + j] * g[j];
                else for (size_t j = 0; j < nw; j++) wt[l][j] -= lr * g[j];
                for (int o = 0; o < outn; o++) {
                    float gb = 0.0f;
                    for (int k = 0; k < k_rows; k++) gb += d[(size_t)k * outn + o];
                    bias[l][o] -= (step_lr ? step_lr[o_b + o] : lr) * gb;
                }
                if (l > 0) {
                    transpose(in, outn, wt[l], wn[l]);
                    float *t = d; d = d_in; d_in = t;
                }
            }
        }
        forward(L, sizes, wt, bias, x_p + (size_t)b * p_rows * d0, p_rows, acts, pred_p + (size_t)b * p_rows);
    }
    free(work);
    return 0;
}
