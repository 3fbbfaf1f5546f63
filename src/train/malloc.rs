//! Allocator settings for training on the CPU: glibc's malloc parameters and huge pages for
//! large blocks.
//!
//! A train step allocates and frees megabyte-sized activations and gradients by the hundred. With
//! glibc's defaults freed memory at the top of the heap is given back to the OS as soon as 128 KiB
//! are free (twice the dynamic mmap threshold once that has grown), so the next step takes every
//! page again, zero-filled, through page faults: measured on the ResNet20 train step (batch 128,
//! 2 cores), keeping freed memory made it 1.3-1.5x faster (`benches/train_step.rs`). The settings
//! only change when memory goes back to the OS; the peak stays that of one step.

/// Keep freed memory for reuse: allocations up to 32 MiB (glibc's upper bound for the mmap
/// threshold) come from the heap, and the heap is trimmed only beyond 1 GiB of free memory at
/// its top; it grows 64 MiB at a time. Call once at start-up, before threads allocate. A no-op
/// outside glibc, and where the user set any of glibc's own `MALLOC_*_` variables.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("MALLOC_") && k.ends_with('_') || k == "GLIBC_TUNABLES"
        });
        if user_set {
            return;
        }
        // SAFETY: mallopt only changes the allocator's parameters; every value is in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}

/// At and above this size glibc serves every block with a mapping of its own (32 MiB is the
/// largest mmap threshold it accepts), which it unmaps again on free.
const OWN_MAPPING: usize = 32 << 20;
/// The x86-64 and aarch64 (4 KiB base page) transparent huge page size.
const HUGE_PAGE: usize = 2 << 20;

static HUGE_PAGES_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The system allocator, asking the kernel to back blocks of 32 MiB and more with transparent
/// huge pages (`madvise(MADV_HUGEPAGE)`, what glibc's `glibc.malloc.hugetlb=1` tunable does,
/// which a running process cannot set). Such blocks (a MobileNetV2 or VGG activation at batch
/// 128, any network's at 224x224) are fresh mappings each time, and taking them 4 KiB page by
/// page cost more than the kernels that fill them: a depthwise convolution over 50 MB
/// activations ran 1.75x faster forward and 2.6x faster forward + backward with the tunable
/// set (`benches/fused_conv.rs`, 2 cores, side by side). Where the kernel's THP setting is
/// `never`, or off Linux, the advice is a no-op. Installed by the binary as its
/// `#[global_allocator]`; `DSNN_HPO_HUGE_PAGES=off` turns the advice off for comparisons.
pub struct HugePageAlloc;

impl HugePageAlloc {
    /// Reads `DSNN_HPO_HUGE_PAGES` (only `off` or `0` turn the advice off). Call once at
    /// start-up: the allocator itself cannot read the environment (that allocates).
    pub fn configure_from_env() {
        let off = std::env::var("DSNN_HPO_HUGE_PAGES")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "off" | "0" | "false"
                )
            })
            .unwrap_or(false);
        HUGE_PAGES_ON.store(!off, std::sync::atomic::Ordering::Relaxed);
    }

    /// Advises the whole huge pages inside a block of `size` bytes at `p`.
    fn advise(p: *mut u8, size: usize) {
        if p.is_null()
            || size < OWN_MAPPING
            || !HUGE_PAGES_ON.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            let start = (p as usize).next_multiple_of(HUGE_PAGE);
            let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
            if end > start {
                // SAFETY: the range lies inside the block just allocated, which this process
                // owns; MADV_HUGEPAGE changes only how its pages are backed, never their
                // contents, and a failure (e.g. THP compiled out) leaves the block as it was.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; `advise` only adds a
// paging hint to the block `System` returned.
unsafe impl std::alloc::GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { std::alloc::System.alloc(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        Self::advise(p, new_size);
        p
    }
}
