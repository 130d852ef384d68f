//! Uniform parameter blocks: every kernel's `struct Params` (binding 0) has a `#[repr(C)]`
//! [`Pod`](bytemuck::Pod) twin in Rust ([`crate::kernels::params`]) that records it, named by
//! the kernel's catalogue entry; the twin lists its fields so `tests/shaders_validate.rs` can
//! compare them, by name, offset and scalar type, with the WGSL struct as naga reflects it.

/// The scalar type of one uniform field (WGSL `u32`, `i32` or `f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    /// `u32`
    U32,
    /// `i32`
    I32,
    /// `f32`
    F32,
}

/// A Rust scalar that may stand in a uniform block.
pub trait UniformScalar: bytemuck::Pod {
    /// Its WGSL scalar type.
    const KIND: ScalarKind;
}

impl UniformScalar for u32 {
    const KIND: ScalarKind = ScalarKind::U32;
}
impl UniformScalar for i32 {
    const KIND: ScalarKind = ScalarKind::I32;
}
impl UniformScalar for f32 {
    const KIND: ScalarKind = ScalarKind::F32;
}

/// One field of a parameter block, as the WGSL struct must declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The member's name in the WGSL `struct Params`.
    pub name: &'static str,
    /// Byte offset within the block.
    pub offset: usize,
    /// Scalar type.
    pub kind: ScalarKind,
}

/// The uniform block of a family of kernels (`#[repr(C)]`, 4-byte scalars only).
pub trait KernelParams: bytemuck::Pod {
    /// Its fields in order.
    const FIELDS: &'static [Field];

    /// The block as 32-bit words, as it is uploaded.
    fn words(&self) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(bytemuck::bytes_of(self))
    }

    /// The block back from the words [`KernelParams::words`] made. A program records each
    /// dispatch with the block type its kernel's catalogue entry names
    /// ([`crate::kernels::ProgramBuilder::dispatch`] checks it), so the length always matches.
    fn from_words(words: &[u32]) -> Self {
        assert_eq!(
            words.len() * 4,
            std::mem::size_of::<Self>(),
            "{} from {} words",
            std::any::type_name::<Self>(),
            words.len()
        );
        bytemuck::pod_read_unaligned(bytemuck::cast_slice(words))
    }
}

/// A description of one [`KernelParams`] type, for reflection tests.
#[derive(Clone, Copy, Debug)]
pub struct ParamsLayout {
    /// The Rust type's name.
    pub rust: &'static str,
    /// Size of the Rust struct in bytes.
    pub size: usize,
    /// [`KernelParams::FIELDS`].
    pub fields: &'static [Field],
}

impl ParamsLayout {
    /// The layout of `P`.
    pub fn of<P: KernelParams>() -> Self {
        ParamsLayout {
            rust: std::any::type_name::<P>(),
            size: std::mem::size_of::<P>(),
            fields: P::FIELDS,
        }
    }
}

/// Declare a `#[repr(C)]` parameter block and its [`KernelParams`] impl.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel_params {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident: $ty:ty),+ $(,)?
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty),+
        }
        impl $crate::kernels::uniform::KernelParams for $name {
            const FIELDS: &'static [$crate::kernels::uniform::Field] = &[$(
                $crate::kernels::uniform::Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    kind: <$ty as $crate::kernels::uniform::UniformScalar>::KIND,
                }
            ),+];
        }
    };
}
