//! GPU plumbing: the adapter and device ([`context`]) and the device limits a planned forward
//! must respect ([`limits`]). What runs on the device, the kernels and the programs made of
//! them, lives one layer up in [`crate::kernels`].

pub mod context;
pub mod limits;

pub use context::{read_buffer, AdapterChoice, Gpu};
