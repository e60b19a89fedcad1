// The values gradient of a sparse weight delta: k sampled dot products
//
//   out[e] = sum_t g[t, row(e)] * x[t, col(e)],   row(e) = idx[e] / in_f, col(e) = idx[e] % in_f
//
// for sorted flat indices idx of an out_f x in_f weight, g = dY (T x out_f) and x = X
// (T x in_f) row-major (any row stride, unit column stride). That is (g^T @ x) read at k
// entries, without the out_f x in_f product.
//
// Layout. Both operands are token-major, so one entry's dot product would read two strided
// columns. The tokens are cut into blocks of B; per block the columns of x the mask touches
// are copied once into a column-major buffer (nc x B, sized to stay in L2), and the touched
// rows of g, eight at a time, into a small one (L1) just before those rows' entries, which
// are consecutive since the indices are sorted (CSR order). Every entry is then one contiguous,
// vectorised dot product of length B, and g and x are read from memory once. bf16 / fp16
// inputs are widened to fp32 while packing, so all arithmetic accumulates in fp32 (fp64
// inputs in fp64).
//
// Threads. The token blocks are split into one contiguous chunk per intra-op thread
// (at::parallel_for: torch.set_num_threads applies). Splitting over tokens rather than
// rows packs x once in all instead of once per thread, and balances itself whatever the
// mask's row counts; the price is a partial sum of k numbers per chunk, added in chunk
// order, so the result is deterministic for a given thread count.

#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// The mask as CSR over the rows and columns it touches.
struct Pattern {
  std::vector<int64_t> rows;      // distinct rows, ascending
  std::vector<int64_t> row_ptr;   // entries of rows[i]: [row_ptr[i], row_ptr[i + 1])
  std::vector<int64_t> cols;      // distinct columns, ascending
  std::vector<int64_t> col_slot;  // per entry: its column's position in cols
};

Pattern make_pattern(const int64_t* idx, int64_t k, int64_t out_f, int64_t in_f) {
  Pattern p;
  p.col_slot.resize(k);
  std::vector<int64_t> slot_of(in_f, -1);  // -1: untouched, then each touched column's slot
  for (int64_t e = 0; e < k; ++e) {
    const int64_t i = idx[e];
    TORCH_CHECK(i >= 0 && i < out_f * in_f, "sampled_dots: index ", i, " outside the ", out_f, "x", in_f, " weight");
    TORCH_CHECK(e == 0 || i > idx[e - 1], "sampled_dots: indices must be strictly increasing");
    const int64_t r = i / in_f;
    if (p.rows.empty() || p.rows.back() != r) {
      p.rows.push_back(r);
      p.row_ptr.push_back(e);
    }
    slot_of[i - r * in_f] = k;  // touched; its slot is set below, in column order
  }
  p.row_ptr.push_back(k);
  for (int64_t c = 0; c < in_f; ++c) {
    if (slot_of[c] == k) {
      slot_of[c] = static_cast<int64_t>(p.cols.size());
      p.cols.push_back(c);
    }
  }
  for (int64_t e = 0; e < k; ++e) p.col_slot[e] = slot_of[idx[e] % in_f];
  return p;
}

// Tokens per block. Each entry pays a fixed cost per block (setting up and reducing its
// dot product), so blocks are long: the packed x columns (nc x B) get about half a typical
// L2, but B stays at least 256 even where that spills to L3, which measured faster than
// shorter blocks (384 x 1536 at 5 %: 9.3 ms at B = 512, 11 at 128, 14 at 64). And at most
// an even share of the tokens per thread, so short inputs still use every thread.
int64_t block_tokens(int64_t nc, int64_t elem_size, int64_t T, int64_t threads, int64_t requested) {
  if (requested > 0) return requested;
  constexpr int64_t kBudgetBytes = 512 * 1024;
  const int64_t fit = kBudgetBytes / std::max<int64_t>(1, nc * elem_size);
  const int64_t share = (T + threads - 1) / threads;
  const int64_t b = std::min(std::clamp<int64_t>(fit, 256, 1024), std::max<int64_t>(64, share));
  return (b + 15) / 16 * 16;
}

constexpr int kTile = 8;

// dst[j * ldd + t] = src[t * lds + ids[j]] for j < n, t < tb, widened to acc_t: a gathered
// transpose. Done in kTile x kTile tiles through a local array, which the compiler turns
// into register shuffles: about 3x faster than copying one strided column at a time.
template <typename scalar_t, typename acc_t>
void pack(acc_t* __restrict dst, int64_t ldd, const scalar_t* __restrict src, int64_t lds,
          const int64_t* __restrict ids, int64_t n, int64_t tb) {
  int64_t t0 = 0;
  for (; t0 + kTile <= tb; t0 += kTile) {
    const scalar_t* s = src + t0 * lds;
    int64_t j = 0;
    for (; j + kTile <= n; j += kTile) {
      acc_t tile[kTile][kTile];
      for (int r = 0; r < kTile; ++r)
        for (int c = 0; c < kTile; ++c) tile[c][r] = static_cast<acc_t>(s[r * lds + ids[j + c]]);
      for (int c = 0; c < kTile; ++c)
        for (int r = 0; r < kTile; ++r) dst[(j + c) * ldd + t0 + r] = tile[c][r];
    }
    for (; j < n; ++j)
      for (int r = 0; r < kTile; ++r) dst[j * ldd + t0 + r] = static_cast<acc_t>(s[r * lds + ids[j]]);
  }
  for (; t0 < tb; ++t0)
    for (int64_t j = 0; j < n; ++j) dst[j * ldd + t0] = static_cast<acc_t>(src[t0 * lds + ids[j]]);
}

// acc[e] += <gr, xbuf column of entry e> over tb tokens, for the entries [e0, e1) of one row.
template <typename acc_t>
inline void row_dots(acc_t* __restrict acc, const acc_t* __restrict gr, const acc_t* __restrict xbuf, int64_t ldx,
                     const int64_t* __restrict col_slot, int64_t e0, int64_t e1, int64_t tb) {
  int64_t e = e0;
  // four entries at a time share each load of the g row
  for (; e + 4 <= e1; e += 4) {
    const acc_t* __restrict x0 = xbuf + col_slot[e] * ldx;
    const acc_t* __restrict x1 = xbuf + col_slot[e + 1] * ldx;
    const acc_t* __restrict x2 = xbuf + col_slot[e + 2] * ldx;
    const acc_t* __restrict x3 = xbuf + col_slot[e + 3] * ldx;
    acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t t = 0; t < tb; ++t) {
      const acc_t gv = gr[t];
      s0 += gv * x0[t];
      s1 += gv * x1[t];
      s2 += gv * x2[t];
      s3 += gv * x3[t];
    }
    acc[e] += s0;
    acc[e + 1] += s1;
    acc[e + 2] += s2;
    acc[e + 3] += s3;
  }
  for (; e < e1; ++e) {
    const acc_t* __restrict x0 = xbuf + col_slot[e] * ldx;
    acc_t s0 = 0;
#pragma omp simd reduction(+ : s0)
    for (int64_t t = 0; t < tb; ++t) s0 += gr[t] * x0[t];
    acc[e] += s0;
  }
}

template <typename scalar_t>
void sampled_dots_kernel(const at::Tensor& g, const at::Tensor& x, const Pattern& p, int64_t block,
                         at::Tensor& partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = g.size(0);
  const int64_t ldg = g.stride(0), ldx = x.stride(0);
  const int64_t nr = static_cast<int64_t>(p.rows.size()), nc = static_cast<int64_t>(p.cols.size());
  const int64_t n_blocks = (T + block - 1) / block;
  const int64_t n_chunks = partial.size(0);
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  acc_t* out = partial.mutable_data_ptr<acc_t>();
  const int64_t k = partial.size(1);

  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> xbuf(static_cast<size_t>(nc * block));
    std::vector<acc_t> gbuf(static_cast<size_t>(kTile * block));
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      acc_t* acc = out + chunk * k;
      const int64_t b0 = chunk * n_blocks / n_chunks, b1 = (chunk + 1) * n_blocks / n_chunks;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * block, tb = std::min(block, T - t0);
        pack(xbuf.data(), block, xp + t0 * ldx, ldx, p.cols.data(), nc, tb);
        // the g rows kTile at a time (one tile wide), each used by its row's entries at once
        for (int64_t i0 = 0; i0 < nr; i0 += kTile) {
          const int64_t m = std::min<int64_t>(kTile, nr - i0);
          pack(gbuf.data(), block, gp + t0 * ldg, ldg, p.rows.data() + i0, m, tb);
          for (int64_t i = 0; i < m; ++i)
            row_dots(acc, gbuf.data() + i * block, xbuf.data(), block, p.col_slot.data(), p.row_ptr[i0 + i],
                     p.row_ptr[i0 + i + 1], tb);
        }
      }
    }
  });
}

}  // namespace

// g: (T, out_f), x: (T, in_f), same floating dtype; indices: int64 (k,), strictly
// increasing flat indices into the out_f x in_f weight. Returns (k,) in fp32 (fp64 for fp64
// inputs). block: tokens per block, 0 for the L2-sized default (tests set small ones).
at::Tensor sampled_dots(const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& indices_in, int64_t block) {
  TORCH_CHECK(g_in.dim() == 2 && x_in.dim() == 2 && g_in.size(0) == x_in.size(0),
              "sampled_dots: g (T, out_f) and x (T, in_f) expected, got ", g_in.sizes(), " and ", x_in.sizes());
  TORCH_CHECK(g_in.device().is_cpu() && x_in.device().is_cpu() && indices_in.device().is_cpu(), "sampled_dots: CPU tensors only");
  TORCH_CHECK(g_in.scalar_type() == x_in.scalar_type(), "sampled_dots: g and x must share a dtype");
  TORCH_CHECK(indices_in.dim() == 1, "sampled_dots: indices must be 1-D");
  TORCH_CHECK(block >= 0, "sampled_dots: block must be >= 0");
  // unit column stride is all the packing needs; any row stride (even 0, an expanded grad) is fine
  const at::Tensor g = g_in.stride(1) == 1 ? g_in : g_in.contiguous();
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const at::Tensor indices = indices_in.to(at::kLong).contiguous();
  const int64_t out_f = g.size(1), in_f = x.size(1), T = g.size(0), k = indices.numel();
  const Pattern p = make_pattern(indices.const_data_ptr<int64_t>(), k, out_f, in_f);

  const auto acc_type = at::toOpMathType(g.scalar_type());
  if (k == 0 || T == 0) return at::zeros({k}, g.options().dtype(acc_type));
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t blk = block_tokens(static_cast<int64_t>(p.cols.size()), at::elementSize(acc_type), T, threads, block);
  const int64_t n_blocks = (T + blk - 1) / blk;
  const int64_t n_chunks = std::min(n_blocks, threads);
  at::Tensor partial = at::zeros({n_chunks, k}, g.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "sampled_dots", [&] {
    sampled_dots_kernel<scalar_t>(g, x, p, blk, partial);
  });
  return n_chunks == 1 ? partial[0] : partial.sum(0);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sampled_dots", &sampled_dots, "out[e] = <g[:, idx[e] / in_f], x[:, idx[e] % in_f]> for sorted flat indices",
        py::arg("g"), py::arg("x"), py::arg("indices"), py::arg("block") = 0);
}
