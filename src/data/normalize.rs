//! Per-channel normalization `(x/255 - mean) / std`, with statistics from the training part only
//! (so validation and test stay unseen).

use serde::{Deserialize, Serialize};

use super::Split;

/// Per-channel mean and standard deviation of pixel values scaled to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Mean 0, std 1: batches then hold plain `x/255`.
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Statistics of every pixel of `split`, per channel (population std). A constant channel
    /// gets std 1 rather than 0, so it maps to 0 instead of dividing by zero.
    pub fn from_split(split: &Split) -> Self {
        let data = split.dataset();
        let [c, h, w] = data.dims();
        let plane = h * w;
        // Histograms are exact and make the inner loop a single increment.
        let mut hist = vec![[0u64; 256]; c];
        for k in 0..split.len() {
            let img = split.image(k);
            for (ch, hist) in hist.iter_mut().enumerate() {
                for &v in &img[ch * plane..(ch + 1) * plane] {
                    hist[usize::from(v)] += 1;
                }
            }
        }
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for h in &hist {
            let n: u64 = h.iter().sum();
            if n == 0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let (mut s, mut s2) = (0f64, 0f64);
            for (v, &count) in h.iter().enumerate() {
                let x = v as f64 / 255.0;
                s += x * count as f64;
                s2 += x * x * count as f64;
            }
            let m = s / n as f64;
            let var = (s2 / n as f64 - m * m).max(0.0);
            let sd = var.sqrt();
            mean.push(m as f32);
            std.push(if sd > 1e-12 { sd as f32 } else { 1.0 });
        }
        Normalization { mean, std }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Normalized value of byte `pixel` in channel `channel`.
    pub fn apply(&self, channel: usize, pixel: u8) -> f32 {
        (f32::from(pixel) / 255.0 - self.mean[channel]) / self.std[channel]
    }

    /// `channels x 256` table of `apply(c, v)`: batching becomes a table lookup per pixel.
    pub fn lookup_table(&self) -> Vec<f32> {
        let mut lut = Vec::with_capacity(self.channels() * 256);
        for c in 0..self.channels() {
            lut.extend((0..=255u8).map(|v| self.apply(c, v)));
        }
        lut
    }
}
