//! Output buffers filled in parallel, each chunk zeroed by the thread that fills it.
//!
//! `vec![0.0; n]` zeroes on the calling thread while rayon's threads wait (glibc's `calloc`
//! must clear the freed memory it reuses): in a ResNet20 training step on two cores that was
//! 5% of the samples, all of them serial. Here each thread clears its chunk just before it
//! fills it, while the chunk is in its cache.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `chunks` chunks of `chunk` floats, chunk `i` zeroed and then handed to `fill(i, chunk)` on
/// rayon's threads, at least `min_len` chunks per task.
pub fn par_filled<F>(chunk: usize, chunks: usize, min_len: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    // SAFETY: every element is zeroed before `fill` sees its chunk.
    unsafe {
        par_written(chunk, chunks, min_len, |i, c| {
            for v in c.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element was initialised just above, and `MaybeUninit<f32>` has the
            // layout of `f32`.
            let c = &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(c) as *mut [f32]);
            fill(i, c);
        })
    }
}

/// As [`par_filled`] for kernels that write every element of their chunk, which they get
/// uninitialised: the zeroing is a pass over the output that they would overwrite (2-3% of a
/// ResNet20 step).
///
/// Debug builds (the tests) fill each chunk with NaN first, so a kernel that misses an element
/// shows up as a NaN in its comparisons instead of reading uninitialised memory.
///
/// # Safety
/// `fill(i, chunk)` writes every element of `chunk`.
pub unsafe fn par_written<F>(chunk: usize, chunks: usize, min_len: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let len = chunk * chunks;
    let mut out = Vec::<f32>::with_capacity(len);
    if len == 0 {
        return out;
    }
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .with_min_len(min_len.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            if cfg!(debug_assertions) {
                c.fill(MaybeUninit::new(f32::NAN));
            }
            fill(i, c);
        });
    // SAFETY: the chunks cover `0..len` and the caller's `fill` wrote every element of each (a
    // panic in `fill` propagates out of `for_each` before this line, leaving the length 0).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_zeroed_then_filled_at_its_index() {
        for (chunk, chunks, min_len) in [(7, 13, 1), (1, 1, 1), (64, 5, 3), (3, 40, 0)] {
            let v = par_filled(chunk, chunks, min_len, |i, c| {
                assert!(c.iter().all(|&x| x == 0.0), "chunk {i} not zeroed");
                for (j, x) in c.iter_mut().enumerate().step_by(2) {
                    *x = (i * 1000 + j) as f32;
                }
            });
            assert_eq!(v.len(), chunk * chunks);
            for (k, &x) in v.iter().enumerate() {
                let (i, j) = (k / chunk, k % chunk);
                let want = if j % 2 == 0 {
                    (i * 1000 + j) as f32
                } else {
                    0.0
                };
                assert_eq!(x, want, "element {k}");
            }
        }
        assert!(par_filled(0, 10, 1, |_, _| panic!("no chunk to fill")).is_empty());
        assert!(par_filled(10, 0, 1, |_, _| panic!("no chunk to fill")).is_empty());
    }

    #[test]
    fn written_chunks_come_back_at_their_index_and_misses_show_as_nan() {
        // SAFETY: every element is written.
        let v = unsafe {
            par_written(5, 9, 2, |i, c| {
                for (j, x) in c.iter_mut().enumerate() {
                    x.write((i * 10 + j) as f32);
                }
            })
        };
        let want: Vec<f32> = (0..45).map(|k| ((k / 5) * 10 + k % 5) as f32).collect();
        assert_eq!(v, want);
        // The debug-build net: an element left out reads as NaN.
        if cfg!(debug_assertions) {
            // SAFETY: debug builds' NaN fill initialises the element left out.
            let v = unsafe {
                par_written(4, 3, 1, |_, c| {
                    for x in &mut c[1..] {
                        x.write(1.0);
                    }
                })
            };
            assert_eq!(v.iter().filter(|x| x.is_nan()).count(), 3);
        }
    }
}
