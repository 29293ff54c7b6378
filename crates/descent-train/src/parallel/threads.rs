//! Ranks that are threads of one process: data parallelism inside the process, as
//! `torch.nn.DataParallel` replicates a module across devices, here across the CPU's cores.
//!
//! Each replica is a thread with its own copy of the model and optimizer and its own rayon pool
//! (one thread by default), so every op of its forward and backward runs whole on one core,
//! instead of every small product and elementwise op of one model being split across all cores
//! and joined again. The replicas meet only in the collectives of [`Communicator`], through
//! shared memory: each puts its buffer into its slot, the last to arrive publishes all of them,
//! and each reads what it needs. Sums run in rank order, so a run is deterministic.
//!
//! A replica that stops (its thread returns, with an error or a panic, while the others still
//! expect it in a collective) makes every later collective of the others fail with
//! [`STOPPED`], instead of leaving them waiting.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{check_bounds, Communicator};
use crate::error::{Error, Result};

/// The message of a collective that cannot complete because another replica stopped.
pub const STOPPED: &str = "another replica stopped";

/// What one replica contributes to a collective.
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
    /// The replica's own buffer, lent for an in-place collective: the others read and write it
    /// until the collective's closing barrier, while its owner waits inside the collective.
    Lent(LentBuffer),
}

/// The address and length of a replica's `&mut [f32]`, lent to the group during one collective.
#[derive(Clone, Copy)]
struct LentBuffer {
    ptr: *mut f32,
    len: usize,
    /// The range of the buffer this replica owns in the collective (the one it reduces or
    /// sends), checked against what the others expect before any is read.
    part: (usize, usize),
}

// SAFETY: a lent buffer is only dereferenced inside the collective that lent it, between its
// two barriers, while the owning replica is blocked in the same collective; each replica
// touches only its own disjoint range of every buffer.
unsafe impl Send for LentBuffer {}
unsafe impl Sync for LentBuffer {}

/// Values a replica sums per pass of [`Threads::all_reduce_sum`]'s loop: a few KiB, in L1
/// between the sum and its copies.
const REDUCE_CHUNK: usize = 1024;

/// Replica `rank`'s range of a buffer of `len` values split over `size` replicas: whole cache
/// lines (16 values), so no two replicas write the same line.
fn reduce_range(len: usize, rank: usize, size: usize) -> Range<usize> {
    let per = len.div_ceil(size).div_ceil(16) * 16;
    (rank * per).min(len)..((rank + 1) * per).min(len)
}

/// How long a replica that waits in a collective polls for the others before it sleeps. A
/// sleeping thread takes tens of microseconds to wake (a futex, an interrupt between cores, more
/// under a hypervisor), paid at each of a step's meetings: five for a sharded step. The others
/// usually come within this (the replicas' passes take the same time); when they do not, the
/// replica sleeps, and leaves the core to any other thread.
const SPIN: Duration = Duration::from_micros(200);

/// The meeting point of the replicas.
struct Shared {
    size: usize,
    state: Mutex<Exchange>,
    arrived_all: Condvar,
    /// [`Exchange::generation`], readable without the lock (written under it): what a replica
    /// polls while it waits.
    completed: AtomicU64,
}

struct Exchange {
    /// Completed collectives so far.
    generation: u64,
    slots: Vec<Option<Payload>>,
    arrived: usize,
    /// Every replica's contribution to the last completed collective, in rank order.
    published: Option<Arc<Vec<Payload>>>,
    /// Set when a replica's handle was dropped: no collective can complete any more.
    stopped: bool,
}

/// One replica's handle on its group: its rank and the group's meeting point. Dropping it (the
/// replica's thread ending) tells the others not to wait for it any more.
pub struct Threads {
    rank: usize,
    shared: Arc<Shared>,
}

impl Threads {
    /// The handles of `size` replicas, rank 0 first.
    pub fn group(size: usize) -> Vec<Threads> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(Exchange {
                generation: 0,
                slots: (0..size).map(|_| None).collect(),
                arrived: 0,
                published: None,
                stopped: false,
            }),
            arrived_all: Condvar::new(),
            completed: AtomicU64::new(0),
        });
        (0..size).map(|rank| Threads { rank, shared: shared.clone() }).collect()
    }

    /// Puts `payload` into this replica's slot and returns every replica's once all have come.
    fn exchange(&self, payload: Payload) -> Result<Arc<Vec<Payload>>> {
        let stopped = || Error::Param(STOPPED.into());
        let mut s = self.shared.state.lock().map_err(|_| stopped())?;
        if s.stopped {
            return Err(stopped());
        }
        s.slots[self.rank] = Some(payload);
        s.arrived += 1;
        if s.arrived == self.shared.size {
            let all: Vec<Payload> = s.slots.iter_mut().map(|p| p.take().expect("every slot filled")).collect();
            s.published = Some(Arc::new(all));
            s.arrived = 0;
            s.generation += 1;
            self.shared.completed.store(s.generation, Ordering::Release);
            self.shared.arrived_all.notify_all();
            return Ok(s.published.clone().expect("just published"));
        }
        let mine = s.generation;
        drop(s);
        let t0 = Instant::now();
        'poll: while self.shared.completed.load(Ordering::Acquire) == mine {
            for _ in 0..64 {
                std::hint::spin_loop();
                if self.shared.completed.load(Ordering::Acquire) != mine {
                    break 'poll;
                }
            }
            if t0.elapsed() >= SPIN {
                break;
            }
        }
        let mut s = self.shared.state.lock().map_err(|_| stopped())?;
        while s.generation == mine {
            if s.stopped {
                return Err(stopped());
            }
            s = self.shared.arrived_all.wait(s).map_err(|_| stopped())?;
        }
        // No later collective can have completed: it needs this replica.
        Ok(s.published.clone().expect("published"))
    }

    /// Lends this replica's buffer of `len` values at `ptr` to the group and returns every
    /// replica's, in rank order, once all have come: all of the same length. The caller ends
    /// the collective with [`Threads::barrier`] before its buffer is used again.
    fn lend(&self, ptr: *mut f32, len: usize, bounds: &[Range<usize>]) -> Result<Vec<LentBuffer>> {
        let part = (bounds[self.rank].start, bounds[self.rank].end);
        let all = self.exchange(Payload::Lent(LentBuffer { ptr, len, part }))?;
        let lent = all
            .iter()
            .zip(bounds)
            .map(|(p, r)| match p {
                Payload::Lent(b) if b.len == len && b.part == (r.start, r.end) => Ok(*b),
                _ => Err(Error::Param("replicas called a collective with different buffers or ranges".into())),
            })
            .collect::<Result<Vec<_>>>();
        if lent.is_err() {
            // Every replica leaves through the barrier, so that none reads a buffer whose owner
            // has returned.
            self.barrier()?;
        }
        lent
    }

    /// Returns when every replica has come: after it, no replica reads or writes another's
    /// lent buffer.
    fn barrier(&self) -> Result<()> {
        self.exchange(Payload::Bytes(vec![])).map(drop)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.stopped = true;
        }
        self.shared.arrived_all.notify_all();
    }
}

impl Communicator for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn unit(&self) -> &'static str {
        "replica"
    }
    /// In place, without copies: every replica lends its buffer; each sums its own range of all
    /// of them, in rank order (`((b₀ + b₁) + b₂) + …`, the same bits on every replica), and
    /// writes the sum into that range of every buffer; a second barrier returns when all ranges
    /// are written.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let size = self.shared.size;
        if size == 1 {
            return Ok(());
        }
        let bounds: Vec<Range<usize>> = (0..size).map(|r| reduce_range(buf.len(), r, size)).collect();
        let lent = self.lend(buf.as_mut_ptr(), buf.len(), &bounds)?;
        let range = bounds[self.rank].clone();
        // SAFETY: see `LentBuffer`: until the barrier below, this replica alone reads and writes
        // `range` of every lent buffer (its own included, reached only through the pointer), and
        // every owner waits in this collective.
        let mut parts: Vec<&mut [f32]> = lent
            .iter()
            .map(|b| unsafe { std::slice::from_raw_parts_mut(b.ptr.add(range.start), range.len()) })
            .collect();
        let (first, rest) = parts.split_first_mut().expect("two or more replicas");
        for start in (0..first.len()).step_by(REDUCE_CHUNK) {
            let end = (start + REDUCE_CHUNK).min(first.len());
            let sum = &mut first[start..end];
            for p in rest.iter() {
                sum.iter_mut().zip(&p[start..end]).for_each(|(s, x)| *s += x);
            }
            for p in rest.iter_mut() {
                p[start..end].copy_from_slice(sum);
            }
        }
        drop(parts);
        // No replica leaves (and uses its buffer again) before every range is written.
        self.barrier()
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let all = self.exchange(Payload::F64(buf.to_vec()))?;
        buf.fill(0.0);
        for p in all.iter() {
            match p {
                Payload::F64(v) if v.len() == buf.len() => buf.iter_mut().zip(v).for_each(|(b, x)| *b += x),
                _ => return Err(Error::Param("replicas called a collective with different buffers".into())),
            }
        }
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let mine = if self.rank == root { buf.to_vec() } else { vec![] };
        let all = self.exchange(Payload::F32(mine))?;
        match &all[root] {
            Payload::F32(v) if v.len() == buf.len() => buf.copy_from_slice(v),
            _ => return Err(Error::Param(format!("broadcast from replica {root}: lengths differ"))),
        }
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let mine = if self.rank == root { bytes.clone() } else { vec![] };
        let all = self.exchange(Payload::Bytes(mine))?;
        match &all[root] {
            Payload::Bytes(v) => bytes.clone_from(v),
            _ => return Err(Error::Param(format!("broadcast from replica {root}: not bytes"))),
        }
        Ok(())
    }
    /// Without copies: every replica lends its buffer and sums its own range of all of them,
    /// in rank order, into `out`; a second barrier returns when all have read.
    fn reduce_scatter_sum(&self, buf: &[f32], bounds: &[Range<usize>], out: &mut [f32]) -> Result<()> {
        check_bounds(buf.len(), bounds, self.size())?;
        let range = bounds[self.rank].clone();
        if out.len() != range.len() {
            return Err(Error::Param(format!("reduce-scatter: {} values for a range of {}", out.len(), range.len())));
        }
        // Lent for reading only: no replica writes any buffer in this collective.
        let lent = self.lend(buf.as_ptr() as *mut f32, buf.len(), bounds)?;
        {
            // SAFETY: see `LentBuffer`; every owner waits in this collective until the barrier
            // below, and the buffers are only read.
            let parts: Vec<&[f32]> = lent
                .iter()
                .map(|b| unsafe { std::slice::from_raw_parts(b.ptr.add(range.start), range.len()) })
                .collect();
            out.copy_from_slice(parts[0]);
            for p in &parts[1..] {
                out.iter_mut().zip(p.iter()).for_each(|(o, x)| *o += x);
            }
        }
        self.barrier()
    }
    /// Without copies through the group: every replica lends its buffer and copies each other
    /// replica's range out of that replica's buffer into its own; a second barrier returns when
    /// all have copied.
    fn all_gather(&self, buf: &mut [f32], bounds: &[Range<usize>]) -> Result<()> {
        check_bounds(buf.len(), bounds, self.size())?;
        let lent = self.lend(buf.as_mut_ptr(), buf.len(), bounds)?;
        let mine = lent[self.rank].ptr;
        for (r, b) in lent.iter().enumerate() {
            if r != self.rank {
                let range = bounds[r].clone();
                // SAFETY: see `LentBuffer`; until the barrier below, replica `r`'s range `r` of
                // its buffer is only read, and each replica writes only its own buffer outside
                // its own range: the ranges are disjoint (checked above).
                unsafe { std::ptr::copy_nonoverlapping(b.ptr.add(range.start), mine.add(range.start), range.len()) };
            }
        }
        self.barrier()
    }
    fn gather_to(&self, send: &[f32], counts: &[usize], root: usize) -> Result<Vec<f32>> {
        if counts.len() != self.size() || counts[self.rank] != send.len() {
            return Err(Error::Param(format!("gather: {} values, counts {counts:?}", send.len())));
        }
        let all = self.exchange(Payload::F32(send.to_vec()))?;
        if self.rank != root {
            return Ok(vec![]);
        }
        let mut out = Vec::with_capacity(counts.iter().sum());
        for (p, &n) in all.iter().zip(counts) {
            match p {
                Payload::F32(v) if v.len() == n => out.extend_from_slice(v),
                _ => return Err(Error::Param("gather: the replicas' counts differ".into())),
            }
        }
        Ok(out)
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Runs `f` on `replicas` threads, each a rank of one [`Threads`] group with its own rayon pool
/// of `threads_each` threads (the replica's thread one of them, so its parallel ops split there),
/// and returns each replica's result in rank order. A replica that panics stops the others at
/// their next collective; its panic is returned as an error naming it.
pub fn on_threads<T: Send, E: From<Error> + Send>(
    replicas: usize,
    threads_each: usize,
    f: impl Fn(&dyn Communicator) -> std::result::Result<T, E> + Sync,
) -> Vec<std::result::Result<T, E>> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = Threads::group(replicas.max(1))
            .into_iter()
            .map(|comm| {
                std::thread::Builder::new()
                    .name(format!("replica {}", comm.rank))
                    // The main thread's size: candle's backward walks the graph recursively.
                    .stack_size(64 << 20)
                    .spawn_scoped(s, move || {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads_each.max(1))
                            .use_current_thread()
                            .build()
                            .map_err(|e| {
                                E::from(Error::Param(format!("starting replica {}'s threads: {e}", comm.rank)))
                            })?;
                        let r = f(&comm);
                        drop(comm);
                        drop(pool);
                        r
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| match h {
                Err(e) => Err(E::from(Error::Param(format!("starting replica {rank}: {e}")))),
                Ok(h) => h.join().unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(E::from(Error::Param(format!("replica {rank} panicked: {why}"))))
                }),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_agree_with_their_definitions() {
        let n = 3;
        let results = on_threads(n, 1, |c| -> Result<_> {
            let r = c.rank();
            let mut v: Vec<f32> = (0..5).map(|i| (10 * r + i) as f32).collect();
            c.all_reduce_sum(&mut v)?;
            let mut d = [r as f64 + 0.5];
            c.all_reduce_sum_f64(&mut d)?;
            let mut b = if r == 1 { vec![7u8, 8, 9] } else { vec![] };
            c.broadcast_bytes(&mut b, 1)?;
            let mut w = vec![r as f32; 4];
            c.broadcast_f32(&mut w, 2)?;
            let bounds = [0..2, 2..2, 2..5];
            let mut out = vec![0.0; bounds[r].len()];
            c.reduce_scatter_sum(&[1.0, 2.0, 3.0, 4.0, 5.0], &bounds, &mut out)?;
            let mut g: Vec<f32> = vec![-1.0; 5];
            g[bounds[r].clone()].iter_mut().for_each(|x| *x = r as f32);
            c.all_gather(&mut g, &bounds)?;
            let counts = [1, 2, 3];
            let gathered = c.gather_to(&vec![r as f32; r + 1], &counts, 0)?;
            Ok((v, d, b, w, out, g, gathered))
        });
        for (r, res) in results.into_iter().enumerate() {
            let (v, d, b, w, out, g, gathered) = res.unwrap();
            assert_eq!(v, vec![30.0, 33.0, 36.0, 39.0, 42.0]);
            assert_eq!(d, [4.5]);
            assert_eq!(b, vec![7, 8, 9]);
            assert_eq!(w, vec![2.0; 4]);
            let want: Vec<f32> = [[3.0, 6.0].as_slice(), &[], &[9.0, 12.0, 15.0]][r].to_vec();
            assert_eq!(out, want);
            assert_eq!(g, vec![0.0, 0.0, 2.0, 2.0, 2.0]);
            if r == 0 {
                assert_eq!(gathered, vec![0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
            } else {
                assert!(gathered.is_empty());
            }
        }
    }

    /// The in-place all-reduce over buffers longer than one replica's range and one chunk: every
    /// replica ends with the sum in rank order, bit for bit, whatever range summed a value.
    #[test]
    fn all_reduce_sums_in_rank_order_across_ranges_and_chunks() {
        let len = 2 * REDUCE_CHUNK + 37;
        let value = |r: usize, i: usize| ((i * 7 + r * 13) % 23) as f32 * 1e-3 + if r == 1 { 1e4 } else { 0.1 };
        for size in [2, 3] {
            let results = on_threads(size, 1, |c| -> Result<_> {
                let mut v: Vec<f32> = (0..len).map(|i| value(c.rank(), i)).collect();
                c.all_reduce_sum(&mut v)?;
                Ok(v)
            });
            let want: Vec<f32> = (0..len).map(|i| (1..size).fold(value(0, i), |s, r| s + value(r, i))).collect();
            for res in results {
                let got = res.unwrap();
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{size} replicas");
            }
        }
        assert_eq!(reduce_range(100, 1, 2), 64..100);
        assert_eq!(reduce_range(5, 2, 3), 5..5);
        let mismatched = on_threads(2, 1, |c| -> Result<()> { c.all_reduce_sum(&mut vec![1.0; 3 + c.rank()]) });
        assert!(mismatched.iter().all(|r| r.as_ref().unwrap_err().to_string().contains("different buffers")));
        // The in-place reduce-scatter and all-gather refuse replicas that disagree on the split,
        // every replica leaving the collective.
        let split = |r: usize| if r == 0 { [0..2, 2..4] } else { [0..3, 3..4] };
        let mismatched = on_threads(2, 1, |c| -> Result<()> { c.all_gather(&mut [0.0; 4], &split(c.rank())) });
        assert!(mismatched.iter().all(|r| r.as_ref().unwrap_err().to_string().contains("ranges")));
        let mismatched = on_threads(2, 1, |c| -> Result<()> {
            let b = split(c.rank());
            c.reduce_scatter_sum(&[1.0; 4], &b, &mut vec![0.0; b[c.rank()].len()])
        });
        assert!(mismatched.iter().all(|r| r.as_ref().unwrap_err().to_string().contains("ranges")));
    }

    #[test]
    fn a_replica_that_stops_ends_the_others_collectives_instead_of_hanging() {
        let results = on_threads(3, 1, |c| -> Result<()> {
            if c.rank() == 1 {
                return Err(Error::Param("bad flag".into()));
            }
            let mut v = vec![1.0f32; 3];
            c.all_reduce_sum(&mut v)?;
            Ok(())
        });
        assert_eq!(results[1].as_ref().unwrap_err().to_string(), Error::Param("bad flag".into()).to_string());
        for r in [0, 2] {
            assert!(results[r].as_ref().unwrap_err().to_string().contains(STOPPED), "{:?}", results[r].as_ref().err());
        }
        let panicked = on_threads(2, 1, |c| -> Result<()> {
            if c.rank() == 0 {
                panic!("boom");
            }
            c.all_reduce_sum(&mut [1.0])
        });
        assert!(panicked[0].as_ref().unwrap_err().to_string().contains("replica 0 panicked: boom"));
        assert!(panicked[1].as_ref().unwrap_err().to_string().contains(STOPPED));
    }

    #[test]
    fn each_replica_runs_its_parallel_ops_on_its_own_pool() {
        let results = on_threads(2, 1, |_| Ok::<_, Error>(rayon::current_num_threads()));
        assert!(results.into_iter().all(|r| r.unwrap() == 1));
        let results = on_threads(2, 2, |_| Ok::<_, Error>(rayon::current_num_threads()));
        assert!(results.into_iter().all(|r| r.unwrap() == 2));
    }
}
