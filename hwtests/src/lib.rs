//! Support for the hardware tests in `tests/`: finding the GPU under test or
//! the reason to skip.
//!
//! The tests run where an NVIDIA driver is installed and skip elsewhere: the
//! driver's libraries (`libcuda.so.1`, `libnvidia-ml.so.1`) are probed by
//! loading them, so a machine without a GPU passes with a printed skip reason.
//! Where the driver loads, any failure is a test failure.
//!
//! Environment:
//! * `RIGD_HWTEST_GPU` — CUDA ordinal of the card under test (default 0; the
//!   driver numbers cards after `CUDA_VISIBLE_DEVICES`).
//!
//! Nothing here changes a card setting.

use rigd_kernels::{driver_present, CudaKernels, KernelError};
use std::io::Write;

/// The CUDA ordinal under test: `RIGD_HWTEST_GPU`, default 0.
pub fn gpu_ordinal() -> Result<usize, String> {
    match std::env::var("RIGD_HWTEST_GPU") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("RIGD_HWTEST_GPU={v:?} is not a CUDA ordinal")),
        Err(_) => Ok(0),
    }
}

/// Prints why a hardware test does not run here, to stderr directly, so the
/// reason shows even when the test harness captures output.
pub fn skip(test: &str, reason: &str) {
    // A failed write to stderr leaves nothing better to report it on.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// The CUDA backend on the card under test, `Ok(None)` (after printing the
/// skip reason) where the NVIDIA driver is not installed, or the error that
/// stops the test where it is.
pub fn cuda_or_skip(test: &str) -> Result<Option<CudaKernels>, KernelError> {
    if !driver_present() {
        skip(
            test,
            "the NVIDIA driver (libcuda.so.1) is not installed on this machine",
        );
        return Ok(None);
    }
    let ordinal = gpu_ordinal().map_err(|message| KernelError::Device {
        during: "choosing the GPU",
        message,
    })?;
    let kernels = CudaKernels::new(ordinal)?;
    println!("{test}: GPU {ordinal}: {}", kernels.device_name()?);
    Ok(Some(kernels))
}
