//! The threads of one forward pass, kept together for its whole length.
//!
//! A forward pass is a chain of short parallel steps (two per dense layer; at batch 1 many take
//! well under 100 µs). Through rayon alone, each step must wake an idle worker that may have gone
//! to sleep; here the pool's other threads join the pass once, at its start, and wait for each
//! step by spinning (yielding the CPU when a wait grows long), so a step starts on all threads
//! at once. A thread that is busy elsewhere simply does not join: the leading thread takes every
//! item itself.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Spins before a waiting thread starts yielding its CPU at every check.
const SPINS_BEFORE_YIELD: u32 = 20_000;

/// The claim word: step number (16 bits), item count (24), next item (24).
const COUNT_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << COUNT_BITS) - 1;

/// One parallel step: `run(i)` for every item `i < count`.
struct Step<'a> {
    run: &'a (dyn Fn(usize) + Sync),
}

/// What the leading thread and its helpers share.
#[derive(Default)]
pub(crate) struct Team {
    claim: AtomicU64,
    step: AtomicPtr<Step<'static>>,
    completed: AtomicUsize,
    done: AtomicBool,
    poisoned: AtomicBool,
}

thread_local! {
    /// The team the current thread leads, while it does.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

fn fields(claim: u64) -> (u64, usize, usize) {
    (
        claim >> (2 * COUNT_BITS),
        ((claim >> COUNT_BITS) & INDEX_MASK) as usize,
        (claim & INDEX_MASK) as usize,
    )
}

/// Sets `flag` if dropped while unwinding.
struct OnUnwind<'a>(&'a AtomicBool);

impl Drop for OnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl Team {
    /// Runs `f` on this thread as the team's leader: [`for_each`] inside it spreads its items
    /// over the helpers. The team is done (its helpers return) when `f` returns or panics.
    pub(crate) fn lead<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Finish<'a>(&'a Team, *const Team);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                LEADING.with(|l| l.set(self.1));
                self.0.done.store(true, Ordering::Release);
            }
        }
        let previous = LEADING.with(|l| l.replace(self));
        let _finish = Finish(self, previous);
        f()
    }

    /// Takes items of the steps the leader publishes until the team is done.
    pub(crate) fn help(&self) {
        let _poison = OnUnwind(&self.poisoned);
        let mut seen = 0;
        let mut spins = 0u32;
        while !self.done.load(Ordering::Acquire) {
            let (step, count, next) = fields(self.claim.load(Ordering::Acquire));
            if step != seen && next < count {
                seen = step;
                self.work();
                spins = 0;
            } else {
                pause(&mut spins);
            }
        }
    }

    /// Claims and runs items of the current step until none is left.
    fn work(&self) {
        loop {
            let (_, count, index) = fields(self.claim.fetch_add(1, Ordering::AcqRel));
            if index >= count {
                return;
            }
            // SAFETY: a successful claim of a step's item happens after the leader published
            // the step (Release/Acquire on `claim`), and the leader keeps the step alive until
            // every claimed item has completed.
            let step = unsafe { &*self.step.load(Ordering::Acquire) };
            (step.run)(index);
            self.completed.fetch_add(1, Ordering::Release);
        }
    }

    /// Publishes a step of `count` items and works on it with the helpers until all are done.
    fn run_step(&self, count: usize, run: &(dyn Fn(usize) + Sync)) {
        assert!(
            count as u64 <= INDEX_MASK,
            "team: too many items in one step"
        );
        let step = Step { run };
        // SAFETY (lifetime): the pointer is only dereferenced for claims of this step, all of
        // which complete before this function returns (the wait below).
        let ptr = &step as *const Step<'_> as *mut Step<'static>;
        self.completed.store(0, Ordering::Relaxed);
        self.step.store(ptr, Ordering::Release);
        let (number, _, _) = fields(self.claim.load(Ordering::Relaxed));
        let word = ((number + 1) & 0xffff) << (2 * COUNT_BITS) | (count as u64) << COUNT_BITS;
        self.claim.store(word, Ordering::Release);
        self.work();
        let mut spins = 0u32;
        while self.completed.load(Ordering::Acquire) < count {
            assert!(
                !self.poisoned.load(Ordering::Acquire),
                "team: a helper thread panicked"
            );
            pause(&mut spins);
        }
    }
}

/// One wait of a spinning loop: a CPU hint at first, then a yield to other threads.
fn pause(spins: &mut u32) {
    if *spins < SPINS_BEFORE_YIELD {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// `f(item)` for every item, in parallel: on the team this thread leads, or else on rayon's
/// threads.
pub(crate) fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let team = LEADING.with(|l| l.get());
    if team.is_null() {
        items.into_par_iter().for_each(&f);
        return;
    }
    // SAFETY: `LEADING` points to a team only while `Team::lead` runs on this thread, which
    // borrows the team for that long.
    let team = unsafe { &*team };
    let count = items.len();
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let run = |i: usize| {
        let item = items[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(item) = item {
            f(item);
        }
    };
    team.run_step(count, &run);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of every step runs exactly once, whether helpers join or not, and steps follow
    /// each other in order.
    #[test]
    fn every_item_of_every_step_runs_once() {
        let mut data = vec![0u32; 1000];
        let team = Team::default();
        rayon::scope(|s| {
            for _ in 1..rayon::current_num_threads().max(2) {
                s.spawn(|_| team.help());
            }
            team.lead(|| {
                for step in 0..200u32 {
                    let size = 1 + (step as usize * 7) % 13;
                    let chunks = data.chunks_mut(size).collect();
                    for_each(chunks, |chunk: &mut [u32]| {
                        for v in chunk {
                            assert_eq!(*v, step, "a step began before the last one ended");
                            *v += 1;
                        }
                    });
                }
            });
        });
        assert!(data.iter().all(|&v| v == 200));
        // Outside a team, the items go to rayon.
        for_each(data.chunks_mut(7).collect(), |chunk: &mut [u32]| {
            chunk.iter_mut().for_each(|v| *v += 1)
        });
        assert!(data.iter().all(|&v| v == 201));
    }
}
