//! Large zeroed `u64` arrays for the holder tables, on transparent huge pages where the OS has them.
//!
//! A lookup's cost is its cache misses on the holder table, and with 4 KiB pages each bucket it
//! reads is also a TLB miss and a page walk. Arrays of at least [`HUGE`] bytes are therefore
//! anonymous mappings aligned to 2 MiB, advised `MADV_HUGEPAGE` (Linux's THP mode is often
//! `madvise`, which gives huge pages only to regions that ask), and sized by the caller in whole
//! huge pages so no page is half used. Smaller arrays are plain vectors. If mapping fails, or the
//! kernel has no THP, the array still works, on small pages.

use memmap2::MmapMut;

/// Bytes of one huge page; mapped arrays are sized in multiples of it.
pub(crate) const HUGE: usize = 2 << 20;

/// Alignment of heap arrays, in words (128 bytes: a record never straddles more lines than it
/// covers).
const ALIGN_WORDS: usize = 16;

/// A fixed-length array of `u64`, zeroed at creation, aligned to 128 bytes.
pub(crate) struct Words {
    storage: Storage,
    len: usize,
}

enum Storage {
    /// A vector a little longer than needed, used from the first aligned word.
    Heap {
        vec: Vec<u64>,
        offset: usize,
    },
    Mapped {
        map: MmapMut,
        offset: usize,
    },
}

impl std::fmt::Debug for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Words")
            .field("len", &self.len)
            .field("mapped", &self.mapped_bytes())
            .finish()
    }
}

impl Words {
    /// `len` zeroes; mapped on huge pages when `len` words fill whole huge pages.
    pub(crate) fn zeroed(len: usize) -> Self {
        let bytes = len * 8;
        if bytes >= HUGE
            && bytes.is_multiple_of(HUGE)
            && let Some(storage) = map_huge(bytes)
        {
            return Self { storage, len };
        }
        let vec = vec![0; len + ALIGN_WORDS];
        let misalign = (vec.as_ptr() as usize / 8) % ALIGN_WORDS;
        let offset = (ALIGN_WORDS - misalign) % ALIGN_WORDS;
        Self {
            storage: Storage::Heap { vec, offset },
            len,
        }
    }

    /// The words.
    #[inline]
    pub(crate) fn get(&self) -> &[u64] {
        match &self.storage {
            Storage::Heap { vec, offset } => &vec[*offset..*offset + self.len],
            Storage::Mapped { map, offset } => {
                bytemuck::cast_slice(&map[*offset..*offset + self.len * 8])
            }
        }
    }

    /// The words, for writing.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut [u64] {
        match &mut self.storage {
            Storage::Heap { vec, offset } => &mut vec[*offset..*offset + self.len],
            Storage::Mapped { map, offset } => {
                bytemuck::cast_slice_mut(&mut map[*offset..*offset + self.len * 8])
            }
        }
    }

    /// Bytes held outside the global allocator (mapped), for memory accounting.
    pub(crate) fn mapped_bytes(&self) -> usize {
        match &self.storage {
            Storage::Heap { .. } => 0,
            Storage::Mapped { .. } => self.len * 8,
        }
    }
}

/// An anonymous mapping of `bytes` (a multiple of [`HUGE`]) aligned to [`HUGE`], advised to use
/// huge pages. The mapping is one huge page longer than asked, for the alignment; the slack is
/// never touched, so it never becomes resident.
fn map_huge(bytes: usize) -> Option<Storage> {
    let map = MmapMut::map_anon(bytes + HUGE).ok()?;
    let misalign = map.as_ptr() as usize % HUGE;
    let offset = (HUGE - misalign) % HUGE;
    #[cfg(target_os = "linux")]
    {
        // Best effort: without it the array is on small pages, still correct.
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, bytes);
    }
    Some(Storage::Mapped { map, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_arrays_live_on_the_heap_large_ones_are_mapped_and_aligned() {
        let mut small = Words::zeroed(1000);
        assert_eq!(small.mapped_bytes(), 0);
        assert_eq!(small.get().as_ptr() as usize % 128, 0);
        assert_eq!(small.get().len(), 1000);
        small.get_mut()[999] = 7;
        assert_eq!(small.get()[999], 7);
        let mut large = Words::zeroed(HUGE / 8 * 2);
        assert_eq!(large.mapped_bytes(), HUGE * 2);
        assert_eq!(large.get().as_ptr() as usize % HUGE, 0);
        assert!(large.get().iter().all(|&w| w == 0));
        large.get_mut()[HUGE / 8 * 2 - 1] = 9;
        assert_eq!(large.get()[HUGE / 8 * 2 - 1], 9);
    }
}
