//! False positive (paper Eq. 8): x− = x+ ⊙ (1 − M(Ω*)), y− = y+.
//!
//! Ω* is `heatmap::region::salient_region` of the sample's heatmap at the
//! image's own size (the connected region around the peak above 0.5 × max
//! by default, dilated by 2 px). Pixels inside Ω* are filled with 0 (Eq. 8),
//! or the image's mean colour, or the blurred image ([`Fill`]); every pixel
//! outside Ω* is unchanged. The run writes x− as PNG.

use anyhow::{Context, Result};

use super::{Fill, MaskedImage, PairKind, PerturbInput, Perturbation, Perturbed, Skip};
use crate::heatmap::region::salient_region;
use crate::util::blur::gaussian_blur;

/// Eq. 8.
#[derive(Clone, Copy, Debug, Default)]
pub struct FalsePositive;

/// Fill the pixels of `region` (row-major, image size) in `img`.
pub fn mask_image(img: &image::RgbImage, region: &[bool], fill: Fill) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    let fills: Vec<[u8; 3]> = match fill {
        Fill::Zero => vec![[0, 0, 0]],
        Fill::Mean => {
            let mut sum = [0f64; 3];
            for p in img.pixels() {
                for (acc, v) in sum.iter_mut().zip(p.0) {
                    *acc += f64::from(v);
                }
            }
            let n = (w * h).max(1) as f64;
            vec![[0, 1, 2].map(|c| (sum[c] / n).round().clamp(0.0, 255.0) as u8)]
        }
        Fill::Blur { sigma } => {
            let chans: Vec<Vec<f32>> = (0..3)
                .map(|c| {
                    let src: Vec<f32> = img.pixels().map(|p| f32::from(p.0[c])).collect();
                    gaussian_blur(&src, h, w, sigma)
                })
                .collect();
            (0..w * h)
                .map(|i| [0, 1, 2].map(|c| chans[c][i].round().clamp(0.0, 255.0) as u8))
                .collect()
        }
    };
    for (i, inside) in region.iter().enumerate() {
        if *inside {
            let px = if fills.len() == 1 { fills[0] } else { fills[i] };
            out.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb(px));
        }
    }
    out
}

impl Perturbation for FalsePositive {
    fn kind(&self) -> PairKind {
        PairKind::Fp
    }

    fn apply(&self, input: &PerturbInput) -> Result<std::result::Result<Perturbed, Skip>> {
        let k = input.keyword();
        let img = input
            .image
            .with_context(|| format!("sample {}: the false positive needs the image", input.id))?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let region = salient_region(input.heatmap, input.id, (h, w), input.region)?;
        let share = region.area_share();
        let rgb = mask_image(img, &region.data, input.fill);
        Ok(Ok(Perturbed {
            rejected: input.answer.to_string(),
            delta: vec![k.text.clone()],
            replacement: None,
            image: Some(MaskedImage { rgb, region, share }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_only_the_region() {
        let img = image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([(10 * x + y) as u8, 50, 200]));
        let mut region = vec![false; 12];
        region[5] = true;
        region[6] = true;
        for fill in [Fill::Zero, Fill::Mean, Fill::Blur { sigma: 1.0 }] {
            let out = mask_image(&img, &region, fill);
            for (i, (a, b)) in img.pixels().zip(out.pixels()).enumerate() {
                if region[i] {
                    if fill == Fill::Zero {
                        assert_eq!(b.0, [0, 0, 0]);
                    }
                } else {
                    assert_eq!(a, b, "pixel {i} outside the region changed ({fill:?})");
                }
            }
        }
        let mean = mask_image(&img, &region, Fill::Mean);
        assert_eq!(mean.get_pixel(1, 1).0, [16, 50, 200]);
    }
}
