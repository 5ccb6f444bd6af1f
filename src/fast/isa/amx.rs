//! AMX-BF16: the bf16 panel product in tiles. One `tdpbf16ps` multiplies a tile of 16 rows × 32
//! bf16 values by one of 32 × 16 (16 pairs × 16 columns), 8,192 multiply-adds accumulated in an
//! f32 tile of 16 × 16, where `vdpbf16ps` does 32. The bf16 pairs of a packed panel are the
//! layout a tile of the right-hand side takes (a step per row, 16 columns in 64 bytes), and the
//! rows of the rounded left-hand side are a multiple of 16 steps long, so both are loaded in
//! place.
//!
//! The tile registers need the operating system's permission (Linux: `arch_prctl`, asked once
//! per process) and a configuration per thread (`ldtilecfg`, loaded once per thread).
//! Intrinsics for AMX are not stable in Rust: the few instructions are written in `asm!`.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use crate::fast::gemm::{self, PanelJob, TILE_ROWS, TILE_STEPS};

/// Whether this CPU has AMX-BF16 and the operating system lets this process use the tiles.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_bf16() && os_permits_tiles())
}

/// CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
fn cpu_has_amx_bf16() -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
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
#[repr(C, align(64))]
struct Results([f32; TILE_ROWS * 32]);

/// The loop over the steps of one block: tiles 0 and 1 accumulate the products of the left-hand
/// side's first 16 rows (tile 4) by the panel's two halves (tiles 6 and 7), then go to the
/// results; `$more` adds instructions to the loop, `$store` to the stores, with their operands.
macro_rules! tile_loop {
    (($a:expr, $lda:expr, $b:expr, $steps:expr, $c:expr), [$($more:literal),*], [$($store:literal),*]
     $(, $name:ident = $kind:ident(reg) $val:expr $(=> $out:tt)?)* $(,)?) => {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            $($more,)*
            "add {a}, 64",
            "add {b}, {b_step}",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            $($store,)*
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            n = inout(reg) $steps / TILE_STEPS => _,
            lda = in(reg) $lda,
            ldb = in(reg) gemm::PANEL * 4,
            b_step = in(reg) TILE_STEPS * gemm::PANEL * 4,
            ldc = in(reg) 32 * 4usize,
            c = in(reg) $c,
            $($name = $kind(reg) $val $(=> $out)?,)*
            options(nostack),
        )
    };
}

/// The panel product in blocks of 32 rows × 32 columns: tiles 0–3 accumulate the four 16 × 16
/// quarters, 4–5 hold two tiles of the left-hand side, 6–7 two of the panel; a block of 16 rows
/// or fewer uses half of them.
///
/// # Safety
/// [`available`] is true; the job's left-hand side holds its rows rounded up to [`TILE_ROWS`] and
/// its steps are a multiple of [`TILE_STEPS`] (as `gemm::product` makes them).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    CONFIGURED.with(|configured| {
        if !configured.get() {
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack));
            configured.set(true);
        }
    });
    let mut job = job;
    let (m, _) = job.extent();
    // Written whole by the tile stores before it is read: not cleared per call.
    let mut results = std::mem::MaybeUninit::<Results>::uninit();
    for r in (0..m).step_by(TILE_ROWS) {
        let block = job.block(r, 0, TILE_ROWS, 32, 16);
        let (a, lda, b, steps) = block.operands();
        let row_bytes = lda * 4;
        let c = results.as_mut_ptr().cast::<f32>();
        // The tiles of the left-hand side's first 16 rows, and of its next 16 where the block
        // has them (at batch 1 the later blocks' maps have 16 pixels or fewer).
        if block.rows > 16 {
            tile_loop!(
                (a, row_bytes, b, steps, c),
                [
                    "tileloadd tmm5, [{a2} + {lda}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a2}, 64"
                ],
                [
                    "tilestored [{c2} + {ldc}*1], tmm2",
                    "tilestored [{c2} + {ldc}*1 + 64], tmm3"
                ],
                a2 = inout(reg) a.add(16 * lda) => _,
                c2 = in(reg) c.add(16 * 32),
            );
        } else {
            tile_loop!((a, row_bytes, b, steps, c), [], []);
        }
        gemm::finish(&block, block.rows, block.vectors, |row, v| {
            _mm512_loadu_ps(c.add(row * 32 + v * 16))
        });
    }
}
