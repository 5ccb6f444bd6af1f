//! Memory and its sizes: the buffers a pass reuses, per-thread scratch, and how work is cut to
//! fit the caches and the threads (tiles of rows, parts per thread, groups of images sized to
//! the L2 caches).

use std::cell::RefCell;
use std::sync::Mutex;

use crate::fast::mat::MatMut;

/// Most pixel rows one task gathers and multiplies at once: keeps a tile of gathered inputs
/// within a core's L2 cache.
pub(crate) const MAX_TILE_ROWS: usize = 240;

/// Most images one pass through the network takes: larger batches run in passes of this many,
/// which keeps a block's matrix small enough to stay in the caches (and memory bounded).
pub(crate) const MAX_IMAGES_PER_PASS: usize = 16;

/// Bytes of a block's matrices (its output and its bottlenecks') that one group of images fills
/// at most, unless a single image needs more (see [`group_size`]): twice the L2 caches of the
/// threads together. Every layer reads the whole matrix again; past this size those reads come
/// from the shared L3 cache or memory, and below it the layers' weights are read once per group
/// for fewer images (on 2 threads with 2 MiB of L2 each, torchvision's densenet121 at 224×224,
/// batch 16: 8 MiB ran 48 img/s, 2 MiB 40, 20 MiB 47, 80 MiB (each block's pass whole) 36–40).
pub(crate) fn group_bytes() -> usize {
    2 * l2_bytes() * rayon::current_num_threads().max(1)
}

/// The L2 cache of one core in bytes, as Linux describes CPU 0's caches (1 MiB where it does
/// not).
pub(crate) fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        let read = |index: usize, file: &str| {
            let path = format!("/sys/devices/system/cpu/cpu0/cache/index{index}/{file}");
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        (0..8)
            .find(|&i| {
                read(i, "level").as_deref() == Some("2")
                    && read(i, "type").as_deref() != Some("Instruction")
            })
            .and_then(|i| read(i, "size"))
            .and_then(|size| parse_cache_size(&size))
            .unwrap_or(1 << 20)
    })
}

/// A cache size as sysfs writes it (`2048K`, `1M`, `512`) in bytes.
fn parse_cache_size(size: &str) -> Option<usize> {
    let (digits, unit) = match size.as_bytes().last()? {
        b'K' => (&size[..size.len() - 1], 1 << 10),
        b'M' => (&size[..size.len() - 1], 1 << 20),
        b'G' => (&size[..size.len() - 1], 1 << 30),
        _ => (size, 1),
    };
    digits.parse::<usize>().ok().map(|n| n * unit)
}

/// Images per group of a block whose matrices take `per_image` bytes per image, in a pass of
/// `n` images, for groups of at most `budget` bytes.
pub(crate) fn group_size(budget: usize, per_image: usize, n: usize) -> usize {
    (budget / per_image.max(1)).clamp(1, n.max(1))
}

/// Bytes of a cache line, to which the buffers that the kernels read in whole lines are
/// aligned: an AMX tile's rows, a 512-bit vector. A row of 64 bytes that straddles two lines
/// costs two: measured on a Sapphire Rapids Xeon, the int8 3×3 tile loop ran 2.6× slower with
/// its rows 16 bytes off a line than on one.
pub(crate) const LINE: usize = 64;

/// The `len` values of `room` (grown as needed; contents unspecified, as `room` held them)
/// that start on a cache line: `room` is kept [`LINE`] bytes longer than asked, and the slice
/// starts at its first element on a line.
pub(crate) fn aligned<T: Copy + Default>(room: &mut Vec<T>, len: usize) -> &mut [T] {
    let slack = LINE / size_of::<T>();
    if room.len() < len + slack {
        room.resize(len + slack, T::default());
    }
    let start = room.as_ptr().align_offset(LINE);
    assert!(
        start <= slack,
        "aligned: an element type that divides no line"
    );
    &mut room[start..start + len]
}

/// Values that start on a cache line (see [`aligned`]), for the packed weights the kernels
/// read in whole lines.
#[derive(Debug)]
pub(crate) struct AlignedVec<T> {
    room: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> AlignedVec<T> {
    /// `len` default values.
    pub(crate) fn new(len: usize) -> Self {
        Self::in_room(Vec::new(), len)
    }

    /// `len` values in `room` (grown as needed; contents unspecified, as `room` held them).
    pub(crate) fn in_room(mut room: Vec<T>, len: usize) -> Self {
        let start = {
            let values = aligned(&mut room, len);
            values.as_ptr() as usize - room.as_ptr() as usize
        } / size_of::<T>().max(1);
        Self { room, start, len }
    }

    /// The room, for another [`AlignedVec::in_room`].
    pub(crate) fn into_room(self) -> Vec<T> {
        self.room
    }
}

impl<T: Copy + Default> Clone for AlignedVec<T> {
    /// A copy in a new allocation, aligned again (a clone of the room could lie elsewhere on
    /// its line).
    fn clone(&self) -> Self {
        let mut copy = Self::new(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T> std::ops::Deref for AlignedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.room[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.room[self.start..self.start + self.len]
    }
}

thread_local! {
    /// Per-thread room for gathered patches and activated inputs, reused across tiles.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The matrices of finished passes, kept for the next ones: a pass takes its large matrices from
/// here rather than from fresh allocations, which the system zeroes page by page as they are
/// first written (a few percent of a pass at 224×224). A clone starts with none.
#[derive(Debug, Default)]
pub(crate) struct Buffers(Mutex<Vec<Vec<f32>>>);

impl Clone for Buffers {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Buffers {
    /// `len` floats from a cache line (contents unspecified): in the smallest kept buffer that
    /// holds them, else the largest one grown, else a new one.
    pub(crate) fn take(&self, len: usize) -> AlignedVec<f32> {
        let room = len + LINE / size_of::<f32>();
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= room)
            .min_by_key(|&i| kept[i].capacity());
        let pick = fits.or_else(|| (0..kept.len()).max_by_key(|&i| kept[i].capacity()));
        let buffer = pick.map_or_else(Vec::new, |i| kept.swap_remove(i));
        drop(kept);
        AlignedVec::in_room(buffer, len)
    }

    /// Keeps `buffer` for a later [`Buffers::take`].
    pub(crate) fn give(&self, buffer: AlignedVec<f32>) {
        let room = buffer.into_room();
        if room.capacity() > 0 {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(room);
        }
    }
}

/// Runs `f` on this thread's scratch space of `len` floats (contents unspecified), which
/// starts on a cache line.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| f(aligned(&mut s.borrow_mut(), len)))
}

/// Rows per tile for `rows` rows: see [`part_size`], with at most [`MAX_TILE_ROWS`] per tile.
pub(crate) fn tile_rows(rows: usize) -> usize {
    part_size(rows, MAX_TILE_ROWS)
}

/// The first `rows` rows of `dst` cut into tiles of [`tile_rows`] rows: each tile's first row,
/// its rows and its part of `dst`.
pub(crate) fn row_tiles(dst: MatMut, rows: usize) -> Vec<(usize, usize, MatMut)> {
    let (tile, ld) = (tile_rows(rows), dst.ld);
    let tiles = (0..rows).step_by(tile).map(|first| {
        let m = tile.min(rows - first);
        ((first, m), m * ld)
    });
    split_disjoint(dst.data, tiles)
        .into_iter()
        .map(|((first, m), data)| (first, m, MatMut { data, ld }))
        .collect()
}

/// `data` cut from its start into consecutive parts of the given lengths (each at most what is
/// left), each with its item: the disjoint parts of an output that the tasks of one step write.
pub(crate) fn split_disjoint<I, T>(
    data: &mut [T],
    parts: impl IntoIterator<Item = (I, usize)>,
) -> Vec<(I, &mut [T])> {
    let mut rest = data;
    parts
        .into_iter()
        .map(|(item, len)| {
            let len = len.min(rest.len());
            let (mine, others) = std::mem::take(&mut rest).split_at_mut(len);
            rest = others;
            (item, mine)
        })
        .collect()
}

/// The size of the parts `total` items are cut into for rayon's threads: at most `max` each,
/// as many parts as a multiple of the thread count, and equal parts where a few more of them
/// allow it, so that no thread is left with one part more than the others.
pub(crate) fn part_size(total: usize, max: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let base = total.div_ceil(max.max(1)).next_multiple_of(threads);
    let parts = (base..=2 * base)
        .step_by(threads)
        .find(|&p| total.is_multiple_of(p))
        .unwrap_or(base)
        .clamp(1, total.max(1));
    total.div_ceil(parts).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_read_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
        assert!(l2_bytes() >= 1 << 10);
    }

    #[test]
    fn aligned_values_start_on_a_line_and_keep_their_length() {
        let mut room: Vec<u8> = vec![9; 3];
        for len in [0, 1, 63, 64, 1000] {
            let values = aligned(&mut room, len);
            assert_eq!(values.len(), len);
            assert_eq!(values.as_ptr() as usize % LINE, 0);
        }
        let packed = AlignedVec::<u32>::new(37);
        let copy = packed.clone();
        for v in [&packed, &copy] {
            assert_eq!((v.len(), v.as_ptr() as usize % LINE), (37, 0));
            assert!(v.iter().all(|&x| x == 0));
        }
    }
}
