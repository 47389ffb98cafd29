//! NVTX ranges for profilers (`ncu --nvtx`), behind the cargo feature `nvtx`.
//!
//! - Feature off (the default): [`range`] and [`nvtx_range!`](crate::nvtx_range) return a
//!   zero-sized [`Range`] whose drop does nothing, and the macro never formats its name, so a
//!   range costs nothing at all.
//! - Feature on: the first range opens the NVTX library at run time (`$DFRT_NVTX_LIB`, else
//!   from the loader path `libnvtx3interop.so.1`, CUDA 13's NVTX library (pip `nvidia-nvtx`,
//!   `nvidia/cu13/lib/`), or CUDA 12's `libnvToolsExt.so.1`) and pushes/pops ranges with
//!   `nvtxRangePushA` / `nvtxRangePop`; under a profiler those calls reach its injection. When the library is missing, one line goes to stderr and
//!   every range is a no-op: profiling is optional, it never stops a run.
//!
//! Names are dotted (`dit.block07.self_attn`), so `ncu --nvtx --nvtx-include "dit.block07/"`
//! selects one block. Ranges are host-side push/pop: a kernel belongs to the ranges open when
//! it was launched, which is what ncu filters on. See docs/profiling.md.

/// An open NVTX range; it ends when dropped.
#[must_use = "a range ends when dropped; bind it: `let _r = range(..)`"]
pub struct Range {
    #[cfg(feature = "nvtx")]
    pushed: bool,
}

/// Opens the range `name` (ends when the returned guard drops).
#[inline(always)]
pub fn range(name: &str) -> Range {
    start_with(|| name.to_string())
}

/// Opens a range whose name `f` makes only when profiling is on (used by
/// [`nvtx_range!`](crate::nvtx_range) so a formatted name costs nothing when off).
#[inline(always)]
pub fn start_with<F: FnOnce() -> String>(f: F) -> Range {
    #[cfg(feature = "nvtx")]
    {
        Range { pushed: nvtx::push(f) }
    }
    #[cfg(not(feature = "nvtx"))]
    {
        let _ = f;
        Range {}
    }
}

/// True when ranges reach an NVTX library (feature on and the library loaded).
pub fn active() -> bool {
    #[cfg(feature = "nvtx")]
    {
        nvtx::lib().is_some()
    }
    #[cfg(not(feature = "nvtx"))]
    {
        false
    }
}

impl Drop for Range {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        if self.pushed {
            nvtx::pop();
        }
    }
}

/// `let _r = nvtx_range!("dit.block{l:02}");`: a [`Range`] named by `format!` arguments, which
/// are evaluated only when profiling is on.
#[macro_export]
macro_rules! nvtx_range {
    ($($arg:tt)*) => {
        $crate::profile::start_with(|| format!($($arg)*))
    };
}

#[cfg(feature = "nvtx")]
mod nvtx {
    use std::ffi::{c_char, c_int, CString};
    use std::sync::OnceLock;

    type PushA = unsafe extern "C" fn(*const c_char) -> c_int;
    type Pop = unsafe extern "C" fn() -> c_int;

    pub struct Lib {
        push: PushA,
        pop: Pop,
        // Keeps the library mapped for as long as the function pointers above are used.
        _lib: libloading::Library,
    }

    /// The NVTX library, opened once; `None` (after one note on stderr) when it is missing.
    pub fn lib() -> Option<&'static Lib> {
        static LIB: OnceLock<Option<Lib>> = OnceLock::new();
        LIB.get_or_init(|| match open() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("dfrt: NVTX ranges disabled: {e}");
                None
            }
        })
        .as_ref()
    }

    fn open() -> Result<Lib, String> {
        let names: Vec<String> = match std::env::var("DFRT_NVTX_LIB") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => vec!["libnvtx3interop.so.1".into(), "libnvToolsExt.so.1".into(), "libnvToolsExt.so".into()],
        };
        let mut errs = Vec::new();
        for n in &names {
            // SAFETY: loading the NVTX library runs only its (trivial) initialisers; NVTX
            // defers its real initialisation (the profiler injection) to the first call.
            match unsafe { libloading::Library::new(n) } {
                Ok(lib) => {
                    // SAFETY: these are the NVTX v2 C signatures of the two symbols.
                    let (push, pop) = unsafe {
                        let push = *lib.get::<PushA>(b"nvtxRangePushA\0").map_err(|e| format!("{n}: {e}"))?;
                        let pop = *lib.get::<Pop>(b"nvtxRangePop\0").map_err(|e| format!("{n}: {e}"))?;
                        (push, pop)
                    };
                    return Ok(Lib { push, pop, _lib: lib });
                }
                Err(e) => errs.push(format!("{n}: {e}")),
            }
        }
        Err(format!(
            "no NVTX library ({}); set DFRT_NVTX_LIB to the path of libnvtx3interop.so.1 or libnvToolsExt.so.1",
            errs.join("; ")
        ))
    }

    /// Pushes a range named by `f()`; false (nothing pushed) without the library.
    pub fn push(f: impl FnOnce() -> String) -> bool {
        let Some(l) = lib() else { return false };
        // A name with an interior NUL is cut there rather than dropped.
        let mut name = f();
        if let Some(i) = name.find('\0') {
            name.truncate(i);
        }
        let c = CString::new(name).expect("NULs were cut above");
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call (NVTX
        // copies it); `push` is nvtxRangePushA from the still-loaded library.
        unsafe { (l.push)(c.as_ptr()) };
        true
    }

    pub fn pop() {
        if let Some(l) = lib() {
            // SAFETY: pops the range this thread pushed (a `Range` is dropped on the thread
            // that made it: it is neither Send nor shared in practice, and a stray pop is a
            // harmless NVTX error code).
            unsafe { (l.pop)() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_zero_sized_and_never_formats() {
        #[cfg(not(feature = "nvtx"))]
        {
            assert_eq!(std::mem::size_of::<Range>(), 0);
            let _r = start_with(|| panic!("the name must not be built when profiling is off"));
            assert!(!active());
        }
        // On or off, ranges nest and drop without error (a missing library is a no-op).
        let _a = range("dit.forward");
        let l = 7;
        let _b = crate::nvtx_range!("dit.block{l:02}");
    }
}
