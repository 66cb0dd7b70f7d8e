//! Kernel error type.

use std::fmt;

/// Errors reported by kernels and their helpers instead of panicking.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer does not have the length its shape requires.
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// Length the shape requires.
        expected: usize,
        /// Length supplied.
        actual: usize,
    },
    /// A dimension lies outside its allowed range.
    DimensionOutOfRange {
        /// Which dimension.
        what: &'static str,
        /// Value supplied.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// The model has more parameters than allowed.
    TooManyParams {
        /// Parameter count of the shape.
        count: u64,
        /// Largest allowed count.
        max: u64,
    },
    /// A label is not a valid class index.
    LabelOutOfRange {
        /// Sample index within the batch.
        index: usize,
        /// Label supplied.
        label: u32,
        /// Number of classes (labels must be below this).
        classes: u32,
    },
    /// The batch has more samples than fit in a `u32`.
    BatchTooLarge {
        /// Number of samples supplied.
        samples: usize,
    },
    /// A mean was requested over zero samples.
    EmptyBatch,
    /// The NVIDIA driver library (`libcuda.so.1`) cannot be loaded, so no GPU
    /// backend can run on this machine.
    DriverUnavailable,
    /// A CUDA driver call failed. After a launch failure the CUDA context may
    /// be unusable: the worker process should exit and be restarted.
    Device {
        /// What the backend was doing.
        during: &'static str,
        /// The driver's error.
        message: String,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LengthMismatch {
                what,
                expected,
                actual,
            } => write!(f, "{what}: expected {expected} elements, got {actual}"),
            Self::DimensionOutOfRange {
                what,
                value,
                min,
                max,
            } => write!(f, "{what} = {value} is outside {min}..={max}"),
            Self::TooManyParams { count, max } => {
                write!(
                    f,
                    "model has {count} parameters, more than the limit of {max}"
                )
            }
            Self::LabelOutOfRange {
                index,
                label,
                classes,
            } => write!(
                f,
                "label {label} of sample {index} is not below the class count {classes}"
            ),
            Self::BatchTooLarge { samples } => {
                write!(f, "batch of {samples} samples does not fit in a u32")
            }
            Self::EmptyBatch => f.write_str("batch is empty"),
            Self::DriverUnavailable => f.write_str(
                "the NVIDIA driver library libcuda.so.1 cannot be loaded: \
                 install the NVIDIA driver or use the CPU backend",
            ),
            Self::Device { during, message } => {
                write!(f, "CUDA error while {during}: {message}")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// Checks that `actual` equals `expected`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_readable_messages() {
        let e = KernelError::LengthMismatch {
            what: "a",
            expected: 6,
            actual: 5,
        };
        assert_eq!(e.to_string(), "a: expected 6 elements, got 5");
        let e = KernelError::DimensionOutOfRange {
            what: "m",
            value: 5000,
            min: 0,
            max: 4096,
        };
        assert_eq!(e.to_string(), "m = 5000 is outside 0..=4096");
        let boxed: Box<dyn std::error::Error> = Box::new(KernelError::EmptyBatch);
        assert_eq!(boxed.to_string(), "batch is empty");
        let e = KernelError::Device {
            during: "launching gemm_i8",
            message: "CUDA_ERROR_LAUNCH_FAILED".into(),
        };
        assert_eq!(
            e.to_string(),
            "CUDA error while launching gemm_i8: CUDA_ERROR_LAUNCH_FAILED"
        );
        assert!(KernelError::DriverUnavailable
            .to_string()
            .contains("libcuda.so.1"));
    }
}
