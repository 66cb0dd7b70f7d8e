//! The CUDA backend: the PTX kernels of `kernels/cuda/`, committed in
//! `kernels/ptx/`, run through the CUDA driver API (cudarc).
//!
//! Only the driver is needed at run time: the PTX is embedded in the binary
//! and JIT-compiled by the driver when [`CudaKernels::new`] loads it (PTX ISA
//! 8.2, so driver 535 or newer). `libcuda.so.1` is loaded on first use, and its
//! absence is reported as [`KernelError::DriverUnavailable`] rather than the
//! panic cudarc would raise.
//!
//! GEMM results are bit-exact with [`crate::CpuKernels`]; MLP results agree
//! within the coordinator's float tolerance (`kernels/cuda/mlp.cu` says what
//! differs and why).

use crate::error::KernelError;
use crate::gemm::check_gemm;
use crate::mlp::{Layout, LossGrad, MlpShape};
use crate::Kernels;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, DriverError,
    LaunchArgs, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::ops::Range;
use std::sync::Arc;

const GEMM_PTX: &str = include_str!("../ptx/gemm_i8.ptx");
const MLP_PTX: &str = include_str!("../ptx/mlp.ptx");

/// Side of the C tile one GEMM block computes (`TILE` in `gemm_i8.cu`).
const GEMM_TILE: usize = 64;
/// Side of a GEMM thread block (`THREADS` in `gemm_i8.cu`).
const GEMM_THREADS: u32 = 16;
/// Side of the square thread blocks of the MLP products (`T` in `mlp.cu`).
const MLP_TILE: usize = 16;
/// Threads per block of the one-dimensional MLP kernels.
const MLP_THREADS: usize = 256;
/// Elements per activation buffer that size the MLP chunk: 2^24 floats, 64 MiB.
const CHUNK_ELEMENTS: usize = 1 << 24;
/// Most samples per MLP chunk (keeps the product grids within 65535 rows).
const MAX_CHUNK: usize = 1 << 16;

/// Whether the NVIDIA driver library can be loaded on this machine.
///
/// cudarc panics on its first driver call when `libcuda` is missing; call this
/// first (as [`CudaKernels::new`] does).
#[allow(unsafe_code)]
pub fn driver_present() -> bool {
    // SAFETY: cudarc forces `unsafe` because loading a shared library runs its
    // initialisers. The candidates are cudarc's names of the NVIDIA driver
    // library, which is built to be loaded into any process; the handle is
    // dropped right away.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The functions of `mlp.ptx`.
#[derive(Debug)]
struct MlpFunctions {
    hidden: CudaFunction,
    logits: CudaFunction,
    softmax: CudaFunction,
    dhidden: CudaFunction,
    grad_w: CudaFunction,
    grad_b: CudaFunction,
    loss_sum: CudaFunction,
}

/// [`Kernels`] on one NVIDIA GPU, running the committed PTX.
///
/// One instance owns a context on its device and a stream; calls are
/// synchronous. A worker process uses one instance for its one card.
#[derive(Debug)]
pub struct CudaKernels {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    gemm: CudaFunction,
    mlp: MlpFunctions,
}

/// Maps a driver error to [`KernelError::Device`].
fn device(during: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |e| KernelError::Device {
        during,
        message: e.to_string(),
    }
}

/// Grid of the MLP products: one thread per element of a `rows x cols` output.
fn grid_2d(cols: usize, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(MLP_TILE) as u32,
            rows.div_ceil(MLP_TILE) as u32,
            1,
        ),
        block_dim: (MLP_TILE as u32, MLP_TILE as u32, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per element of `n`.
fn grid_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(MLP_THREADS) as u32, 1, 1),
        block_dim: (MLP_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches a kernel whose arguments `args` holds.
///
/// Every caller in this module pushes exactly the arguments of the kernel's
/// `extern "C"` signature, in order and with the same types (device buffers
/// as `CudaSlice`/`CudaView` of the pointee type, scalars as `i32`), with
/// buffers at least as long as the kernel indexes for the launched grid.
#[allow(unsafe_code)]
fn launch(
    mut args: LaunchArgs<'_>,
    cfg: LaunchConfig,
    during: &'static str,
) -> Result<(), KernelError> {
    // SAFETY: see above: the argument list matches the PTX signature and the
    // buffers cover every index the kernel touches for `cfg`; cudarc records
    // the buffers' use on the stream, so none is freed while the kernel runs.
    unsafe { args.launch(cfg) }
        .map(drop)
        .map_err(device(during))
}

impl CudaKernels {
    /// Opens GPU `ordinal` (as the driver numbers them after
    /// `CUDA_VISIBLE_DEVICES`) and loads the PTX.
    ///
    /// Returns [`KernelError::DriverUnavailable`] when `libcuda` cannot be
    /// loaded, and [`KernelError::Device`] when the device does not exist or
    /// the driver cannot JIT the PTX (driver older than 535).
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_present() {
            return Err(KernelError::DriverUnavailable);
        }
        let ctx = CudaContext::new(ordinal).map_err(device("opening the GPU"))?;
        let stream = ctx.default_stream();
        let during = "loading the PTX (PTX ISA 8.2 needs driver 535 or newer)";
        let gemm_module = ctx
            .load_module(Ptx::from_src(GEMM_PTX))
            .map_err(device(during))?;
        let mlp_module = ctx
            .load_module(Ptx::from_src(MLP_PTX))
            .map_err(device(during))?;
        let during = "looking up a kernel in the PTX";
        let mlp_fn = |name| mlp_module.load_function(name).map_err(device(during));
        let mlp = MlpFunctions {
            hidden: mlp_fn("mlp_hidden")?,
            logits: mlp_fn("mlp_logits")?,
            softmax: mlp_fn("mlp_softmax")?,
            dhidden: mlp_fn("mlp_dhidden")?,
            grad_w: mlp_fn("mlp_grad_w")?,
            grad_b: mlp_fn("mlp_grad_b")?,
            loss_sum: mlp_fn("mlp_loss_sum")?,
        };
        let gemm = gemm_module
            .load_function("gemm_i8")
            .map_err(device(during))?;
        Ok(Self {
            ctx,
            stream,
            gemm,
            mlp,
        })
    }

    /// The device's name as the driver reports it, e.g. "NVIDIA GeForce RTX 3090".
    pub fn device_name(&self) -> Result<String, KernelError> {
        self.ctx.name().map_err(device("reading the device name"))
    }

    fn upload<T: DeviceRepr>(
        &self,
        host: &[T],
        what: &'static str,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(host).map_err(device(what))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .alloc_zeros(len)
            .map_err(device("allocating device memory"))
    }

    fn download<T: DeviceRepr>(
        &self,
        dev: &CudaSlice<T>,
        host: &mut [T],
    ) -> Result<(), KernelError> {
        let during = "copying results from the device";
        self.stream.memcpy_dtoh(dev, host).map_err(device(during))?;
        self.stream.synchronize().map_err(device(during))
    }
}

/// `buf[range]` as a kernel argument.
fn view(
    buf: &mut CudaSlice<f64>,
    range: Range<usize>,
) -> Result<CudaViewMut<'_, f64>, KernelError> {
    let actual = buf.len();
    let expected = range.end;
    buf.try_slice_mut(range).ok_or(KernelError::LengthMismatch {
        what: "device gradient",
        expected,
        actual,
    })
}

impl CudaKernels {
    /// Loss sum and gradient sums in f64 over a non-empty, validated batch,
    /// in chunks of at most [`MAX_CHUNK`] samples (the launch sequence of
    /// `mlp.cu`: forward, softmax, backward, then the batch sums, which add
    /// into f64 accumulators that persist across chunks).
    fn mlp_sums(
        &self,
        l: &Layout,
        params: &[f32],
        x: &[f32],
        y: &[u32],
    ) -> Result<(f64, Vec<f64>), KernelError> {
        let widest = l.input.max(l.hidden).max(l.output);
        let chunk = (CHUNK_ELEMENTS / widest).clamp(1, MAX_CHUNK).min(y.len());
        let params_dev = self.upload(params, "copying parameters to the device")?;
        let mut x_dev = self.zeros::<f32>(chunk * l.input)?;
        let mut y_dev = self.zeros::<u32>(chunk)?;
        let mut act = self.zeros::<f32>(chunk * l.hidden)?;
        let mut logits = self.zeros::<f32>(chunk * l.output)?;
        let mut dh = self.zeros::<f32>(chunk * l.hidden)?;
        let mut loss = self.zeros::<f64>(chunk)?;
        let mut grad = self.zeros::<f64>(l.total)?;
        let mut loss_acc = self.zeros::<f64>(1)?;
        // Dimensions are at most MLP_MAX_DIM (4096) and a chunk at most
        // MAX_CHUNK samples: the casts to i32 are lossless.
        let (input, hidden, output) = (l.input as i32, l.hidden as i32, l.output as i32);
        let f = &self.mlp;
        let during = "copying samples to the device";
        for (xs, ys) in x.chunks(chunk * l.input).zip(y.chunks(chunk)) {
            let rows = ys.len();
            let nb = rows as i32;
            self.stream
                .memcpy_htod(xs, &mut x_dev)
                .map_err(device(during))?;
            self.stream
                .memcpy_htod(ys, &mut y_dev)
                .map_err(device(during))?;

            let mut a = self.stream.launch_builder(&f.hidden);
            a.arg(&params_dev).arg(&x_dev).arg(&mut act);
            a.arg(&nb).arg(&input).arg(&hidden);
            launch(a, grid_2d(l.hidden, rows), "running mlp_hidden")?;

            let mut a = self.stream.launch_builder(&f.logits);
            a.arg(&params_dev).arg(&act).arg(&mut logits);
            a.arg(&nb).arg(&input).arg(&hidden).arg(&output);
            launch(a, grid_2d(l.output, rows), "running mlp_logits")?;

            let mut a = self.stream.launch_builder(&f.softmax);
            a.arg(&mut logits)
                .arg(&y_dev)
                .arg(&mut loss)
                .arg(&nb)
                .arg(&output);
            launch(a, grid_1d(rows), "running mlp_softmax")?;

            let mut a = self.stream.launch_builder(&f.dhidden);
            a.arg(&params_dev).arg(&logits).arg(&act).arg(&mut dh);
            a.arg(&nb).arg(&input).arg(&hidden).arg(&output);
            launch(a, grid_2d(l.hidden, rows), "running mlp_dhidden")?;

            let mut g = view(&mut grad, l.w2..l.b2)?;
            let mut a = self.stream.launch_builder(&f.grad_w);
            a.arg(&logits).arg(&act).arg(&mut g);
            a.arg(&nb).arg(&output).arg(&hidden);
            launch(a, grid_2d(l.hidden, l.output), "running mlp_grad_w for W2")?;

            let mut g = view(&mut grad, 0..l.b1)?;
            let mut a = self.stream.launch_builder(&f.grad_w);
            a.arg(&dh).arg(&x_dev).arg(&mut g);
            a.arg(&nb).arg(&hidden).arg(&input);
            launch(a, grid_2d(l.input, l.hidden), "running mlp_grad_w for W1")?;

            let mut g = view(&mut grad, l.b2..l.total)?;
            let mut a = self.stream.launch_builder(&f.grad_b);
            a.arg(&logits).arg(&mut g).arg(&nb).arg(&output);
            launch(a, grid_1d(l.output), "running mlp_grad_b for b2")?;

            let mut g = view(&mut grad, l.b1..l.w2)?;
            let mut a = self.stream.launch_builder(&f.grad_b);
            a.arg(&dh).arg(&mut g).arg(&nb).arg(&hidden);
            launch(a, grid_1d(l.hidden), "running mlp_grad_b for b1")?;

            let mut a = self.stream.launch_builder(&f.loss_sum);
            a.arg(&loss).arg(&mut loss_acc).arg(&nb);
            let one = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(a, one, "running mlp_loss_sum")?;
        }
        let mut loss_sum = [0.0f64];
        self.download(&loss_acc, &mut loss_sum)?;
        let mut grad_sum = vec![0.0f64; l.total];
        self.download(&grad, &mut grad_sum)?;
        Ok((loss_sum[0], grad_sum))
    }
}

impl Kernels for CudaKernels {
    fn gemm_i8(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[i8],
        b: &[i8],
        c: &mut [i32],
    ) -> Result<(), KernelError> {
        check_gemm(m, n, k, a, b, c)?;
        if c.is_empty() {
            return Ok(());
        }
        if k == 0 {
            c.fill(0);
            return Ok(());
        }
        let a_dev = self.upload(a, "copying A to the device")?;
        let b_dev = self.upload(b, "copying B to the device")?;
        let mut c_dev = self.zeros::<i32>(c.len())?;
        // Dimensions are at most GEMM_MAX_DIM (4096): the casts are lossless.
        let (m32, n32, k32) = (m as i32, n as i32, k as i32);
        let mut args = self.stream.launch_builder(&self.gemm);
        args.arg(&a_dev)
            .arg(&b_dev)
            .arg(&mut c_dev)
            .arg(&m32)
            .arg(&n32)
            .arg(&k32);
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(GEMM_TILE) as u32,
                m.div_ceil(GEMM_TILE) as u32,
                1,
            ),
            block_dim: (GEMM_THREADS, GEMM_THREADS, 1),
            shared_mem_bytes: 0,
        };
        launch(args, cfg, "running gemm_i8")?;
        self.download(&c_dev, c)
    }

    fn mlp_loss_grad(
        &self,
        shape: &MlpShape,
        params: &[f32],
        x: &[f32],
        y: &[u32],
    ) -> Result<LossGrad, KernelError> {
        let layout = Layout::new(shape)?;
        let samples = layout.check_batch(params, x, y)?;
        if samples == 0 {
            return Ok(LossGrad {
                loss_sum: 0.0,
                grad_sum: vec![0.0; layout.total],
                samples,
            });
        }
        let (loss_sum, grad) = self.mlp_sums(&layout, params, x, y)?;
        Ok(LossGrad {
            loss_sum: loss_sum as f32,
            grad_sum: grad.iter().map(|&g| g as f32).collect(),
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_without_a_driver_is_an_error_not_a_panic() {
        let result = CudaKernels::new(0);
        if driver_present() {
            println!("libcuda is present: only checking that new(0) returned");
        } else {
            assert_eq!(result.err(), Some(KernelError::DriverUnavailable));
        }
    }

    #[test]
    fn a_missing_device_is_an_error_not_a_panic() {
        assert!(CudaKernels::new(1 << 20).is_err());
    }

    #[test]
    fn embedded_ptx_targets_compute_61_at_isa_8_2() {
        for ptx in [GEMM_PTX, MLP_PTX] {
            let lines: Vec<&str> = ptx.lines().collect();
            assert!(lines.contains(&".version 8.2"));
            assert!(lines.contains(&".target sm_61"));
        }
        assert!(GEMM_PTX.contains(".entry gemm_i8("));
        for name in [
            "mlp_hidden",
            "mlp_logits",
            "mlp_softmax",
            "mlp_dhidden",
            "mlp_grad_w",
            "mlp_grad_b",
            "mlp_loss_sum",
        ] {
            assert!(MLP_PTX.contains(&format!(".entry {name}(")), "{name}");
        }
    }
}
