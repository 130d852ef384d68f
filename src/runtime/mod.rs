//! The planned forward: recording a model's dispatches once for a [`ForwardSpec`]
//! ([`record`]), sizing micro-batches and memory without a device, the resident
//! [`PlannedForward`] that runs it, and the cost model (parameters, FLOPs) of a plan.

pub mod cost;
pub mod figures;
pub mod forward;
pub mod record;
pub mod spec;

pub use forward::{PlannedForward, Source};
pub use spec::ForwardSpec;
