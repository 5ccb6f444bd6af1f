//! The drivers: each algorithm's data layout and how its work is cut into tasks for the thread
//! team, calling the micro-kernels through [`Kernels`](crate::fast::isa) only. The packed
//! product (`gemm`), Winograd's 3×3 convolution (`winograd`), the int8 3×3 convolution tap by
//! tap (`direct`), and patch gathering (`im2col`).

pub(crate) mod direct;
pub(crate) mod gemm;
pub(crate) mod im2col;
pub(crate) mod winograd;
