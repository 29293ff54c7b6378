//! Image augmentation as torchvision's `RandomAffine(degrees=R, translate=(K/w, K/h))`: each
//! image of a training batch is rotated by an angle uniform in `[−R, R]` degrees about its centre
//! and shifted by whole pixels uniform in `[−K, K]` on each axis (torchvision rounds its
//! translation to pixels too), then resampled by nearest neighbour (torchvision's default
//! `InterpolationMode.NEAREST`) or bilinearly, pixels from outside the image filled with the value
//! of a black pixel (torchvision's `fill=0` before normalization).
//!
//! The draws of an image come from a generator of its own, derived from the run's seed, the
//! epoch's generator state and the image's position in the epoch: they depend on nothing else, so
//! a resumed run augments exactly as one never stopped, and the images of a batch are augmented in
//! parallel (rayon) with the same result on any number of threads.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// How pixels are resampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// The nearest source pixel (torchvision's default for `RandomAffine`).
    Nearest,
    /// Bilinear between the four nearest source pixels (outside ones count as the fill).
    Bilinear,
}

/// A random affine augmentation: rotation and translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Largest shift in pixels on each axis (`translate=K`).
    pub translate: f32,
    /// Largest rotation in degrees either way (`rotate=R`).
    pub rotate: f32,
    /// How a pixel between grid points is read: nearest (torchvision's default) or bilinear.
    pub interpolation: Interpolation,
    /// The stored value of a pixel from outside the image: a black pixel's, `0` for images in
    /// `[0, 1]`, `−mean/std` for standardized ones.
    pub fill: f32,
}

/// Mixed into the run's seed for the augmentation's generators.
const AUGMENT_SALT: u64 = 0x6175_676d_656e_7421;

impl Affine {
    /// Parses `translate=K,rotate=R[,interp=nearest|bilinear]` (either part may be left out, each
    /// defaulting to 0), with the fill value of a black pixel. A negative, non-finite or unknown
    /// setting is an error naming it.
    pub fn parse(spec: &str, fill: f32) -> Result<Affine> {
        let mut a = Affine { translate: 0.0, rotate: 0.0, interpolation: Interpolation::Nearest, fill };
        let mut seen: Vec<&str> = vec![];
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::Param(format!("--augment `{part}`: expected key=value (translate=2,rotate=10)"))
            })?;
            // One value per setting (its aliases too): a repeated one is refused, not overwritten.
            let key = match k.trim() {
                "degrees" => "rotate",
                "interpolation" => "interp",
                other => other,
            };
            if seen.contains(&key) {
                return Err(Error::Param(format!("--augment: `{key}` given twice in `{spec}`")));
            }
            seen.push(key);
            let number = |what: &str| -> Result<f32> {
                match v.trim().parse::<f32>() {
                    Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                    Ok(x) if !x.is_finite() => {
                        Err(Error::Param(format!("--augment {what}={v}: not a finite number; a number ≥ 0")))
                    }
                    _ => Err(Error::Param(format!("--augment {what}={v}: expected a number ≥ 0"))),
                }
            };
            match k.trim() {
                "translate" => a.translate = number("translate")?,
                "rotate" | "degrees" => a.rotate = number("rotate")?,
                "interp" | "interpolation" => {
                    a.interpolation = match v.trim() {
                        "nearest" => Interpolation::Nearest,
                        "bilinear" => Interpolation::Bilinear,
                        other => {
                            return Err(Error::Param(format!("--augment interp={other}: expected nearest or bilinear")))
                        }
                    }
                }
                other => {
                    return Err(Error::Param(format!(
                        "--augment: unknown setting `{other}`; accepted: translate, rotate, interp"
                    )))
                }
            }
        }
        if seen.is_empty() {
            return Err(Error::Param(format!(
                "--augment `{spec}`: no setting; expected translate=PIXELS, rotate=DEGREES and/or interp=nearest|bilinear"
            )));
        }
        if a.rotate > 180.0 {
            return Err(Error::Param(format!("--augment rotate={}: at most 180 degrees", a.rotate)));
        }
        Ok(a)
    }

    /// That the settings are numbers `parse` accepts (finite, at least 0, a rotation of at most
    /// 180 degrees, a finite fill) and that the shift fits images of `h × w` pixels: at most their
    /// side (torchvision's `RandomAffine` takes `translate` as a fraction of the size, at most 1).
    pub fn check_image(&self, h: usize, w: usize) -> Result<()> {
        // A struct built in code has not been through `parse`: its numbers are checked here.
        for (what, x) in [("translate", self.translate), ("rotate", self.rotate)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(Error::Param(format!("--augment {what}={x}: expected a finite number ≥ 0")));
            }
        }
        if self.rotate > 180.0 {
            return Err(Error::Param(format!("--augment rotate={}: at most 180 degrees", self.rotate)));
        }
        if !self.fill.is_finite() {
            return Err(Error::Param(format!("augmentation fill {}: expected a finite pixel value", self.fill)));
        }
        let side = h.min(w);
        if self.translate > side as f32 {
            return Err(Error::Param(format!(
                "--augment translate={}: more than the images' side ({side} pixels); at most {side}",
                self.translate
            )));
        }
        Ok(())
    }

    /// The setting as `parse` reads it.
    pub fn spec(&self) -> String {
        let interp = match self.interpolation {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
        };
        format!("translate={},rotate={},interp={interp}", self.translate, self.rotate)
    }

    /// The generator of the image at `position` of the epoch whose generator state at its start
    /// was `epoch_state`, in a run with this seed.
    pub fn rng(seed: u64, epoch_state: u64, position: usize) -> Rng {
        let mut h = Rng::new(seed ^ AUGMENT_SALT);
        let a = h.next_u64() ^ epoch_state;
        let b = Rng::new(a).next_u64() ^ (position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng::new(Rng::new(b).next_u64())
    }

    /// Augments the images `x` `[n, c, h, w]` (f32) of a batch whose first image is at `position`
    /// of its epoch: image `i` with the draws of [`Affine::rng`]`(seed, epoch_state, position + i)`
    /// (the channels of an image move together). Images in parallel.
    pub fn apply(&self, x: &Tensor, seed: u64, epoch_state: u64, position: usize) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() != 4 {
            return Err(Error::Param(format!("--augment works on images [n, c, h, w]; these samples are {dims:?}")));
        }
        let (c, h, w) = (dims[1], dims[2], dims[3]);
        self.check_image(h, w)?;
        let src = x.flatten_all()?.to_vec1::<f32>()?;
        let per = c * h * w;
        let mut out = vec![0f32; src.len()];
        if per > 0 {
            out.par_chunks_mut(per).zip(src.par_chunks(per)).enumerate().for_each(|(i, (o, s))| {
                let mut rng = Affine::rng(seed, epoch_state, position + i);
                let (angle, tx, ty) = self.draw(&mut rng);
                for ch in 0..c {
                    self.warp(&s[ch * h * w..][..h * w], &mut o[ch * h * w..][..h * w], h, w, angle, tx, ty);
                }
            });
        }
        Ok(Tensor::from_vec(out, dims, x.device())?)
    }

    /// One image's draws, in torchvision's order: the angle (degrees), then the shifts (pixels,
    /// rounded as torchvision rounds them).
    fn draw(&self, rng: &mut Rng) -> (f32, f32, f32) {
        let angle = rng.range(-self.rotate, self.rotate);
        let tx = rng.range(-self.translate, self.translate).round();
        let ty = rng.range(-self.translate, self.translate).round();
        (angle, tx, ty)
    }

    /// Output pixel `o` takes the source at `R(−θ)(o − c − t) + c`, `c` the image's centre
    /// `((w−1)/2, (h−1)/2)`: a rotation by θ counter-clockwise as displayed (rows going down),
    /// then the shift. The products of a column's and a row's offsets are computed once each;
    /// every coordinate is still `(cos·px − sin·py) + cx`, `(sin·px + cos·py) + cy` in f64, and
    /// rounded (half away from zero) or floored exactly, without a library call per pixel.
    #[allow(clippy::too_many_arguments)]
    fn warp(&self, s: &[f32], o: &mut [f32], h: usize, w: usize, angle: f32, tx: f32, ty: f32) {
        let (sin, cos) = (angle.to_radians() as f64).sin_cos();
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        // One unsigned comparison per axis (a negative index wraps above the size), and the
        // choice made without a branch where the compiler can.
        let at = |r: i64, q: i64| -> f32 {
            let inside = (r as u64) < h as u64 && (q as u64) < w as u64;
            let k = if inside { r as usize * w + q as usize } else { 0 };
            if inside {
                s[k]
            } else {
                self.fill
            }
        };
        let px: Vec<f64> = (0..w).map(|ox| ox as f64 - cx - tx as f64).collect();
        let (cos_px, sin_px): (Vec<f64>, Vec<f64>) = px.iter().map(|&p| (cos * p, sin * p)).unzip();
        #[cfg(target_arch = "x86_64")]
        let vector = self.interpolation == Interpolation::Nearest && simd::usable(h, w);
        for oy in 0..h {
            let py = oy as f64 - cy - ty as f64;
            let (sin_py, cos_py) = (sin * py, cos * py);
            let row = &mut o[oy * w..(oy + 1) * w];
            #[cfg(target_arch = "x86_64")]
            if vector {
                let rows = simd::Rows { cos_px: &cos_px, sin_px: &sin_px, cx, cy, h, w, fill: self.fill };
                // SAFETY: `usable` found AVX-512 F and VL on this CPU; `s` holds h·w pixels.
                unsafe { simd::nearest_row(&rows, s, row, sin_py, cos_py) };
                continue;
            }
            for (ox, out) in row.iter_mut().enumerate() {
                let sx = cos_px[ox] - sin_py + cx;
                let sy = sin_px[ox] + cos_py + cy;
                *out = match self.interpolation {
                    Interpolation::Nearest => at(round_half_away(sy), round_half_away(sx)),
                    Interpolation::Bilinear => {
                        let (x0, y0) = (floor(sx), floor(sy));
                        let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
                        let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                        let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                        top * (1.0 - fy) + bottom * fy
                    }
                };
            }
        }
    }
}

/// The nearest-neighbour warp of a row, 8 pixels an instruction (AVX-512 F and VL): the same f64
/// coordinates, the same rounding (truncation, then the exact remainder against ±0.5), and a
/// masked gather that takes the fill outside the image, so the same pixels as the scalar loop
/// (tested against it).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// A warp's per-image constants: the column offsets' products, the centre, the size, the fill.
    pub struct Rows<'a> {
        pub cos_px: &'a [f64],
        pub sin_px: &'a [f64],
        pub cx: f64,
        pub cy: f64,
        pub h: usize,
        pub w: usize,
        pub fill: f32,
    }

    /// Whether the CPU has the instructions and the image's indices fit 32-bit lanes.
    pub fn usable(h: usize, w: usize) -> bool {
        use std::arch::is_x86_feature_detected as has;
        h.checked_mul(w).is_some_and(|n| n < i32::MAX as usize) && crate::cpu::has_avx512() && has!("avx512vl")
    }

    /// `(x as i64 rounded half away from zero)` of [`super::round_half_away`] in f64 lanes:
    /// clamped, truncated, then moved by the exact remainder.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    fn round_half_away(x: __m512d) -> __m512d {
        let lim = _mm512_set1_pd(super::COORD_LIMIT);
        let x = _mm512_min_pd(_mm512_max_pd(x, _mm512_sub_pd(_mm512_setzero_pd(), lim)), lim);
        let t = _mm512_roundscale_pd::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let d = _mm512_sub_pd(x, t);
        let one = _mm512_set1_pd(1.0);
        let up = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(d, _mm512_set1_pd(0.5));
        let down = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(d, _mm512_set1_pd(-0.5));
        let t = _mm512_mask_add_pd(t, up, t, one);
        _mm512_mask_sub_pd(t, down, t, one)
    }

    /// One output row `o` (w pixels) of source image `s` for the row products `sin_py`, `cos_py`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VL; `s.len() == r.h·r.w < 2³¹`, `o.len() == r.w` and the
    /// column products hold `r.w` values.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub unsafe fn nearest_row(r: &Rows, s: &[f32], o: &mut [f32], sin_py: f64, cos_py: f64) {
        debug_assert!(s.len() == r.h * r.w && o.len() == r.w && r.cos_px.len() == r.w);
        let (cx, cy) = (_mm512_set1_pd(r.cx), _mm512_set1_pd(r.cy));
        let (sin_py, cos_py) = (_mm512_set1_pd(sin_py), _mm512_set1_pd(cos_py));
        let (h, w) = (_mm256_set1_epi32(r.h as i32), _mm256_set1_epi32(r.w as i32));
        let fill = _mm256_set1_ps(r.fill);
        let mut j = 0;
        while j < r.w {
            let n = (r.w - j).min(8);
            let tail: __mmask8 = if n == 8 { 0xFF } else { (1u8 << n) - 1 };
            // SAFETY: the masked lanes stay within the rows of `r.w` values.
            let (cpx, spx) = unsafe {
                (
                    _mm512_maskz_loadu_pd(tail, r.cos_px.as_ptr().add(j)),
                    _mm512_maskz_loadu_pd(tail, r.sin_px.as_ptr().add(j)),
                )
            };
            let sx = _mm512_add_pd(_mm512_sub_pd(cpx, sin_py), cx);
            let sy = _mm512_add_pd(_mm512_add_pd(spx, cos_py), cy);
            // Out-of-range values become i32::MIN, outside like the clamped scalar ones.
            let q = _mm512_cvttpd_epi32(round_half_away(sx));
            let row = _mm512_cvttpd_epi32(round_half_away(sy));
            let inside = tail & _mm256_cmplt_epu32_mask(row, h) & _mm256_cmplt_epu32_mask(q, w);
            let idx = _mm256_add_epi32(_mm256_mullo_epi32(row, w), q);
            // SAFETY: only the lanes inside the image are read; the store stays within `o`.
            unsafe {
                let v = _mm256_mmask_i32gather_ps::<4>(fill, inside, idx, s.as_ptr());
                _mm256_mask_storeu_ps(o.as_mut_ptr().add(j), tail, v);
            }
            j += 8;
        }
    }
}

/// The largest coordinate that the exact integer arithmetic below takes (a warped pixel's source
/// is within a few image sizes of it; beyond, every pixel is the fill anyway).
const COORD_LIMIT: f64 = (1u64 << 52) as f64;

/// `x.round()` (half away from zero) as an integer, for `|x| < 2⁵²`: truncation, then the exact
/// remainder decides; clamped beyond (outside any image).
#[inline(always)]
fn round_half_away(x: f64) -> i64 {
    let x = x.clamp(-COORD_LIMIT, COORD_LIMIT);
    let t = x as i64;
    let d = x - t as f64;
    // Without branches: which way a pixel rounds is as good as random, a branch on it mispredicts
    // every other pixel.
    t + (d >= 0.5) as i64 - (d <= -0.5) as i64
}

/// `x.floor()` as an integer, for `|x| < 2⁵²` (clamped beyond).
#[inline(always)]
fn floor(x: f64) -> i64 {
    let x = x.clamp(-COORD_LIMIT, COORD_LIMIT);
    let t = x as i64;
    t - ((t as f64) > x) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn image(h: usize, w: usize) -> Tensor {
        let v: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
        Tensor::from_vec(v, (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn pixels(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The integer rounding and floor agree with f64's own on ties, signs, tiny and large values.
    #[test]
    fn rounding_matches_the_library() {
        let mut xs = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            1e-300,
            1e15 + 0.5,
        ];
        xs.extend((-400..400).map(|k| k as f64 * 0.125 + 1e-9 * k as f64));
        for x in xs {
            assert_eq!(round_half_away(x), x.round() as i64, "{x}");
            assert_eq!(floor(x), x.floor() as i64, "{x}");
        }
    }

    /// Every warp gives the pixels of the plain formula (on a CPU with AVX-512 F and VL this tests
    /// the vector warp, elsewhere the scalar one):
    /// the source at `R(−θ)(o − c − t) + c` in f64, `round()`ed, the fill outside; odd sizes
    /// (vector tails), large shifts and angles, exact half-pixel ties (quarter turns of even sizes).
    #[test]
    fn warps_equal_the_formula() {
        let mut rng = Rng::new(5);
        for (h, w) in [(28, 28), (5, 13), (9, 8), (1, 17), (32, 3)] {
            let src: Vec<f32> = (0..h * w).map(|i| i as f32 * 0.5 - 3.0).collect();
            for k in 0..60 {
                let angle = if k < 8 { 90.0 * k as f32 } else { rng.range(-180.0, 180.0) };
                let (tx, ty) = (rng.range(-20.0, 20.0).round(), rng.range(-20.0, 20.0).round());
                let a = Affine::parse("translate=1,rotate=10", -7.0).unwrap();
                let mut got = vec![0f32; h * w];
                a.warp(&src, &mut got, h, w, angle, tx, ty);
                let (sin, cos) = (angle.to_radians() as f64).sin_cos();
                let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
                for oy in 0..h {
                    for ox in 0..w {
                        let px = ox as f64 - cx - tx as f64;
                        let py = oy as f64 - cy - ty as f64;
                        let (sx, sy) = ((cos * px - sin * py + cx).round(), (sin * px + cos * py + cy).round());
                        let want = if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
                            -7.0
                        } else {
                            src[sy as usize * w + sx as usize]
                        };
                        assert_eq!(
                            got[oy * w + ox].to_bits(),
                            want.to_bits(),
                            "{h}x{w} {angle} {tx} {ty} at ({oy}, {ox})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn parse_and_refuse() {
        let a = Affine::parse("translate=2,rotate=10", -0.5).unwrap();
        assert_eq!((a.translate, a.rotate, a.interpolation, a.fill), (2.0, 10.0, Interpolation::Nearest, -0.5));
        assert_eq!(Affine::parse(&a.spec(), -0.5).unwrap(), a);
        assert_eq!(Affine::parse("rotate=5,interp=bilinear", 0.0).unwrap().interpolation, Interpolation::Bilinear);
        for bad in [
            "translate",
            "translate=-1",
            "rotate=nan",
            "scale=2",
            "interp=cubic",
            "rotate=200",
            "translate=2,translate=3",
            "rotate=5,degrees=6",
            "",
            " , ",
        ] {
            assert!(Affine::parse(bad, 0.0).is_err(), "{bad}");
        }
        assert!(Affine::parse("translate=28", 0.0).unwrap().check_image(28, 28).is_ok());
        assert!(Affine::parse("translate=29", 0.0).unwrap().check_image(28, 28).is_err());
    }

    #[test]
    fn identity_shift_and_quarter_turn() {
        let x = image(3, 4);
        for interpolation in [Interpolation::Nearest, Interpolation::Bilinear] {
            let id = Affine { translate: 0.0, rotate: 0.0, interpolation, fill: 0.0 };
            assert_eq!(pixels(&id.apply(&x, 1, 2, 3).unwrap()), pixels(&x));
        }
        let a = Affine { translate: 1.0, rotate: 0.0, interpolation: Interpolation::Nearest, fill: -1.0 };
        let s = pixels(&x);
        let mut o = vec![0.0; 12];
        // One pixel right and one down: the first row and column are fill.
        a.warp(&s, &mut o, 3, 4, 0.0, 1.0, 1.0);
        assert_eq!(o, vec![-1., -1., -1., -1., -1., 1., 2., 3., -1., 5., 6., 7.]);
        // 90° counter-clockwise on a square: the right column becomes the top row.
        let sq: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut o = vec![0.0; 9];
        a.warp(&sq, &mut o, 3, 3, 90.0, 0.0, 0.0);
        assert_eq!(o, vec![3., 6., 9., 2., 5., 8., 1., 4., 7.]);
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_position_only() {
        let a = Affine { translate: 2.0, rotate: 15.0, interpolation: Interpolation::Bilinear, fill: 0.0 };
        let v: Vec<f32> = (0..5 * 28 * 28).map(|i| (i % 97) as f32).collect();
        let x = Tensor::from_vec(v, (5, 1, 28, 28), &Device::Cpu).unwrap();
        let all = pixels(&a.apply(&x, 7, 11, 20).unwrap());
        // The last two images alone, at their positions, augment the same way.
        let tail = pixels(&a.apply(&x.narrow(0, 3, 2).unwrap(), 7, 11, 23).unwrap());
        assert_eq!(all[3 * 784..], tail[..]);
        assert_ne!(all, pixels(&a.apply(&x, 8, 11, 20).unwrap()));
        assert_ne!(all, pixels(&a.apply(&x, 7, 12, 20).unwrap()));
        assert_ne!(all, pixels(&x));
        // The draws stay in range and the shifts are whole pixels.
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let (angle, tx, ty) = a.draw(&mut rng);
            assert!(angle.abs() <= 15.0 && tx.abs() <= 2.0 && ty.abs() <= 2.0);
            assert_eq!((tx.fract(), ty.fract()), (0.0, 0.0));
        }
        assert!(a.apply(&Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(), 0, 0, 0).is_err());
    }
}
