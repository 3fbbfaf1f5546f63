//! Direct kernels for stride-1 convolutions with one group and output rows of at least eight
//! pixels (the 3x3 convolutions of ResNet, VGG and GoogLeNet): an implicit gemm that reads the
//! input planes where they lie instead of unfolding them.
//!
//! Why: the gemm path writes each image's `[cin·kh·kw × oh·ow]` unfolding, gemm copies it again
//! into its packed panels, and the input gradient folds a buffer of the same size back (in a
//! ResNet20 float step, measured 2026-12-05: packing 15%, unfolding and folding 14%, the zero
//! fills and copies around them another 11%). At stride 1 every kernel tap of a zero-padded
//! plane is the plane shifted by a constant offset, so a tile of output pixels (eight per
//! vector) is `Σ_ci Σ_tap w · (padded plane at offset + tap)`: the input is copied once per
//! image into its padded planes (the fixed-point quantizer applied to that copy), and the
//! weights are broadcast from a copy packed once per call. The input gradient is the same kernel
//! on the zero-padded output gradient with the kernel flipped and its channels swapped; the
//! weight gradient is a tile of (output channel, input channel) dot products per tap.
//!
//! The vector code is written once over [`Simd`]: AVX2 with FMA where the CPU has both
//! (checked at run time), else portable eight-float arrays the compiler vectorizes as it can.
//! Summation orders are fixed by the loops, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::par_buffer::par_written;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::{Geometry, IMAGES_PER_CHUNK, sum_in_order, with_scratch};
use crate::shift::cpu_quant::{FixedPoint, fixed_point_in_place};

/// Floats per vector.
const LANES: usize = 8;
/// Output channels per tile. With [`VEC_TILE`] vectors of pixels that is 12 accumulators, plus
/// two input vectors and one broadcast weight: 15 of AVX2's 16 registers, gemm's own 16x6
/// microkernel shape. (4 x 3 tiles fill all 16, and the compiler spilled an accumulator to the
/// stack: measured slower than the unfolding path.)
const CO_TILE: usize = 6;
/// Vectors of output pixels per forward tile.
const VEC_TILE: usize = 2;
/// Input channels per weight-gradient tile (times [`CO_TILE`]: 12 accumulators again).
const CI_TILE: usize = 2;

/// True when the direct kernels take this convolution: one group, stride 1, a real kernel
/// (1x1 unpadded ones are plain gemms already), padding below the kernel size (the input
/// gradient's padding `k - 1 - p` must not be negative) and rows of at least one vector.
/// `DSNN_HPO_CPU_CONV=gemm` turns them off, to compare with the unfolding path.
pub(super) fn applies(geo: &Geometry) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DSNN_HPO_CPU_CONV").as_deref() != Ok("gemm"))
        && shape_fits(geo)
}

/// The input gradient of a stride-2 convolution (a transposed convolution) is not one
/// convolution of stride 1 or 2: those take the unfolding path.
pub(super) fn applies_to_input_gradient(geo: &Geometry) -> bool {
    applies(geo) && geo.stride == [1, 1]
}

fn shape_fits(geo: &Geometry) -> bool {
    geo.groups == 1
        && (geo.stride == [1, 1] || geo.stride == [2, 2])
        && !geo.pointwise()
        && geo.ow >= LANES
        && geo.pad[0] < geo.kh
        && geo.pad[1] < geo.kw
}

/// Which vector code runs: chosen once per call from the CPU's features; tests pick both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
        Isa::Portable
    }
}

/// Eight output pixels of one row: `input` is where tap (0, 0) of the first one lies in a padded
/// plane, `output` its index in an output plane; `lanes < 8` only at the end of a row.
#[derive(Debug, Clone, Copy)]
struct Vector {
    input: usize,
    output: usize,
    lanes: usize,
}

/// One stride-1 convolution of one image's planes, as the kernels see it.
#[derive(Debug)]
struct Plan {
    cin: usize,
    cout: usize,
    /// The unpadded input plane.
    h: usize,
    w: usize,
    pad: [usize; 2],
    /// Columns of the padded input plane.
    cols: usize,
    /// 1, or 2: then each padded plane is stored as its four phases (even/odd rows by
    /// even/odd columns, each `phase_rows x phase_cols`), so that every tap of eight adjacent
    /// output pixels still reads eight adjacent floats.
    stride: usize,
    phase_rows: usize,
    phase_cols: usize,
    oh: usize,
    ow: usize,
    /// Offset of each kernel tap (i, j) in a padded plane: `i * cols + j` (at stride 2, in
    /// the phase of `(i % 2, j % 2)`: `i / 2 * phase_cols + j / 2` past the phase's start).
    taps: Vec<usize>,
    /// The output pixels, row by row, in vectors.
    vectors: Vec<Vector>,
}

impl Plan {
    fn new(
        cin: usize,
        [h, w]: [usize; 2],
        cout: usize,
        [kh, kw]: [usize; 2],
        pad: [usize; 2],
        stride: usize,
    ) -> Self {
        assert!(stride == 1 || stride == 2, "direct conv: stride {stride}");
        let (rows, cols) = (h + 2 * pad[0], w + 2 * pad[1]);
        let (oh, ow) = ((rows - kh) / stride + 1, (cols - kw) / stride + 1);
        let (phase_rows, phase_cols) = (rows.div_ceil(stride), cols.div_ceil(stride));
        let phase = phase_rows * phase_cols;
        let taps = (0..kh)
            .flat_map(|i| {
                (0..kw).map(move |j| {
                    ((i % stride) * stride + j % stride) * phase
                        + i / stride * phase_cols
                        + j / stride
                })
            })
            .collect();
        let vectors = (0..oh)
            .flat_map(|oy| {
                (0..ow).step_by(LANES).map(move |ox| Vector {
                    input: oy * phase_cols + ox,
                    output: oy * ow + ox,
                    lanes: LANES.min(ow - ox),
                })
            })
            .collect();
        Self {
            cin,
            cout,
            h,
            w,
            pad,
            cols,
            stride,
            phase_rows,
            phase_cols,
            oh,
            ow,
            taps,
            vectors,
        }
    }

    fn plane(&self) -> usize {
        self.stride * self.stride * self.phase_rows * self.phase_cols
    }

    /// The padded planes plus one vector of slack: a row's last vector may read past the end of
    /// the last row (those lanes are discarded, or multiplied by zeros in the weight gradient).
    fn padded_len(&self) -> usize {
        self.cin * self.plane() + LANES
    }

    /// Copies one image's `cin` planes of `h x w` into `dst` with zero borders, quantized to
    /// `grid` when given (zero stays zero on every grid, so the borders may be quantized too).
    fn pad_image(&self, img: &[f32], grid: Option<FixedPoint>, dst: &mut [f32]) {
        if self.stride == 1 {
            self.pad_planes(img, dst);
        } else {
            self.pad_phases(img, dst);
        }
        dst[self.cin * self.plane()..].fill(0.0);
        if let Some(grid) = grid {
            fixed_point_in_place(&mut dst[..self.cin * self.plane()], grid);
        }
    }

    /// Stride 2: each padded plane as its four phases, one after another.
    fn pad_phases(&self, img: &[f32], dst: &mut [f32]) {
        let (hw, plane, s) = (self.h * self.w, self.plane(), self.stride);
        let ([ph, pw], (pr, pc)) = (self.pad, (self.phase_rows, self.phase_cols));
        for c in 0..self.cin {
            let src = &img[c * hw..][..hw];
            let out = &mut dst[c * plane..][..plane];
            for (p, phase) in out.chunks_exact_mut(pr * pc).enumerate() {
                let (a, b) = (p / s, p % s);
                for (r, line) in phase.chunks_exact_mut(pc).enumerate() {
                    // Padded row `s * r + a`, column `s * q + b` holds pixel (row - ph, col - pw).
                    match (s * r + a).checked_sub(ph).filter(|&y| y < self.h) {
                        None => line.fill(0.0),
                        Some(y) => {
                            let row = &src[y * self.w..][..self.w];
                            for (q, v) in line.iter_mut().enumerate() {
                                *v = (s * q + b)
                                    .checked_sub(pw)
                                    .and_then(|x| row.get(x))
                                    .copied()
                                    .unwrap_or(0.0);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stride 1: each padded plane as it is.
    fn pad_planes(&self, img: &[f32], dst: &mut [f32]) {
        let (hw, plane) = (self.h * self.w, self.plane());
        let ([ph, pw], cols, w) = (self.pad, self.cols, self.w);
        // Rows are short (8 to 64 floats) and their margins shorter: a memset or memcpy call
        // for each cost more than the copy (5% of a ResNet20 step). So rows are copied in
        // fixed-size pieces, and the gap between two rows (the right margin of one and the left
        // margin of the next) is cleared with one store of a full vector, which the next row's
        // copy partly overwrites; `cols >= ow >= 8` leaves room for it.
        let short_gaps = 2 * pw <= LANES && cols >= LANES;
        for c in 0..self.cin {
            let src = &img[c * hw..][..hw];
            let out = &mut dst[c * plane..][..plane];
            if self.h == 0 || w == 0 {
                out.fill(0.0);
                continue;
            }
            // Only the border is zeroed: up to the first pixel, between rows, and from the
            // last pixel on.
            out[..ph * cols + pw].fill(0.0);
            for (y, row) in src.chunks_exact(w).enumerate() {
                let at = (y + ph) * cols + pw;
                copy_row(&mut out[at..at + w], row);
                if y + 1 < self.h {
                    if let (true, Some(gap)) =
                        (short_gaps, out[at + w..].first_chunk_mut::<LANES>())
                    {
                        *gap = [0.0; LANES];
                    } else {
                        out[at + w..at + w + 2 * pw].fill(0.0);
                    }
                }
            }
            out[(ph + self.h - 1) * cols + pw + w..].fill(0.0);
        }
    }

    /// The weights as the forward tiles read them: per tile of [`CO_TILE`] output channels,
    /// per input channel and tap, the tile's [`CO_TILE`] weights (zero past `cout`).
    fn pack(&self, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let taps = self.taps.len();
        let tiles = self.cout.div_ceil(CO_TILE);
        let mut packed = vec![0.0f32; tiles * self.cin * taps * CO_TILE];
        for (t, tile) in packed
            .chunks_exact_mut(self.cin * taps * CO_TILE)
            .enumerate()
        {
            for ci in 0..self.cin {
                for tap in 0..taps {
                    for c in 0..CO_TILE {
                        let co = t * CO_TILE + c;
                        if co < self.cout {
                            tile[(ci * taps + tap) * CO_TILE + c] = weight(co, ci, tap);
                        }
                    }
                }
            }
        }
        packed
    }
}

/// `dst = src` in whole vectors, the last one overlapping the one before (see `pad_image`).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    if n < LANES {
        dst.copy_from_slice(src);
        return;
    }
    // Arrays, not slices: slices of a runtime length compile to memcpy calls.
    let (d, _) = dst[..n].as_chunks_mut::<LANES>();
    let (s, _) = src.as_chunks::<LANES>();
    for (d, s) in d.iter_mut().zip(s) {
        *d = *s;
    }
    if let (Some(d), Some(s)) = (
        dst[n - LANES..].first_chunk_mut::<LANES>(),
        src[n - LANES..].first_chunk::<LANES>(),
    ) {
        *d = *s;
    }
}

/// The plan of a forward convolution.
fn forward_plan(geo: &Geometry) -> Plan {
    Plan::new(
        geo.cin,
        [geo.h, geo.w],
        geo.cout,
        [geo.kh, geo.kw],
        geo.pad,
        geo.stride[0],
    )
}

/// `[batch, cout, oh, ow]` output.
pub(super) fn forward(geo: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_with(Isa::detect(), geo, x, w, bias)
}

fn forward_with(isa: Isa, geo: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let plan = forward_plan(geo);
    let taps = plan.taps.len();
    let packed = plan.pack(|co, ci, tap| w[(co * geo.cin + ci) * taps + tap]);
    // SAFETY: `conv_image` writes every output pixel of every channel.
    unsafe {
        par_written(geo.y_image(), geo.batch, 1, |b, y_img| {
            let x_img = &x[b * geo.x_image()..][..geo.x_image()];
            with_scratch(plan.padded_len(), |padded| {
                plan.pad_image(x_img, geo.grid, padded);
                conv_image(isa, &plan, padded, &packed, bias, y_img);
            })
        })
    }
}

/// `[batch, cin, h, w]` input gradient: at stride 1 the transposed convolution is a convolution
/// of the output gradient padded by `k - 1 - p`, with the kernel flipped and its input and
/// output channels swapped. The fixed-point quantizer's gradient is straight through.
pub(super) fn grad_input(geo: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    grad_input_with(Isa::detect(), geo, w, dy)
}

fn grad_input_with(isa: Isa, geo: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (kh, kw) = (geo.kh, geo.kw);
    let plan = Plan::new(
        geo.cout,
        [geo.oh, geo.ow],
        geo.cin,
        [kh, kw],
        [kh - 1 - geo.pad[0], kw - 1 - geo.pad[1]],
        1,
    );
    debug_assert_eq!([plan.oh, plan.ow], [geo.h, geo.w]);
    let packed = plan.pack(|ci, co, tap| {
        let (i, j) = (tap / kw, tap % kw);
        w[((co * geo.cin + ci) * kh + kh - 1 - i) * kw + kw - 1 - j]
    });
    // SAFETY: `conv_image` writes every output pixel of every channel.
    unsafe {
        par_written(geo.x_image(), geo.batch, 1, |b, dx_img| {
            let dy_img = &dy[b * geo.y_image()..][..geo.y_image()];
            with_scratch(plan.padded_len(), |padded| {
                plan.pad_image(dy_img, None, padded);
                conv_image(isa, &plan, padded, &packed, None, dx_img);
            })
        })
    }
}

/// `[cout, cin, kh, kw]` weight gradient, summed per chunk of images and then over the chunks
/// in order (as the gemm path does).
pub(super) fn grad_weight(geo: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    grad_weight_with(Isa::detect(), geo, x, dy)
}

fn grad_weight_with(isa: Isa, geo: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let plan = forward_plan(geo);
    let len = geo.cout * geo.cin * plan.taps.len();
    let group = images_per_group(&plan, geo.y_image());
    let chunks = geo.batch.div_ceil(IMAGES_PER_CHUNK);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0f32; len];
            let images = c * IMAGES_PER_CHUNK..((c + 1) * IMAGES_PER_CHUNK).min(geo.batch);
            with_scratch(group * plan.padded_len(), |padded| {
                for first in images.clone().step_by(group) {
                    let count = group.min(images.end - first);
                    for (i, buf) in padded
                        .chunks_exact_mut(plan.padded_len())
                        .take(count)
                        .enumerate()
                    {
                        let b = first + i;
                        plan.pad_image(&x[b * geo.x_image()..][..geo.x_image()], geo.grid, buf);
                    }
                    let dy_group = &dy[first * geo.y_image()..][..count * geo.y_image()];
                    weight_images(
                        isa,
                        &plan,
                        &padded[..count * plan.padded_len()],
                        dy_group,
                        count,
                        &mut acc,
                    );
                }
            });
            acc
        })
        .collect();
    sum_in_order(partials, len)
}

/// Images whose weight-gradient dot products run together before each (channel, channel, tap)
/// sum is reduced from its vector: the reduction costs as much as a dozen multiply-adds per
/// sum, which on an 8x8 plane (eight vectors) was half the kernel's time. As many images as keep
/// their padded planes and output gradients within about half of a 1 MiB level-2 cache, at most
/// a chunk; it depends on the shapes only, so the summation order does not change with threads.
fn images_per_group(plan: &Plan, y_image: usize) -> usize {
    const BUDGET: usize = 512 * 1024 / std::mem::size_of::<f32>();
    (BUDGET / (plan.padded_len() + y_image)).clamp(1, IMAGES_PER_CHUNK)
}

/// One image's convolution into `y` (`cout` planes of `oh x ow`), every element written.
fn conv_image(
    isa: Isa,
    plan: &Plan,
    padded: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    check_bounds(plan, padded);
    assert!(
        y.len() >= plan.cout * plan.oh * plan.ow
            && packed.len() >= plan.cout.div_ceil(CO_TILE) * plan.cin * plan.taps.len() * CO_TILE
    );
    match isa {
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA; the bounds were
        // checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::conv_image(plan, padded, packed, bias, y) },
        // SAFETY: the bounds were checked above.
        Isa::Portable => unsafe { conv_image_generic::<Portable>(plan, padded, packed, bias, y) },
    }
}

/// The contribution `dW += dY · (shifted planes)ᵀ` of `count` images onto `acc`
/// (`[cout, cin, taps]`); `padded` and `dy` hold the images one after another.
fn weight_images(isa: Isa, plan: &Plan, padded: &[f32], dy: &[f32], count: usize, acc: &mut [f32]) {
    let y_image = plan.cout * plan.oh * plan.ow;
    assert!(
        count > 0
            && padded.len() == count * plan.padded_len()
            && dy.len() == count * y_image
            && acc.len() >= plan.cout * plan.cin * plan.taps.len()
    );
    check_bounds(plan, &padded[(count - 1) * plan.padded_len()..]);
    match isa {
        // SAFETY: as in `conv_image`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::weight_images(plan, padded, dy, count, acc) },
        // SAFETY: the bounds were checked above.
        Isa::Portable => unsafe { weight_images_generic::<Portable>(plan, padded, dy, count, acc) },
    }
}

/// Every vector load of the kernels stays inside `padded`: the furthest one starts at the last
/// channel's last tap of the last vector and reads [`LANES`] floats.
fn check_bounds(plan: &Plan, padded: &[f32]) {
    let last_tap = plan.taps.last().copied().unwrap_or(0);
    let last_vector = plan.vectors.last().map_or(0, |v| v.input);
    assert!(
        plan.cin > 0
            && (plan.cin - 1) * plan.plane() + last_tap + last_vector + LANES <= padded.len()
            && padded.len() >= plan.padded_len(),
        "direct conv: padded planes too short"
    );
}

/// The vector operations the kernels need, on eight floats.
trait Simd {
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// `*p` in every lane.
    unsafe fn splat(p: *const f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    fn to_array(v: Self::V) -> [f32; LANES];
}

/// Eight-float arrays: any CPU.
struct Portable;

impl Simd for Portable {
    type V = [f32; LANES];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; LANES]
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self::V {
        // SAFETY: the caller passes a readable pointer.
        [unsafe { *p }; LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller passes LANES readable floats.
        unsafe { std::ptr::read_unaligned(p.cast::<[f32; LANES]>()) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller passes LANES writable floats.
        unsafe { std::ptr::write_unaligned(p.cast::<[f32; LANES]>(), v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    fn to_array(v: Self::V) -> [f32; LANES] {
        v
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, Plan, Simd, conv_image_generic, weight_images_generic};
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm256_storeu_ps,
    };
    use std::mem::MaybeUninit;

    /// AVX2 registers with fused multiply-adds.
    pub(super) struct Avx2;

    // The methods are inlined into the `target_feature` functions below, where the intrinsics
    // compile to single instructions.
    impl Simd for Avx2 {
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: only reached from the AVX2 entry points below.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            // SAFETY: as above; the caller passes a readable pointer.
            unsafe { _mm256_broadcast_ss(&*p) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: as above; the caller passes LANES readable floats.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: as above; the caller passes LANES writable floats.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: as above.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: as above.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn to_array(v: __m256) -> [f32; LANES] {
            // SAFETY: __m256 is eight f32s.
            unsafe { std::mem::transmute::<__m256, [f32; LANES]>(v) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv_image(
        plan: &Plan,
        padded: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        y: &mut [MaybeUninit<f32>],
    ) {
        // SAFETY: the caller checked the CPU features and the bounds.
        unsafe { conv_image_generic::<Avx2>(plan, padded, packed, bias, y) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_images(
        plan: &Plan,
        padded: &[f32],
        dy: &[f32],
        count: usize,
        acc: &mut [f32],
    ) {
        // SAFETY: the caller checked the CPU features and the bounds.
        unsafe { weight_images_generic::<Avx2>(plan, padded, dy, count, acc) }
    }
}

/// The forward kernel: tiles of [`CO_TILE`] output channels by up to [`VEC_TILE`] vectors.
///
/// # Safety
/// `padded`, `packed` and `y` hold what [`check_bounds`] and `conv_image` check.
#[inline(always)]
unsafe fn conv_image_generic<S: Simd>(
    plan: &Plan,
    padded: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    let tile_len = plan.cin * plan.taps.len() * CO_TILE;
    for (t, weights) in packed.chunks_exact(tile_len).enumerate() {
        let channels = CO_TILE.min(plan.cout - t * CO_TILE);
        let mut groups = plan.vectors.chunks_exact(VEC_TILE);
        for group in &mut groups {
            let vs: [Vector; VEC_TILE] = std::array::from_fn(|v| group[v]);
            // SAFETY: forwarded from the caller.
            unsafe { conv_tile::<S, VEC_TILE>(plan, padded, weights, bias, t, channels, vs, y) };
        }
        if let [a] = *groups.remainder() {
            // SAFETY: forwarded from the caller.
            unsafe { conv_tile::<S, 1>(plan, padded, weights, bias, t, channels, [a], y) };
        }
    }
}

/// One tile: `CO_TILE × V` accumulators over every input channel and tap, then stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_tile<S: Simd, const V: usize>(
    plan: &Plan,
    padded: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    tile: usize,
    channels: usize,
    vs: [Vector; V],
    y: &mut [MaybeUninit<f32>],
) {
    let plane = plan.plane();
    let n = plan.oh * plan.ow;
    let mut acc = [[unsafe { S::zero() }; V]; CO_TILE];
    if let Some(b) = bias {
        for (c, row) in acc.iter_mut().enumerate().take(channels) {
            // SAFETY: `b` has `cout` entries and `tile * CO_TILE + c < cout`.
            let v = unsafe { S::splat(b.as_ptr().add(tile * CO_TILE + c)) };
            *row = [v; V];
        }
    }
    let base = padded.as_ptr();
    let mut w = weights.as_ptr();
    for ci in 0..plan.cin {
        for &tap in &plan.taps {
            // SAFETY: every read lies within the bounds `check_bounds` checked; `w` walks the
            // tile's `cin * taps * CO_TILE` packed weights.
            unsafe {
                let p = base.add(ci * plane + tap);
                let xs: [S::V; V] = std::array::from_fn(|v| S::load(p.add(vs[v].input)));
                for (c, row) in acc.iter_mut().enumerate() {
                    let wv = S::splat(w.add(c));
                    for v in 0..V {
                        row[v] = S::fma(wv, xs[v], row[v]);
                    }
                }
                w = w.add(CO_TILE);
            }
        }
    }
    for (c, row) in acc.iter().enumerate().take(channels) {
        let out = (tile * CO_TILE + c) * n;
        for v in 0..V {
            let at = out + vs[v].output;
            if vs[v].lanes == LANES {
                // SAFETY: a full vector of the output plane `tile * CO_TILE + c < cout`.
                unsafe { S::store(y.as_mut_ptr().cast::<f32>().add(at), row[v]) };
            } else {
                let lanes = vs[v].lanes;
                y[at..at + lanes].write_copy_of_slice(&S::to_array(row[v])[..lanes]);
            }
        }
    }
}

/// The weight-gradient kernel: per tile of [`CO_TILE`] output by [`CI_TILE`] input channels and
/// per tap, dot products over every output pixel of `count` images. Tiles past `cout` or `cin`
/// repeat the last channel and are not written.
///
/// # Safety
/// `padded`, `dy` and `acc` hold what [`check_bounds`] and `weight_images` check.
#[inline(always)]
unsafe fn weight_images_generic<S: Simd>(
    plan: &Plan,
    padded: &[f32],
    dy: &[f32],
    count: usize,
    acc: &mut [f32],
) {
    let (plane, n, taps) = (plan.plane(), plan.oh * plan.ow, plan.taps.len());
    let (x_image, y_image) = (plan.padded_len(), plan.cout * n);
    let (full, tails): (Vec<Vector>, Vec<Vector>) =
        plan.vectors.iter().partition(|v| v.lanes == LANES);
    // The group's full vectors, image after image, as offsets from its first image.
    let entries: Vec<Vector> = (0..count)
        .flat_map(|img| {
            full.iter().map(move |v| Vector {
                input: img * x_image + v.input,
                output: img * y_image + v.output,
                lanes: LANES,
            })
        })
        .collect();
    let ci_tiles = plan.cin.div_ceil(CI_TILE);
    let zero = [[unsafe { S::zero() }; CI_TILE]; CO_TILE];
    // Each (input tile, tap)'s accumulators, kept between blocks of vectors.
    let mut sums = vec![zero; ci_tiles * taps];
    for co0 in (0..plan.cout).step_by(CO_TILE) {
        // Offsets of the tile's output-gradient planes in an image (the last one repeated past
        // `cout`).
        let gy: [usize; CO_TILE] = std::array::from_fn(|c| (co0 + c).min(plan.cout - 1) * n);
        sums.fill(zero);
        // Blocks of vectors small enough that the tile's output gradients (6 x 32 vectors,
        // 6 KiB) stay in level 1 while every input tile and tap passes over them: streamed
        // whole planes at a time they came from level 2 for each, and the kernel ran at 60% of
        // the forward kernel's rate.
        for block in entries.chunks(VECTORS_PER_BLOCK) {
            for (ct, a) in sums.chunks_exact_mut(taps).enumerate() {
                let ci0 = ct * CI_TILE;
                let xs: [usize; CI_TILE] =
                    std::array::from_fn(|k| (ci0 + k).min(plan.cin - 1) * plane);
                for (a, &tap) in a.iter_mut().zip(&plan.taps) {
                    // SAFETY: every load lies in `padded` (checked) or in an output-gradient
                    // plane of one of the group's images (vectors inside the plane).
                    unsafe {
                        let x = padded.as_ptr().add(tap);
                        dot_vectors::<S>(a, x, &xs, dy.as_ptr(), &gy, block);
                    }
                }
            }
        }
        if !tails.is_empty() {
            for (ct, a) in sums.chunks_exact_mut(taps).enumerate() {
                let ci0 = ct * CI_TILE;
                let xs: [usize; CI_TILE] =
                    std::array::from_fn(|k| (ci0 + k).min(plan.cin - 1) * plane);
                for (a, &tap) in a.iter_mut().zip(&plan.taps) {
                    // Row tails in accumulators of their own (one loop at a time keeps them
                    // in registers), added at the end.
                    let mut b = zero;
                    for img in 0..count {
                        // Lanes past the row's end read zeros, so the input lanes they meet
                        // (the next row's first pixels) add nothing.
                        let mut g = [0.0f32; CO_TILE * LANES];
                        for v in &tails {
                            for (c, lanes) in g.chunks_exact_mut(LANES).enumerate() {
                                lanes[..v.lanes].copy_from_slice(
                                    &dy[img * y_image + gy[c] + v.output..][..v.lanes],
                                );
                            }
                            let one = [Vector {
                                input: v.input,
                                output: 0,
                                lanes: LANES,
                            }];
                            let lanes: [usize; CO_TILE] = std::array::from_fn(|c| c * LANES);
                            // SAFETY: as above; `g` holds CO_TILE vectors.
                            unsafe {
                                let x = padded.as_ptr().add(img * x_image + tap);
                                dot_vectors::<S>(&mut b, x, &xs, g.as_ptr(), &lanes, &one);
                            }
                        }
                    }
                    for (ra, rb) in a.iter_mut().zip(&b) {
                        for (va, vb) in ra.iter_mut().zip(rb) {
                            // SAFETY: nothing is read from memory.
                            *va = unsafe { S::add(*va, *vb) };
                        }
                    }
                }
            }
        }
        for (ct, a) in sums.chunks_exact(taps).enumerate() {
            let ci0 = ct * CI_TILE;
            for (t, tile) in a.iter().enumerate() {
                for (c, row) in tile.iter().enumerate().take(plan.cout - co0) {
                    for (k, v) in row.iter().enumerate().take(plan.cin - ci0) {
                        acc[((co0 + c) * plan.cin + ci0 + k) * taps + t] +=
                            lane_sum(S::to_array(*v));
                    }
                }
            }
        }
    }
}

/// Vectors per block of the weight-gradient kernel (see `weight_images_generic`).
const VECTORS_PER_BLOCK: usize = 32;

/// `a[c][k] += Σ_v gradient(c, v) · input(k, v)` over `vectors`: the gradient vector of output
/// channel `c` at `g + gy[c] + v.output`, the input vector of channel `k` at `x + xs[k] +
/// v.input`.
///
/// # Safety
/// Every such vector is readable.
#[inline(always)]
unsafe fn dot_vectors<S: Simd>(
    a: &mut [[S::V; CI_TILE]; CO_TILE],
    x: *const f32,
    xs: &[usize; CI_TILE],
    g: *const f32,
    gy: &[usize; CO_TILE],
    vectors: &[Vector],
) {
    let mut acc = *a;
    for v in vectors {
        // SAFETY: forwarded from the caller.
        unsafe {
            let xv: [S::V; CI_TILE] = std::array::from_fn(|k| S::load(x.add(xs[k] + v.input)));
            // One output-gradient vector live at a time: 12 accumulators, two inputs and one
            // gradient fit the registers.
            for (c, row) in acc.iter_mut().enumerate() {
                let gv = S::load(g.add(gy[c] + v.output));
                for k in 0..CI_TILE {
                    row[k] = S::fma(gv, xv[k], row[k]);
                }
            }
        }
    }
    *a = acc;
}

/// The lanes' sum in a fixed pairwise order.
#[inline(always)]
fn lane_sum(l: [f32; LANES]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shift::cpu_conv::{Conv2dParams, gemm_forward, gemm_grad_input, gemm_grad_weight};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        got.iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    fn isas() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            all.push(Isa::detect());
        }
        all
    }

    /// (batch, cin, cout, [h, w], k, pad, bias, fixed point): row lengths with and without
    /// tails, channel counts that fill no tile, 5x5 and 1x1 padded kernels, a quantized input.
    type Case = (
        usize,
        usize,
        usize,
        [usize; 2],
        usize,
        usize,
        bool,
        Option<(u32, u32)>,
    );
    const CASES: [Case; 8] = [
        (3, 16, 16, [8, 8], 3, 1, false, None),
        (2, 3, 16, [32, 32], 3, 1, true, None),
        (2, 5, 7, [9, 13], 3, 1, true, None),
        (9, 4, 6, [10, 11], 3, 0, false, None),
        (2, 6, 5, [12, 17], 5, 2, true, None),
        (2, 7, 9, [9, 12], 5, 1, false, None),
        (2, 5, 3, [8, 9], 1, 0, false, Some((2, 3))),
        (3, 8, 8, [16, 16], 3, 1, false, Some((1, 2))),
    ];

    /// Padded planes are the image inside zeros, whatever was in the buffer before: margins
    /// narrower and wider than a vector, rows shorter than one.
    #[test]
    fn padded_planes_are_the_image_inside_zeros() {
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        for (cin, [h, w], [ph, pw]) in [
            (3, [5, 9], [1, 1]),
            (2, [4, 16], [0, 0]),
            (2, [3, 6], [2, 2]),
            (1, [7, 8], [0, 5]),
            (2, [6, 21], [3, 4]),
        ] {
            let plan = Plan::new(cin, [h, w], 4, [2 * ph + 1, 2 * pw + 1], [ph, pw], 1);
            let img = random(cin * h * w, &mut rng);
            let mut dst = vec![f32::NAN; plan.padded_len()];
            plan.pad_image(&img, None, &mut dst);
            for (i, &v) in dst.iter().enumerate() {
                let (c, r, col) = (
                    i / plan.plane(),
                    i % plan.plane() / plan.cols,
                    i % plan.cols,
                );
                let inside = c < cin && (ph..ph + h).contains(&r) && (pw..pw + w).contains(&col);
                let want = if inside {
                    img[(c * h + r - ph) * w + col - pw]
                } else {
                    0.0
                };
                assert!(
                    v == want,
                    "{cin}x{h}x{w} pad {ph},{pw}: element {i} is {v}, not {want}"
                );
            }
        }
    }

    /// Compares the direct kernels with the gemm path on `case` at `stride` (the input gradient
    /// at stride 1 only, where the direct kernels take it); returns the inputs.
    fn check_against_gemm(i: usize, case: Case, stride: usize) -> (Geometry, Vec<f32>, Vec<f32>) {
        let (batch, cin, cout, [h, w], k, pad, bias, fp) = case;
        let mut rng = ChaCha8Rng::seed_from_u64((100 * stride + i) as u64);
        let mut params = Conv2dParams::new([stride, stride], [pad, pad], 1);
        params.fixed_point_input = fp;
        let geo = Geometry::new([batch, cin, h, w], [cout, cin, k, k], params);
        // A 1x1 kernel with padding 0 but a quantized input is not pointwise: it must apply.
        assert!(shape_fits(&geo), "case {i} should take the direct kernels");
        let x = random(batch * cin * h * w, &mut rng);
        let wt = random(cout * cin * k * k, &mut rng);
        let b = bias.then(|| random(cout, &mut rng));
        let dy = random(batch * geo.y_image(), &mut rng);
        let want_y = gemm_forward(&geo, &x, &wt, b.as_deref());
        let want_dw = gemm_grad_weight(&geo, &x, &dy);
        for isa in isas() {
            let what = format!("case {i} stride {stride} {isa:?}");
            let e = rel_err(&forward_with(isa, &geo, &x, &wt, b.as_deref()), &want_y);
            assert!(e <= 1e-5, "forward {what}: {e}");
            if stride == 1 {
                let want_dx = gemm_grad_input(&geo, &wt, &dy);
                let e = rel_err(&grad_input_with(isa, &geo, &wt, &dy), &want_dx);
                assert!(e <= 1e-5, "grad x {what}: {e}");
            }
            let e = rel_err(&grad_weight_with(isa, &geo, &x, &dy), &want_dw);
            assert!(e <= 1e-5, "grad w {what}: {e}");
        }
        (geo, x, dy)
    }

    #[test]
    fn matches_the_gemm_path() {
        for (i, &case) in CASES.iter().enumerate() {
            check_against_gemm(i, case, 1);
        }
    }

    /// Stride 2 (the planes split in phases): forward and weight gradient; odd and even sizes,
    /// 1x1 to 5x5 kernels, row tails, a quantized input.
    #[test]
    fn stride_two_matches_the_gemm_path() {
        let cases: [Case; 5] = [
            (2, 3, 16, [32, 32], 3, 1, true, None),
            (3, 5, 7, [33, 35], 3, 1, false, None),
            (2, 6, 5, [20, 23], 5, 2, true, Some((2, 3))),
            (2, 4, 6, [16, 17], 1, 0, false, None),
            (2, 7, 9, [18, 40], 3, 0, true, Some((1, 2))),
        ];
        for (i, &case) in cases.iter().enumerate() {
            let (geo, x, dy) = check_against_gemm(i, case, 2);
            // The comparison can fail: the first pixel (read by the first output pixel, since
            // the padding is below the kernel) changed sign, to a value on every grid.
            let mut x2 = x.clone();
            x2[0] = if x[0] > 0.0 { -0.75 } else { 0.75 };
            let want_dw = gemm_grad_weight(&geo, &x, &dy);
            for isa in isas() {
                let e = rel_err(&grad_weight_with(isa, &geo, &x2, &dy), &want_dw);
                assert!(e > 1e-4, "planted pixel case {i} {isa:?}: {e}");
            }
        }
    }

    #[test]
    fn a_wrong_weight_or_pixel_is_caught() {
        // The comparison above can fail: one changed weight or input pixel shows in each output.
        let (batch, cin, cout, hw, k) = (2, 5, 7, [9, 13], 3);
        let geo = Geometry::new(
            [batch, cin, hw[0], hw[1]],
            [cout, cin, k, k],
            Conv2dParams::new([1, 1], [1, 1], 1),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = random(batch * cin * hw[0] * hw[1], &mut rng);
        let wt = random(cout * cin * k * k, &mut rng);
        let dy = random(batch * geo.y_image(), &mut rng);
        for isa in isas() {
            let mut w2 = wt.clone();
            w2[cout * cin * k * k - 1] += 0.01;
            let y = forward_with(isa, &geo, &x, &w2, None);
            assert!(rel_err(&y, &gemm_forward(&geo, &x, &wt, None)) > 1e-4);
            let dx = grad_input_with(isa, &geo, &w2, &dy);
            assert!(rel_err(&dx, &gemm_grad_input(&geo, &wt, &dy)) > 1e-4);
            let mut x2 = x.clone();
            x2[hw[0] * hw[1] - 1] += 0.01; // the last pixel of image 0, channel 0: a row tail
            let dw = grad_weight_with(isa, &geo, &x2, &dy);
            assert!(rel_err(&dw, &gemm_grad_weight(&geo, &x, &dy)) > 1e-4);
        }
    }

    #[test]
    fn which_shapes_take_it() {
        let geo = |cin, hw: [usize; 2], k, stride, pad, groups| {
            Geometry::new(
                [1, cin, hw[0], hw[1]],
                [4, cin / groups, k, k],
                Conv2dParams::new([stride, stride], [pad, pad], groups),
            )
        };
        assert!(shape_fits(&geo(4, [8, 8], 3, 1, 1, 1)));
        assert!(shape_fits(&geo(4, [16, 16], 3, 2, 1, 1)), "stride 2");
        assert!(
            !shape_fits(&geo(4, [8, 8], 3, 2, 1, 1)),
            "stride 2, rows of 4"
        );
        assert!(!shape_fits(&geo(4, [24, 24], 3, 3, 1, 1)), "stride 3");
        assert!(!shape_fits(&geo(4, [8, 8], 3, 1, 1, 2)), "groups");
        assert!(!shape_fits(&geo(4, [8, 8], 1, 1, 0, 1)), "pointwise");
        assert!(
            !shape_fits(&geo(4, [7, 7], 3, 1, 1, 1)),
            "rows shorter than a vector"
        );
        assert!(
            !shape_fits(&geo(4, [8, 8], 3, 1, 3, 1)),
            "padding not below the kernel"
        );
    }
}
