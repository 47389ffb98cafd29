/// Declares a kernel entry point.
///
/// On nvptx64 this gives `#[unsafe(no_mangle)] pub unsafe extern "ptx-kernel" fn name(p: Params)`.
/// On the host it gives `pub const name: sim::Kernel<Params>`, which holds the kernel's name and
/// the same body as a plain `unsafe fn(Params)`; `sim::launch` runs it once per simulated thread.
///
/// The single parameter is the kernel's `#[repr(C)]` params struct, passed by value. The macro
/// also implements [`crate::Entry`] for it, so each params type names exactly one kernel.
macro_rules! kernel {
    // `independent;` marks a kernel whose threads never meet (no barrier, no warp collective):
    // the simulator may then run a block's threads one after another on one OS thread, which is
    // far faster. A barrier or collective in such a kernel is a simulator error.
    (independent; $($rest:tt)*) => { kernel!(@def true; $($rest)*); };
    ($(#[$meta:meta])* pub unsafe fn $name:ident($p:ident : $ty:ty) $body:block) => {
        kernel!(@def false; $(#[$meta])* pub unsafe fn $name($p: $ty) $body);
    };
    (@def $indep:literal; $(#[$meta:meta])* pub unsafe fn $name:ident($p:ident : $ty:ty) $body:block) => {
        $(#[$meta])*
        #[cfg(target_arch = "nvptx64")]
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name($p: $ty) $body

        $(#[$meta])*
        #[cfg(not(target_arch = "nvptx64"))]
        #[allow(non_upper_case_globals)]
        pub const $name: $crate::sim::Kernel<$ty> = {
            unsafe fn body($p: $ty) $body
            $crate::sim::Kernel { name: stringify!($name), f: body, independent: $indep }
        };

        impl $crate::Entry for $ty {
            const NAME: &'static str = stringify!($name);
            #[cfg(not(target_arch = "nvptx64"))]
            const SIM: $crate::sim::Kernel<$ty> = $name;
        }
    };
}
