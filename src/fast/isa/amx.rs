//! AMX-BF16 and AMX-INT8: the bf16 and int8 panel products in tiles. One `tdpbf16ps`
//! multiplies a tile of 16 rows × 32 bf16 values by one of 32 × 16 (16 pairs × 16 columns),
//! 8,192 multiply-adds accumulated in an f32 tile of 16 × 16, where `vdpbf16ps` does 32; one
//! `tdpbusd` multiplies 16 rows × 64 uint8 values by 64 × 16 int8 ones (16 quads × 16 columns),
//! 16,384 multiply-adds into an i32 tile. The pairs or quads of a packed panel are the layout a
//! tile of the right-hand side takes (a step per row, 16 columns in 64 bytes), and the rows of
//! the left-hand side are a multiple of 16 steps long, so both are loaded in place.
//!
//! The tile registers need the operating system's permission (Linux: `arch_prctl`, asked once
//! per process) and a configuration per thread (`ldtilecfg`, loaded once per thread).
//! Intrinsics for AMX are not stable in Rust: the few instructions are written in `asm!`.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::avx512_vnni::rescale;
use crate::fast::ukernel::direct::{BlockRows, TapJob};
use crate::fast::ukernel::gemm::{self, PanelJob, RegisterBlock, TILE_ROWS, TILE_STEPS};

/// The products AMX has tiles for.
#[derive(Clone, Copy, Debug)]
pub(super) enum TileKind {
    Bf16,
    Int8,
}

/// Whether this CPU has the tiles of `kind` and the operating system lets this process use the tiles.
pub(super) fn available(kind: TileKind) -> bool {
    // The permission covers every kind; it is asked only where the CPU has the kind.
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    cpu_has(kind) && *PERMITTED.get_or_init(os_permits_tiles)
}

/// CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 25 AMX-INT8, bit 24 AMX-TILE.
fn cpu_has(kind: TileKind) -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let bit = match kind {
        TileKind::Bf16 => 22,
        TileKind::Int8 => 25,
    };
    edx & (1 << bit) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// which it grants to the whole process.
#[cfg(target_os = "linux")]
fn os_permits_tiles() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the system call reads two integers and changes no memory of this process.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Elsewhere the tiles are not used.
#[cfg(not(target_os = "linux"))]
fn os_permits_tiles() -> bool {
    false
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    Config(c)
};

thread_local! {
    /// Whether this thread has loaded [`CONFIG`].
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// 32 rows × 32 columns of f32 results, as four tiles store them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Results([f32; TILE_ROWS * 32]);

/// Two blocks' results: the tiles store one block's into one while the epilogue of the block
/// before reads the other (see [`Pipeline`]). Written whole by the tile stores before they are
/// read: not cleared.
struct ResultBuffers([std::mem::MaybeUninit<Results>; 2]);

impl ResultBuffers {
    fn new() -> Self {
        Self([std::mem::MaybeUninit::uninit(); 2])
    }

    fn at(&mut self, i: usize) -> *mut f32 {
        self.0[i % 2].as_mut_ptr().cast()
    }
}

/// The order of each block's work on the tiles: its products are issued (`accumulate`), then
/// the epilogue of the block before it ([`Pipeline::take`]) runs on the vector units while the
/// tiles compute, then the tiles are stored ([`Pipeline::push`]). A tile product runs for
/// hundreds of cycles after it is issued; placed after it, the previous block's epilogue (and
/// the next block's bookkeeping) overlaps it instead of waiting for it, as oneDNN interleaves
/// its stores with its tile products.
struct Pipeline<P> {
    buffers: ResultBuffers,
    /// The block whose results wait in a buffer, and which buffer.
    pending: Option<(P, usize)>,
    blocks: usize,
}

impl<P> Pipeline<P> {
    fn new() -> Self {
        Self {
            buffers: ResultBuffers::new(),
            pending: None,
            blocks: 0,
        }
    }

    /// The block whose results wait for its epilogue, and its results.
    fn take(&mut self) -> Option<(P, *const f32)> {
        let (block, i) = self.pending.take()?;
        Some((block, self.buffers.at(i)))
    }

    /// Where the tiles store `block`'s results, which then wait for [`Pipeline::take`]: the
    /// buffer that the block before it does not use.
    fn push(&mut self, block: P) -> *mut f32 {
        let i = self.blocks;
        self.blocks += 1;
        self.pending = Some((block, i));
        self.buffers.at(i)
    }
}

/// Tiles 0 and 1 accumulate the products (`$op`, `tdpbf16ps` or `tdpbusd`) of 16 rows of the
/// left-hand side (tile 4, rows `$lda` bytes apart) by the panel's two halves (tiles 6 and 7)
/// over the block's steps; `$more` adds instructions to the loop, and `$zero` tiles to clear,
/// with their operands. Nothing is stored: the tiles keep the sums for [`store_tiles`].
macro_rules! tile_loop {
    ($op:literal, ($a:expr, $lda:expr, $b:expr, $steps:expr), [$($zero:literal),*], [$($more:expr),*]
     $(, $name:ident = $kind:ident(reg) $val:expr $(=> $out:tt)?)* $(,)?) => {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            $($zero,)*
            "2:",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            concat!($op, " tmm0, tmm4, tmm6"),
            concat!($op, " tmm1, tmm4, tmm7"),
            $($more,)*
            "add {a}, 64",
            "add {b}, {b_step}",
            "dec {n}",
            "jnz 2b",
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            n = inout(reg) $steps / TILE_STEPS => _,
            lda = in(reg) $lda,
            ldb = in(reg) gemm::PANEL * 4,
            b_step = in(reg) TILE_STEPS * gemm::PANEL * 4,
            $($name = $kind(reg) $val $(=> $out)?,)*
            options(nostack),
        )
    };
}

/// [`tile_loop`] over a block's first 16 rows, and with `halves` over its next 16 too (tile 5
/// into tiles 2 and 3).
macro_rules! accumulate {
    ($op:literal, $a:expr, $lda:expr, $b:expr, $steps:expr, $halves:expr) => {
        if $halves {
            tile_loop!(
                $op,
                ($a, $lda, $b, $steps),
                ["tilezero tmm2", "tilezero tmm3"],
                [
                    "tileloadd tmm5, [{a2} + {lda}*1]",
                    concat!($op, " tmm2, tmm5, tmm6"),
                    concat!($op, " tmm3, tmm5, tmm7"),
                    "add {a2}, 64"
                ],
                a2 = inout(reg) $a.add(16 * $lda / 4) => _,
            )
        } else {
            tile_loop!($op, ($a, $lda, $b, $steps), [], [])
        }
    };
}

/// Stores tiles 0 and 1 (and 2 and 3 with `halves`) as 16 (or 32) rows × 32 results at `c`.
///
/// # Safety
/// The CPU runs AMX and the tiles hold a block's sums; `c` is a [`Results`].
#[inline(always)]
unsafe fn store_tiles(c: *mut f32, halves: bool) {
    // SAFETY: the caller's contract: the stores write inside the 32 × 32 results at `c`.
    unsafe {
        asm!(
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            c = in(reg) c,
            ldc = in(reg) 32 * 4usize,
            options(nostack),
        );
        if halves {
            asm!(
                "tilestored [{c} + {ldc}*1], tmm2",
                "tilestored [{c} + {ldc}*1 + 64], tmm3",
                c = in(reg) c.add(16 * 32),
                ldc = in(reg) 32 * 4usize,
                options(nostack),
            );
        }
    }
}

/// Loads the tile configuration on this thread, once.
unsafe fn configure() {
    // SAFETY: the caller's contract: the CPU has AMX and Linux granted the tile state; CONFIG is a valid 64-byte tile configuration.
    unsafe {
        CONFIGURED.with(|configured| {
            if !configured.get() {
                asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack));
                configured.set(true);
            }
        });
    }
}

/// The panel product with `$op` in blocks of 32 rows × 32 columns: tiles 0–3 accumulate the
/// four 16 × 16 quarters, 4–5 hold two tiles of the left-hand side, 6–7 two of the panel; a
/// block of 16 rows or fewer (at batch 1 the later blocks' maps have 16 pixels or fewer) uses
/// half of them. Each block's epilogue runs while the tiles compute the next ([`Pipeline`]).
/// `$result(block, row, vector, results)` reads one vector of results as f32.
macro_rules! tile_product {
    ($op:literal, $job:expr, $result:expr) => {{
        configure();
        let mut job = $job;
        let (m, _) = job.extent();
        let result = $result;
        let epilogue = |block: RegisterBlock<u32>, c: *const f32| {
            gemm::finish(&block, block.rows, block.vectors, |row, v| {
                result(&block, row, v, c.add(row * 32 + v * 16))
            })
        };
        let mut pipeline = Pipeline::new();
        for r in (0..m).step_by(TILE_ROWS) {
            let block = job.block(r, 0, TILE_ROWS, 32, 16);
            let (a, lda, b, steps) = block.operands();
            let halves = block.rows > 16;
            accumulate!($op, a, lda * 4, b, steps, halves);
            if let Some((previous, c)) = pipeline.take() {
                epilogue(previous, c);
            }
            store_tiles(pipeline.push(block), halves);
        }
        if let Some((last, c)) = pipeline.take() {
            epilogue(last, c);
        }
    }};
}

/// The bf16 panel product (see [`tile_product`]).
///
/// # Safety
/// [`available`] for bf16; the job's left-hand side holds its rows rounded up to [`TILE_ROWS`]
/// and its steps are a multiple of [`TILE_STEPS`] (as `gemm::product` makes them).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    // SAFETY: the caller's contract (`available` for bf16, rows and steps padded as the tiles read them); the tile loads read 16 rows of 64 bytes inside the padded left-hand side and panel, and the stores write a 32 × 32 `Results`.
    unsafe {
        tile_product!(
            "tdpbf16ps",
            job,
            |_: &RegisterBlock<u32>, _, _, p: *const f32| { _mm512_loadu_ps(p) }
        );
    }
}

/// The int8 panel product (see [`tile_product`]): the i32 results scaled to f32 by their
/// columns' scales.
///
/// # Safety
/// [`available`] for int8; the job is an int8 one (its scales given), its left-hand side
/// holds its rows rounded up to [`TILE_ROWS`] and its steps are a multiple of [`TILE_STEPS`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn product_panel_int8(job: PanelJob<u32>) {
    // SAFETY: as in `product_panel`, with AMX-INT8 and an int8 job's scales.
    unsafe {
        tile_product!(
            "tdpbusd",
            job,
            |block: &RegisterBlock<u32>, _, v: usize, p: *const f32| {
                rescale(_mm512_loadu_si512(p.cast()), block.col_scales().add(v * 16))
            }
        );
    }
}

/// A 3×3 convolution's job (see [`TapJob`]) in blocks of two halves of 16 positions × 32
/// columns, each half starting at an output ([`TapJob::tile_blocks`]: the tiles compute no
/// border at 32 and 16 pixels a row, and never the rows between images): per step of 64 bytes
/// of each tap, tiles 4 and 5 load the two halves at that tap's offset (consecutive bordered
/// pixels, `depth` bytes apart), 6 and 7 the panel's 16 steps, and tiles 0–3 accumulate in
/// i32. Where each block's rows go ([`TapJob::tile_rows`]) is worked out, and the block
/// before it stored, while the tiles compute it ([`Pipeline`]).
///
/// # Safety
/// [`available`] for int8.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn direct_int8(job: TapJob) {
    // SAFETY: the caller's contract (`available` for int8); `TapJob::input` checked that each block's rows at every tap's offset lie inside the bordered input, the panel holds 16 steps per offset, and the stores write a 32 × 32 `Results`.
    unsafe {
        configure();
        let mut job = job;
        let (depth, offsets) = job.offsets();
        // Two blocks' rows: the one computed and the one whose results wait for the epilogue.
        let mut rows: [Option<BlockRows>; 2] = [None, None];
        let mut pipeline = Pipeline::new();
        let blocks: Vec<(usize, Option<usize>)> = job.tile_blocks().collect();
        for (i, &halves) in blocks.iter().enumerate() {
            let a = job.input(halves.0);
            // A block without a second half computes its first twice: the rows have no output.
            let second = job.input(halves.1.unwrap_or(halves.0));
            for p in 0..job.panels() {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "mov {t}, qword ptr [{offs}]",
                    "add {t}, {a}",
                    "tileloadd tmm4, [{t} + {lda}*1]",
                    "tileloadd tmm6, [{b} + {ldb}*1]",
                    "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "add {t}, {second}",
                    "tileloadd tmm5, [{t} + {lda}*1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    "tdpbusd tmm3, tmm5, tmm7",
                    "add {offs}, 8",
                    "add {b}, {b_step}",
                    "dec {n}",
                    "jnz 2b",
                    t = out(reg) _,
                    offs = inout(reg) offsets.as_ptr() => _,
                    a = in(reg) a,
                    b = inout(reg) job.panel(p) => _,
                    n = inout(reg) offsets.len() => _,
                    lda = in(reg) depth,
                    second = in(reg) second.offset_from(a),
                    ldb = in(reg) gemm::PANEL * 4,
                    b_step = in(reg) TILE_STEPS * gemm::PANEL * 4,
                    options(nostack),
                );
                if let Some((previous, c)) = pipeline.take() {
                    store_block(&mut job, &rows, previous, c);
                }
                if p == 0 {
                    rows[i % 2] = Some(job.tile_rows(halves));
                }
                store_tiles(pipeline.push((i % 2, p)), true);
            }
        }
        if let Some((last, c)) = pipeline.take() {
            store_block(&mut job, &rows, last, c);
        }
    }
}

/// Stores the results `c` of block `(r, p)` of a 3×3 convolution: its rows `rows[r]`, panel `p`.
///
/// # Safety
/// The CPU runs AVX-512F; `c` holds the block's 32 × 32 sums, stored by the tiles.
#[inline(always)]
unsafe fn store_block(
    job: &mut TapJob,
    rows: &[Option<BlockRows>; 2],
    (r, p): (usize, usize),
    c: *const f32,
) {
    // SAFETY: the caller's contract: AVX-512F, and 32 × 32 sums at `c`.
    unsafe {
        let rows = rows[r].as_ref().expect("a stored block's rows");
        let cols = job.col_scales(p);
        job.store(rows, p, 2, |r, v| {
            let sums = _mm512_loadu_si512(c.add(r * 32 + v * 16).cast());
            rescale(sums, cols.add(v * 16))
        });
    }
}
