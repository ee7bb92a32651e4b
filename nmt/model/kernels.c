/* The training recurrence's element-wise work on the CPU, one pass per layer and step (nmt/model/kernels.py
   builds this file at first use and says why). Every function runs over the rows of one time step: row b of
   a (B, n) operand starts at base + b * stride. `bf` says the compute dtype: 1 = bfloat16 (stored as its
   upper 16 bits), 0 = float32; states, gates and probabilities are float32 either way. Loops are written so
   that the compiler vectorizes them (no calls, no branches on element values). */
#include <stdint.h>

#define CHUNK 256 /* columns of a stack buffer */

/* Each exported function calls its KERNEL through BOTH, `bf` a constant, so the compiler builds a float32 and
   a bfloat16 version of every loop; `restrict`: no two operands overlap (without it gcc vectorizes none). */
#define KERNEL static inline __attribute__((always_inline)) void
#define BOTH(impl, ...) if (bf) impl(__VA_ARGS__, 1); else impl(__VA_ARGS__, 0)

typedef union { uint32_t u; int32_t i; float f; } bits32; /* a float's bits: a union reads them legally */

static inline float from_bf16(uint16_t v) { return (bits32){.u = (uint32_t)v << 16}.f; }

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does; a NaN stays a NaN */
    uint32_t u = (bits32){.f = f}.u;
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

static inline float load(const void *base, long i, int bf) {
    return bf ? from_bf16(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static inline void store(void *base, long i, float v, int bf) {
    if (bf)
        ((uint16_t *)base)[i] = to_bf16(v);
    else
        ((float *)base)[i] = v;
}

/* e^x to ~2 ulp: 2^n e^r with |r| <= ln2/2 and a degree-6 polynomial (Cephes' expf); 0 below -87.3 (a masked
   score of -inf included), clamped above 88.7 */
static inline float exp_(float x) {
    float y = x < -87.0f ? -87.0f : (x > 88.7f ? 88.7f : x);
    float n = __builtin_rintf(y * 1.44269504088896341f);
    float r = y - n * 0.693359375f + n * 2.12194440e-4f;
    float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
               + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    bits32 scale = {.i = ((int32_t)n + 127) << 23};
    return x < -87.3f ? 0.0f : p * scale.f;
}

static inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }

/* near 0, where 2 / (1 + e^-2x) - 1 would cancel, its Taylor series (to x^7: error < 3e-11 below 0.1) */
static inline float tanh_(float x) {
    float x2 = x * x;
    float series = x * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
    return x2 < 0.01f ? series : 2.0f / (1.0f + exp_(-2.0f * x)) - 1.0f;
}

/* One LSTM layer at one step. pre (B, 4H) in the compute dtype is the gate product, `add` (B, 4H) or one
   row (add_stride 0) float32 what is added to it; gates in the order i, f, g, o. Writes act (B, 4H):
   sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); cell (B, H); tanh_cell (B, H); h (B, H); and, where `above`
   is given, h * mask (or h) into the next layer's input. */
KERNEL cell_forward_impl(int B, int H, const void *restrict pre, long pre_stride, const float *restrict add,
                         long add_stride, const float *restrict cell_prev, long prev_stride,
                         float *restrict act, float *restrict cell, float *restrict tanh_cell,
                         void *restrict h, long h_stride, const float *restrict mask, void *restrict above,
                         long above_stride, const int bf) {
    for (long b = 0; b < B; b++) {
        float *a = act + b * 4 * H;
        const float *ad = add + b * add_stride;
        for (long j = 0; j < 4 * H; j++)
            a[j] = load(pre, b * pre_stride + j, bf) + ad[j];
        const float *cp = cell_prev + b * prev_stride;
        float *c = cell + b * H, *tc = tanh_cell + b * H;
        const float *m = mask ? mask + b * H : 0;
        float *ai = a, *af = a + H, *ag = a + 2 * H, *ao = a + 3 * H;
        for (long j = 0; j < H; j++) {
            float i = sigmoid_(ai[j]), f = sigmoid_(af[j]), g = tanh_(ag[j]), o = sigmoid_(ao[j]);
            ai[j] = i;
            af[j] = f;
            ag[j] = g;
            ao[j] = o;
            float cv = f * cp[j] + i * g;
            c[j] = cv;
            tc[j] = tanh_(cv);
        }
        for (long j = 0; j < H; j++) /* apart: a loop mixing 16- and 32-bit stores is not vectorized */
            store(h, b * h_stride + j, a[3 * H + j] * tc[j], bf);
        if (above && m) /* from h as stored, as the layer above reads it */
            for (long j = 0; j < H; j++)
                store(above, b * above_stride + j, load(h, b * h_stride + j, bf) * m[j], bf);
        else if (above)
            for (long j = 0; j < H; j++)
                store(above, b * above_stride + j, load(h, b * h_stride + j, bf), bf);
    }
}

void cell_forward(int B, int H, int bf, const void *pre, long pre_stride, const float *add, long add_stride,
                  const float *cell_prev, long prev_stride, float *act, float *cell, float *tanh_cell,
                  void *h, long h_stride, const float *mask, void *above, long above_stride) {
    BOTH(cell_forward_impl, B, H, pre, pre_stride, add, add_stride, cell_prev, prev_stride, act, cell,
         tanh_cell, h, h_stride, mask, above, above_stride);
}

/* Its backward. d_h (B, H); d_cell (B, H) holds the gradient from later steps and leaves with the gradient
   w.r.t. the previous cell state; writes d_gates (B, 4H), the gate pre-activations' gradient, in the
   compute dtype. */
KERNEL cell_backward_impl(int B, int H, const float *restrict d_h, float *restrict d_cell,
                          const float *restrict act, const float *restrict tanh_cell,
                          const float *restrict cell_prev, long prev_stride, void *restrict d_gates,
                          const int bf) {
    for (long b = 0; b < B; b++) {
        const float *a = act + b * 4 * H, *dh = d_h + b * H, *tc = tanh_cell + b * H;
        const float *cp = cell_prev + b * prev_stride;
        float *dc = d_cell + b * H;
        long row = b * 4 * H;
        for (long j0 = 0; j0 < H; j0 += CHUNK) { /* a block of columns in float32, then stored */
            long n = H - j0 < CHUNK ? H - j0 : CHUNK;
            float d[4][CHUNK];
            for (long j = 0; j < n; j++) {
                long k = j0 + j;
                float i = a[k], f = a[H + k], g = a[2 * H + k], o = a[3 * H + k], t = tc[k];
                float dcv = dc[k] + dh[k] * o * (1.0f - t * t);
                d[0][j] = dcv * g * i * (1.0f - i);
                d[1][j] = dcv * cp[k] * f * (1.0f - f);
                d[2][j] = dcv * i * (1.0f - g * g);
                d[3][j] = dh[k] * t * o * (1.0f - o);
                dc[k] = dcv * f;
            }
            for (long q = 0; q < 4; q++)
                for (long j = 0; j < n; j++)
                    store(d_gates, row + q * H + j0 + j, d[q][j], bf);
        }
    }
}

void cell_backward(int B, int H, int bf, const float *d_h, float *d_cell, const float *act,
                   const float *tanh_cell, const float *cell_prev, long prev_stride, void *d_gates) {
    BOTH(cell_backward_impl, B, H, d_h, d_cell, act, tanh_cell, cell_prev, prev_stride, d_gates);
}

/* Splits a layer's input gradient d_xh (B, width + H), compute dtype: d_h (B, H) = its h part; its input
   part (B, width), times `mask` if given, goes to `below`: added if `accumulate` (the layer beneath's h),
   else assigned (the input feed). */
KERNEL split_grad_impl(int B, int H, const void *restrict d_xh, long d_stride, int width, float *restrict d_h,
                       float *restrict below, const float *restrict mask, int accumulate, const int bf) {
    for (long b = 0; b < B; b++) {
        long row = b * d_stride;
        float *dh = d_h + b * H;
        for (long j = 0; j < H; j++)
            dh[j] = load(d_xh, row + width + j, bf);
        if (!below)
            continue;
        float *bl = below + b * width;
        const float *m = mask ? mask + b * width : 0;
        for (long j = 0; j < width; j++) {
            float v = m ? load(d_xh, row + j, bf) * m[j] : load(d_xh, row + j, bf);
            bl[j] = accumulate ? bl[j] + v : v;
        }
    }
}

void split_grad(int B, int H, int bf, const void *d_xh, long d_stride, int width, float *d_h, float *below,
                const float *mask, int accumulate) {
    BOTH(split_grad_impl, B, H, d_xh, d_stride, width, d_h, below, mask, accumulate);
}

/* Luong attention at one step, keys already projected: scores = keys q + bias (bias -inf at padding),
   p = softmax(scores) into probs[b, t, :] (probs points at column t, rows probs_stride apart), context =
   p memory; writes combine (B, 2H) = [context; q] in the compute dtype. keys, memory (B, S, H) float32. */
KERNEL attention_forward_impl(int B, int S, int H, const void *restrict query, long query_stride,
                              const float *restrict keys, const float *restrict memory,
                              const float *restrict bias, float *restrict probs, long probs_stride,
                              void *restrict combine, const int bf) {
    for (long b = 0; b < B; b++) {
        const float *k = keys + b * S * H, *mem = memory + b * S * H, *bs = bias + b * S;
        float *p = probs + b * probs_stride;
        long q_row = b * query_stride, c_row = b * 2 * H;
        float top = -__builtin_inff();
        for (long s = 0; s < S; s++) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (long j = 0; j < H; j++)
                dot += load(query, q_row + j, bf) * k[s * H + j];
            p[s] = dot + bs[s];
            top = p[s] > top ? p[s] : top;
        }
        float total = 0.0f;
        for (long s = 0; s < S; s++) {
            p[s] = exp_(p[s] - top);
            total += p[s];
        }
        for (long s = 0; s < S; s++)
            p[s] /= total;
        /* the context a block of columns at a time, memory's rows read in order */
        for (long j0 = 0; j0 < H; j0 += CHUNK) {
            long n = H - j0 < CHUNK ? H - j0 : CHUNK;
            float ctx[CHUNK] = {0.0f};
            for (long s = 0; s < S; s++)
                for (long j = 0; j < n; j++)
                    ctx[j] += p[s] * mem[s * H + j0 + j];
            for (long j = 0; j < n; j++) {
                store(combine, c_row + j0 + j, ctx[j], bf);
                store(combine, c_row + H + j0 + j, load(query, q_row + j0 + j, bf), bf);
            }
        }
    }
}

void attention_forward(int B, int S, int H, int bf, const void *query, long query_stride,
                       const float *keys, const float *memory, const float *bias, float *probs,
                       long probs_stride, void *combine) {
    BOTH(attention_forward_impl, B, S, H, query, query_stride, keys, memory, bias, probs, probs_stride,
         combine);
}

/* Its backward. d_combine (B, 2H), compute dtype: [d context; d q]. Writes d_context[b, t, :] and
   d_scores[b, t, :] (pointers at column t, rows *_stride apart); adds d q to d_query (B, H). */
KERNEL attention_backward_impl(int B, int S, int H, const void *restrict d_combine,
                               const float *restrict probs, long probs_stride, const float *restrict keys,
                               const float *restrict memory, float *restrict d_context, long context_stride,
                               float *restrict d_scores, long scores_stride, float *restrict d_query,
                               const int bf) {
    for (long b = 0; b < B; b++) {
        const float *k = keys + b * S * H, *mem = memory + b * S * H, *p = probs + b * probs_stride;
        float *dctx = d_context + b * context_stride, *ds = d_scores + b * scores_stride;
        float *dq = d_query + b * H;
        long row = b * 2 * H;
        for (long j = 0; j < H; j++)
            dctx[j] = load(d_combine, row + j, bf);
        float weighted = 0.0f;
        for (long s = 0; s < S; s++) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (long j = 0; j < H; j++)
                dot += dctx[j] * mem[s * H + j];
            ds[s] = dot;
            weighted += p[s] * dot;
        }
        for (long s = 0; s < S; s++)
            ds[s] = p[s] * (ds[s] - weighted);
        for (long j = 0; j < H; j++)
            dq[j] += load(d_combine, row + H + j, bf);
        for (long s = 0; s < S; s++)
            for (long j = 0; j < H; j++)
                dq[j] += ds[s] * k[s * H + j];
    }
}

void attention_backward(int B, int S, int H, int bf, const void *d_combine, const float *probs,
                        long probs_stride, const float *keys, const float *memory, float *d_context,
                        long context_stride, float *d_scores, long scores_stride, float *d_query) {
    BOTH(attention_backward_impl, B, S, H, d_combine, probs, probs_stride, keys, memory, d_context,
         context_stride, d_scores, scores_stride, d_query);
}

/* The attentional vector: attentional (B, H) = tanh(pre), pre the combination product (compute dtype,
   contiguous); out = attentional * mask (or a copy) in the compute dtype. */
KERNEL combine_forward_impl(int B, int H, const void *restrict pre, float *restrict attentional,
                            const float *restrict mask, void *restrict out, long out_stride, const int bf) {
    for (long b = 0; b < B; b++) {
        float *att = attentional + b * H;
        const float *m = mask ? mask + b * H : 0;
        for (long j = 0; j < H; j++) {
            float v = tanh_(load(pre, b * H + j, bf));
            att[j] = v;
            store(out, b * out_stride + j, m ? v * m[j] : v, bf);
        }
    }
}

void combine_forward(int B, int H, int bf, const void *pre, float *attentional, const float *mask, void *out,
                     long out_stride) {
    BOTH(combine_forward_impl, B, H, pre, attentional, mask, out, out_stride);
}

/* Its backward: d = (grad + feed) * mask, then d_pre = d * (1 - attentional^2) in the compute dtype
   (contiguous). grad (B, H) is in the compute dtype; feed (B, H) float32 may be absent. */
KERNEL combine_backward_impl(int B, int H, const void *restrict grad, long grad_stride,
                             const float *restrict feed, const float *restrict mask,
                             const float *restrict attentional, void *restrict d_pre, const int bf) {
    for (long b = 0; b < B; b++) {
        const float *att = attentional + b * H, *fd = feed ? feed + b * H : 0, *m = mask ? mask + b * H : 0;
        for (long j = 0; j < H; j++) {
            float d = load(grad, b * grad_stride + j, bf);
            d = fd ? d + fd[j] : d;
            d = m ? d * m[j] : d;
            store(d_pre, b * H + j, d * (1.0f - att[j] * att[j]), bf);
        }
    }
}

void combine_backward(int B, int H, int bf, const void *grad, long grad_stride, const float *feed,
                      const float *mask, const float *attentional, void *d_pre) {
    BOTH(combine_backward_impl, B, H, grad, grad_stride, feed, mask, attentional, d_pre);
}
