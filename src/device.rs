//! Backend selection at run time (`--device`). The CPU backend (burn's `flex`) is always
//! built; GPU backends exist only when their cargo feature was enabled.

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's pure-Rust CPU backend.
    Cpu,
    /// wgpu's best adapter (Vulkan, Metal or DX12), optionally the n-th discrete GPU.
    Wgpu(Option<usize>),
    /// wgpu forced onto Vulkan.
    Vulkan(Option<usize>),
    /// CUDA device n.
    Cuda(usize),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected cpu, wgpu, wgpu:N, vulkan, vulkan:N or cuda:N")]
    Unknown(String),
    #[error(
        "device '{device}' needs the `{feature}` feature: rebuild with `cargo build --release --features {feature}`"
    )]
    NotBuilt {
        device: String,
        feature: &'static str,
    },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((n, i)) => (
                n.to_string(),
                Some(
                    i.parse::<usize>()
                        .map_err(|_| DeviceError::Unknown(s.to_string()))?,
                ),
            ),
            None => (lower.clone(), None),
        };
        match name.as_str() {
            "cpu" | "flex" if index.is_none() => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu(index)),
            "vulkan" => Ok(DeviceChoice::Vulkan(index)),
            "cuda" => Ok(DeviceChoice::Cuda(index.unwrap_or(0))),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Wgpu(None) => f.write_str("wgpu"),
            DeviceChoice::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceChoice::Vulkan(None) => f.write_str("vulkan"),
            DeviceChoice::Vulkan(Some(i)) => write!(f, "vulkan:{i}"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    pub fn is_gpu(self) -> bool {
        !matches!(self, DeviceChoice::Cpu)
    }

    /// The burn device for inference; call `.autodiff()` on it for training.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu(i) => Ok(Device::wgpu(gpu_kind(i))),
            #[cfg(feature = "vulkan")]
            DeviceChoice::Vulkan(i) => Ok(Device::vulkan(gpu_kind(i))),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(i) => Ok(Device::cuda(i)),
            #[allow(unreachable_patterns)]
            other => Err(DeviceError::NotBuilt {
                device: other.to_string(),
                feature: match other {
                    DeviceChoice::Vulkan(_) => "vulkan",
                    DeviceChoice::Cuda(_) => "cuda",
                    _ => "wgpu",
                },
            }),
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn gpu_kind(index: Option<usize>) -> burn::tensor::DeviceKind {
    match index {
        Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
        None => burn::tensor::DeviceKind::DefaultDevice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("CUDA:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("wgpu".parse(), Ok(DeviceChoice::Wgpu(None)));
        assert_eq!("vulkan:0".parse(), Ok(DeviceChoice::Vulkan(Some(0))));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_always_builds() {
        assert!(DeviceChoice::Cpu.device().is_ok());
    }
}
