//! What a copy depends on outside its own memory, recorded at capture and
//! checked before a node restores it (issue 18, "What a copy depends on",
//! "Clocks"):
//!
//! ```text
//! Dependencies
//! ├── files[]     every file a private area maps, and the executable: path,
//! │               size and blake3 of the content (matched by content, not
//! │               by device and inode, so another node's copy of the same
//! │               library is the same file)
//! ├── cpu         XCR0 (the xsave components the kernel enabled), the xsave
//! │               size, and the instruction-set features the snapshot's code
//! │               may have picked at start (avx, avx2, avx512*, sse4.2, ...)
//! ├── vdso        the kernel's vDSO image: size and blake3 of its bytes
//! └── clocks      CLOCK_MONOTONIC and CLOCK_BOOTTIME as the captured process
//!                 saw them (its time namespace's offsets included)
//! ```
//!
//! The comparisons are pure functions here ([`CpuFeatures::missing_on`],
//! [`VdsoImage::differs_from`]), apart from reading the host (done by
//! `capture::depends`), so they are unit-tested without a second machine.

use serde::{Deserialize, Serialize};

/// What a snapshot's copies depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependencies {
    /// The files its processes map privately, and their executables, each
    /// once (by path).
    pub files: Vec<FileContent>,
    /// The CPU it was captured on.
    pub cpu: CpuFeatures,
    /// The vDSO of the kernel it was captured on.
    pub vdso: VdsoImage,
    /// The clocks at the capture, as the captured process saw them.
    pub clocks: Clocks,
}

impl Dependencies {
    /// The recorded content of the file at `path`, if recorded.
    pub fn file(&self, path: &str) -> Option<&FileContent> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// A file by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    /// The path the process sees.
    pub path: String,
    /// Its size, bytes.
    pub size: u64,
    /// blake3 of its bytes.
    pub blake3: [u8; 32],
}

/// The CPU features a snapshot may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatures {
    /// `XCR0`: the xsave state components the kernel enabled.
    pub xcr0: u64,
    /// Size of the xsave area for those components (CPUID 0xD.0 EBX).
    pub xsave_size: u32,
    /// Instruction-set features present (names as Rust's
    /// `is_x86_feature_detected!` spells them, sorted).
    pub features: Vec<String>,
}

impl CpuFeatures {
    /// What of `self` (the snapshot's) `here` lacks, as one line naming
    /// every missing feature and xsave component; `None` if nothing.
    pub fn missing_on(&self, here: &CpuFeatures) -> Option<String> {
        let mut missing: Vec<String> = self
            .features
            .iter()
            .filter(|f| !here.features.contains(f))
            .cloned()
            .collect();
        let components = self.xcr0 & !here.xcr0;
        if components != 0 {
            missing.push(format!(
                "xsave components {components:#x} (XCR0 {:#x} here, {:#x} at capture)",
                here.xcr0, self.xcr0
            ));
        }
        (!missing.is_empty()).then(|| format!("this CPU lacks {}", missing.join(", ")))
    }
}

/// The kernel's vDSO image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdsoImage {
    /// Size, bytes.
    pub size: u64,
    /// blake3 of its bytes.
    pub blake3: [u8; 32],
}

impl VdsoImage {
    /// How `here` differs from `self` (the snapshot's), if it does.
    pub fn differs_from(&self, here: &VdsoImage) -> Option<String> {
        if self.size != here.size {
            return Some(format!(
                "the kernel's vDSO is {} bytes here, {} at capture",
                here.size, self.size
            ));
        }
        (self.blake3 != here.blake3)
            .then(|| "the kernel's vDSO differs from the capture's (same size, other bytes)".into())
    }
}

/// Clock readings, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Clocks {
    /// `CLOCK_MONOTONIC`.
    pub monotonic_ns: i64,
    /// `CLOCK_BOOTTIME`.
    pub boottime_ns: i64,
}

impl Clocks {
    /// Offsets that keep a copy's clocks from going back: for each clock,
    /// how far `now` (this node's, when the copy's time namespace is made)
    /// is behind `self` (the capture's), or 0 when it is not behind.
    pub fn offsets_from(&self, now: &Clocks) -> Clocks {
        Clocks {
            monotonic_ns: (self.monotonic_ns - now.monotonic_ns).max(0),
            boottime_ns: (self.boottime_ns - now.boottime_ns).max(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(xcr0: u64, features: &[&str]) -> CpuFeatures {
        CpuFeatures {
            xcr0,
            xsave_size: 832,
            features: features.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn missing_features_and_components_are_named() {
        let snap = cpu(0xe7, &["avx2", "avx512f", "sse4.2"]);
        assert_eq!(
            snap.missing_on(&cpu(0xe7, &["avx2", "avx512f", "sse4.2", "x"])),
            None
        );
        let here = cpu(0x7, &["avx2", "sse4.2"]);
        assert_eq!(
            snap.missing_on(&here).unwrap(),
            "this CPU lacks avx512f, xsave components 0xe0 (XCR0 0x7 here, 0xe7 at capture)"
        );
    }

    #[test]
    fn vdso_by_size_then_bytes() {
        let a = VdsoImage {
            size: 8192,
            blake3: [1; 32],
        };
        assert_eq!(a.differs_from(&a.clone()), None);
        let mut b = a.clone();
        b.blake3 = [2; 32];
        assert!(a.differs_from(&b).unwrap().contains("other bytes"));
        b.size = 4096;
        assert!(a
            .differs_from(&b)
            .unwrap()
            .contains("4096 bytes here, 8192"));
    }

    #[test]
    fn offsets_only_when_behind() {
        let captured = Clocks {
            monotonic_ns: 100,
            boottime_ns: 50,
        };
        let now = Clocks {
            monotonic_ns: 40,
            boottime_ns: 70,
        };
        assert_eq!(
            captured.offsets_from(&now),
            Clocks {
                monotonic_ns: 60,
                boottime_ns: 0
            }
        );
    }
}
